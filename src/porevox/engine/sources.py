"""Readers for the stacks users bring: multi-page TIFF, a folder of TIFF slices,
``.npy``, raw binary and an existing Zarr array.

A :class:`Source` is small and picklable: it holds paths and a description, never
the data. ``Source.read(z0, z1, ys, xs)`` reads one box, slice by slice, so a task on
any worker reads just the block it writes and nothing holds the whole stack.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError, VolumeNotFoundError
from .storage import check_dtype, check_shape

TIFF_SUFFIXES = (".tif", ".tiff")
KINDS = ("tiff", "tiff-folder", "npy", "raw", "zarr")


def natural_key(name: str) -> list:
    """Sort key that orders ``slice_2`` before ``slice_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Source:
    """A 3-D stack on disk, described but not loaded."""

    kind: str
    path: str
    shape: tuple[int, int, int]
    dtype: str
    files: tuple[str, ...] = ()          # tiff-folder: the slices in order
    contiguous: bool = False             # raw, npy, uncompressed TIFF: C-order data ...
    offset: int = 0                      # ... starting at this byte
    byte_order: str = "<"                # ... in this byte order ("<" little, ">" big)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        """Box read for ``dask.array.from_array`` (unit-step slices only)."""
        zs, ys, xs = (slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        return self.read(zs.start, zs.stop, ys, xs)

    def fingerprint_paths(self) -> list[str]:
        return list(self.files) if self.files else [self.path]

    # ------------------------------------------------------------------ reading
    def _read_contiguous(self, z0: int, z1: int, ys: slice, xs: slice) -> np.ndarray:
        """One ``readinto`` per plane of just the rows needed.

        Plain reads, not a memory map: mapped file pages count in a worker's resident
        memory (and so against its Dask memory limit), buffered reads don't.
        """
        dt = np.dtype(self.dtype).newbyteorder(self.byte_order)
        _, ny, nx = self.shape
        (y0, y1, _), (x0, x1, _) = ys.indices(ny), xs.indices(nx)
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), dt)
        full_width = (x0, x1) == (0, nx)
        rows = None if full_width else np.empty((y1 - y0, nx), dt)
        with open(self.path, "rb", buffering=0) as f:
            for i, z in enumerate(range(z0, z1)):
                target = out[i] if full_width else rows
                f.seek(self.offset + ((z * ny + y0) * nx) * dt.itemsize)
                if f.readinto(target) != target.nbytes:
                    raise OSError(f"{self.path} ended early while reading plane {z}")
                if not full_width:
                    out[i] = rows[:, x0:x1]
        return out

    def read(self, z0: int, z1: int, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
        """Read planes ``z0:z1`` cropped to ``(ys, xs)`` as a native-endian array."""
        dtype = np.dtype(self.dtype)
        if self.contiguous:
            data = self._read_contiguous(z0, z1, ys, xs)
        elif self.kind == "npy":  # Fortran-ordered
            data = np.load(self.path, mmap_mode="r")[z0:z1, ys, xs]
        elif self.kind == "zarr":
            import zarr

            data = zarr.open_array(self.path, mode="r")[z0:z1, ys, xs]
        elif self.kind == "tiff":
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                data = np.stack([tif.pages[z].asarray()[ys, xs] for z in range(z0, z1)])
        elif self.kind == "tiff-folder":
            import tifffile

            data = np.stack([tifffile.imread(f)[ys, xs] for f in self.files[z0:z1]])
        else:  # pragma: no cover - guarded by open_source
            raise InvalidVolumeError(f"unknown source kind {self.kind!r}")
        return np.ascontiguousarray(data, dtype=dtype)


# ---------------------------------------------------------------------- opening
def open_source(
    src: str | os.PathLike,
    *,
    kind: str | None = None,
    shape: tuple[int, int, int] | None = None,
    dtype: Any = None,
    offset: int = 0,
    byte_order: str = "little",
) -> Source:
    """Describe and validate a stack; raise a one-line error naming the fix.

    `kind` is guessed from the path where not given: a folder is a folder of TIFF
    slices (or a Zarr array if it holds ``zarr.json`` / ``.zarray``), ``.tif[f]`` a
    multi-page TIFF, ``.npy`` NumPy, ``.raw`` / ``.bin`` / ``.dat`` raw binary (which
    needs `shape` and `dtype`).
    """
    path = Path(src)
    if not path.exists():
        raise VolumeNotFoundError(f"no such file or folder: {path}; check the source path")
    kind = kind or _guess_kind(path)
    if kind not in KINDS:
        raise InvalidVolumeError(f"unknown source kind {kind!r}; use one of {', '.join(KINDS)}")
    opener = {
        "tiff": _open_tiff,
        "tiff-folder": _open_tiff_folder,
        "npy": _open_npy,
        "zarr": _open_zarr,
    }
    if kind == "raw":
        source = _open_raw(path, shape, dtype, offset, byte_order)
    else:
        source = opener[kind](path)
    check_shape(source.shape)
    check_dtype(source.dtype)
    return source


def _guess_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zarray").exists():
            return "zarr"
        return "tiff-folder"
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix == ".npy":
        return "npy"
    if suffix in (".raw", ".bin", ".dat", ".vol"):
        return "raw"
    raise InvalidVolumeError(
        f"cannot tell the format of {path.name}; pass --kind with one of {', '.join(KINDS)}"
    )


def _tiff_page_extent(page) -> int:
    """Last byte of a page's image data, to detect truncated files cheaply."""
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
    return max(ends, default=0)


def _check_tiff_complete(tif, pages, path: Path) -> None:
    size = path.stat().st_size
    for i, page in enumerate(pages):
        if _tiff_page_extent(page) > size:
            raise InvalidVolumeError(
                f"TIFF {path} is truncated: page {i} ends past the end of the file "
                f"({size} bytes); copy or export the stack again"
            )


def _open_tiff(path: Path) -> Source:
    """A multi-page TIFF: one shaped 3-D series (read directly from the file where
    its data are contiguous and uncompressed), or else every page as one plane."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if "S" in series.axes or len(series.shape) > 3:
                raise InvalidVolumeError(
                    f"{path} holds {len(series.shape)}-D data of shape {tuple(series.shape)} "
                    f"(axes {series.axes}); porevox needs one gray-value channel (z, y, x): "
                    "convert to a grayscale stack first"
                )
            dtype = np.dtype(series.dtype)
            if len(series.shape) == 3 and series.dataoffset is not None:
                shape = tuple(series.shape)
                if series.dataoffset + series.size * dtype.itemsize > path.stat().st_size:
                    raise InvalidVolumeError(
                        f"TIFF {path} is truncated: its image data run past the end of "
                        "the file; copy or export the stack again"
                    )
                return Source("tiff", str(path), shape, _native(dtype), contiguous=True,
                              offset=int(series.dataoffset), byte_order=tif.byteorder)
            pages = tif.pages
            first = pages[0]
            if len(pages) < 2 and len(series.shape) == 2:
                raise InvalidVolumeError(
                    f"{path} holds one 2-D image of shape {tuple(series.shape)}, not a 3-D "
                    "stack; pass a multi-page TIFF or a folder of slices"
                )
            for i, page in enumerate(pages):
                if page.shape != first.shape or page.dtype != first.dtype:
                    raise InvalidVolumeError(
                        f"TIFF {path}: page {i} is {page.shape} {page.dtype} but page 0 is "
                        f"{first.shape} {first.dtype}; all pages must match"
                    )
            _check_tiff_complete(tif, pages, path)
            shape = (len(pages), *first.shape)
    except InvalidVolumeError:
        raise
    except Exception as err:  # tifffile raises many types on a damaged file
        raise InvalidVolumeError(
            f"cannot read TIFF {path}: {err}; check the file is a complete TIFF stack"
        ) from err
    return Source("tiff", str(path), shape, _native(first.dtype))


def _open_tiff_folder(path: Path) -> Source:
    import tifffile

    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise InvalidVolumeError(
            f"folder {path} holds no .tif/.tiff slices; point to the folder of slices "
            "or to a single stack file"
        )
    first = None
    for f in files:
        try:
            with tifffile.TiffFile(f) as tif:
                page = tif.pages[0]
                info = (tuple(page.shape), np.dtype(page.dtype))
                _check_tiff_complete(tif, [page], f)
        except InvalidVolumeError:
            raise
        except Exception as err:
            raise InvalidVolumeError(
                f"cannot read TIFF slice {f}: {err}; replace or remove the damaged slice"
            ) from err
        if len(info[0]) != 2:
            raise InvalidVolumeError(
                f"slice {f.name} has shape {info[0]}; every slice must be one 2-D "
                "grayscale image"
            )
        if first is None:
            first = (f, *info)
        elif info != first[1:]:
            raise InvalidVolumeError(
                f"slices differ: {first[0].name} is {first[1]} {first[2]} but {f.name} is "
                f"{info[0]} {info[1]}; all slices must have the same shape and dtype"
            )
    shape = (len(files), *first[1])
    return Source("tiff-folder", str(path), shape, _native(first[2]), files=tuple(map(str, files)))


def _open_npy(path: Path) -> Source:
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as err:
        raise InvalidVolumeError(
            f"cannot read {path} as .npy: {err}; save it again with numpy.save"
        ) from err
    if arr.ndim != 3:
        _bad_ndim(path, arr.shape)
    return Source("npy", str(path), tuple(arr.shape), _native(arr.dtype),
                  contiguous=bool(arr.flags.c_contiguous), offset=int(arr.offset),
                  byte_order=">" if arr.dtype.byteorder == ">" else "<")


def _native(dtype) -> str:
    """The dtype string in native byte order (what porevox stores)."""
    return np.dtype(dtype).newbyteorder("=").str


def _bad_ndim(path: Path, shape) -> None:
    raise InvalidVolumeError(
        f"{path} holds {len(shape)}-D data of shape {tuple(shape)}; a volume must be 3-D (z, y, x)"
    )


def _open_zarr(path: Path) -> Source:
    """A Zarr array, or an OME-Zarr multiscale group (an OME-Zarr image, a porevox
    volume or one of its label images) read at its full-resolution level."""
    import zarr

    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as err:
        try:
            meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
            level0 = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            level0 = None
        if isinstance(level0, str) and (path / level0 / "zarr.json").is_file():
            return _open_zarr(path / level0)
        raise InvalidVolumeError(
            f"{path} is not a Zarr array ({type(err).__name__}); for a group, pass the "
            f"path of its array, e.g. {path}/image"
        ) from err
    if arr.ndim != 3:
        _bad_ndim(path, arr.shape)
    return Source("zarr", str(path), tuple(arr.shape), _native(arr.dtype))


def _open_raw(path: Path, shape, dtype, offset: int, byte_order: str) -> Source:
    if shape is None or dtype is None:
        raise InvalidVolumeError(
            f"raw file {path.name} needs its layout: pass --shape Z Y X and --dtype "
            "(uint8, uint16, float32)"
        )
    shape = check_shape(shape)
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise InvalidVolumeError(f"unknown dtype {dtype!r}; use uint8, uint16 or float32") from err
    check_dtype(dt.newbyteorder("="))
    orders = {"little": "<", "big": ">", "<": "<", ">": ">"}
    if byte_order not in orders:
        raise InvalidVolumeError(f"byte_order must be 'little' or 'big'; got {byte_order!r}")
    if offset < 0:
        raise InvalidVolumeError(f"offset must be >= 0 bytes; got {offset}")
    expected = offset + int(np.prod(shape)) * dt.itemsize
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "larger than the layout given"
        raise InvalidVolumeError(
            f"raw file {path.name} is {what}: {size} bytes on disk, but shape {shape} of "
            f"{dt.name} after a {offset}-byte header needs {expected}; check --shape, "
            "--dtype and --offset"
        )
    return Source("raw", str(path), shape, _native(dt), contiguous=True, offset=offset,
                  byte_order=orders[byte_order])
