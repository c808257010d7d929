"""Volumes on disk: one Zarr v3 group per tomogram, OME-Zarr 0.5 metadata.

Layout (DESIGN.md; docs/ome-zarr.md)::

    sample.zarr/        attrs: "ome" (OME-Zarr 0.5 multiscales over ``image`` and its
                        lower levels) and "porevox" (voxel_size, unit, sample, provenance)
      image             raw gray values, uint8 / uint16 / float
      levels/<k>        the image's lower levels (:mod:`porevox.engine.ome`)
      labels/           attrs: "ome" {"labels": [...]}
        <name>/         a uint8 / uint16 label image: an OME-Zarr multiscale group with
          0, 1, ...     "image-label" metadata; ``Volume.array("labels/<name>")`` is level 0

Volumes of older porevox hold a label image as a plain array ``labels/<name>``: it
reads as level 0 of no pyramid, and the next write of that label converts it.

Arrays are published atomically: they are written under a hidden temporary name
inside the group and moved into place only once complete (:func:`publish_array`),
so a reader never sees a half-written array under its final name.

A volume is a local folder or a prefix in object storage (``s3://...``; see
:mod:`porevox.engine.location`). An array written in blocks larger than the chunks
it is read in is sharded (Zarr v3): one shard per block, so that every task writes
whole shards and no two tasks write one (:func:`shard_layout`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .._version import __version__
from ..errors import ChunkError, InvalidVolumeError, OutputError, VolumeNotFoundError
from .location import identity, is_remote, listing, location, move, remove, url, version
from .outputs import is_volume

logger = logging.getLogger(__name__)

AXES = ("z", "y", "x")
SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"), np.dtype("float64"))
DEFAULT_CHUNK_BYTES = 64 * 2**20
LABELS = "labels"
#: Dtypes of label images: these are written as OME-Zarr label images (other arrays
#: under ``labels/`` stay plain arrays).
LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: The path of a label image's full-resolution level inside its group.
LEVEL0 = "0"
TMP_PREFIX = ".tmp-"
#: The ``porevox`` attribute of a volume that holds label images but no gray image
#: (a segmentation ingested on its own): {"shape", "chunks"} of its label images.
LABELS_ONLY = "labels_only"
#: Array attribute of arrays porevox writes with every chunk stored (zarr otherwise
#: skips chunks equal to the fill value): in those, a chunk file that is not there
#: is missing, not empty.
DENSE = "porevox_dense"
UNITS = {"micrometer", "nanometer", "millimeter", "meter", "angstrom"}
#: At ingest, chunks smaller than SHARD_BELOW bytes are grouped into shards of about
#: the compute chunk's size when an array has more than SHARD_ABOVE of them.
SHARD_BELOW = 8 * 2**20
SHARD_ABOVE = 4096


# --------------------------------------------------------------------------- checks
def check_voxel_size(voxel_size: Any) -> tuple[float, float, float]:
    """Return `voxel_size` as three positive floats (z, y, x) or raise."""
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(
            f"voxel_size must be 3 positive numbers (z, y, x); got {voxel_size!r}"
        ) from err
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidVolumeError(
            f"voxel_size must be 3 positive numbers (z, y, x); got {voxel_size!r}"
        )
    return values


def check_dtype(dtype: Any) -> np.dtype:
    """Return `dtype` if porevox stores it, else raise with the fix."""
    dt = np.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise InvalidVolumeError(
            f"unsupported dtype {dt}: porevox stores uint8, uint16, float32 or float64 "
            "images; rescale or cast the data to one of those first"
        )
    return dt


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InvalidVolumeError(
            f"a volume must be 3-D (z, y, x); got {len(shape)}-D data of shape {shape}. "
            "Stack 2-D slices into a folder or multi-page TIFF"
        )
    if min(shape) < 1:
        raise InvalidVolumeError(f"a volume must not be empty; got shape {shape}")
    return shape


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise InvalidVolumeError(
            f"unit must be one of {sorted(UNITS)} (OME-Zarr space units); got {unit!r}"
        )
    return unit


# --------------------------------------------------------------------------- chunks
def choose_chunks(
    shape: Sequence[int], dtype: Any, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, int, int]:
    """Chunk shape for storage *and* compute: about `target_bytes` per chunk.

    Starts from the whole volume and halves the longest axis until a chunk fits, so
    chunks stay close to cubes (small halo overhead for 3-D kernels) and large (tens
    of MB) for throughput.
    """
    shape = check_shape(shape)
    itemsize = np.dtype(dtype).itemsize
    chunks = list(shape)
    while math.prod(chunks) * itemsize > target_bytes and max(chunks) > 1:
        axis = int(np.argmax(chunks))
        chunks[axis] = -(-chunks[axis] // 2)
    return tuple(chunks)


def check_chunks(chunks: Any, shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(c) for c in chunks)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(f"chunks must be 3 positive integers; got {chunks!r}") from err
    if len(values) != 3 or min(values) < 1:
        raise InvalidVolumeError(f"chunks must be 3 positive integers; got {chunks!r}")
    return tuple(min(c, s) for c, s in zip(values, shape))


def plan_shards(shape: Sequence[int], chunks: Sequence[int], dtype: Any,
                target_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, int, int] | None:
    """Shards for an array read in small `chunks`: whole multiples of them of about
    `target_bytes` (the blocks the cluster then writes and computes in), or None where
    the chunks are large or few enough to be their own files. A 2048³ uint8 array in
    64³ chunks is 32 768 files unsharded; in 512³ shards, 64."""
    shape, chunks = check_shape(shape), check_chunks(chunks, shape)
    itemsize = np.dtype(dtype).itemsize
    grid = [-(-n // c) for n, c in zip(shape, chunks)]
    if math.prod(chunks) * itemsize >= SHARD_BELOW or math.prod(grid) <= SHARD_ABOVE:
        return None
    factors = [1, 1, 1]
    while True:   # grow the axis whose shard is shortest, while a shard fits
        axis = min((a for a in range(3) if factors[a] < grid[a]),
                   key=lambda a: factors[a] * chunks[a], default=None)
        if axis is None:
            break
        grown = factors.copy()
        grown[axis] = min(grid[axis], grown[axis] * 2)
        if math.prod(f * c for f, c in zip(grown, chunks)) * itemsize > target_bytes:
            break
        factors = grown
    shards = tuple(min(f * c, -(-n // c) * c) for f, c, n in zip(factors, chunks, shape))
    return None if shards == tuple(chunks) else shards


def check_shards(shards: Any, chunks: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """`shards` as 3 whole multiples of `chunks` (one-line error naming the fix; shards
    need the chunks they group given)."""
    if chunks is None:
        raise InvalidVolumeError("shards group chunks: give --chunks with --shards")
    try:
        values = tuple(int(c) for c in shards)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(f"shards must be 3 positive integers; got {shards!r}") from err
    if len(values) != 3 or min(values) < 1 or any(s % c for s, c in zip(values, chunks)):
        raise InvalidVolumeError(
            f"shards must be 3 whole multiples of the chunks {tuple(chunks)}; got {shards!r}: "
            f"e.g. {tuple(c * 4 for c in chunks)}")
    return tuple(min(s, -(-n // c) * c) for s, c, n in zip(values, chunks, shape))


def shard_layout(shape: Sequence[int], blocks: Sequence[int], inner: Sequence[int] | None
                 ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(chunks, shards) of an array written in `blocks` whose volume reads in `inner`
    chunks (its last three axes): shards equal to the blocks (rounded up to whole
    chunks where a block spans its axis), so that each writing task writes whole
    shards; unsharded, chunks = `blocks`, where they are not whole multiples or
    `inner` is None."""
    blocks = tuple(int(b) for b in blocks)
    if inner is None:
        return blocks, None
    lead = len(blocks) - len(inner)
    inner = blocks[:lead] + tuple(min(int(i), n) for i, n in zip(inner, shape[lead:]))
    if inner == blocks or any(b % i and b < n for b, i, n in zip(blocks, inner, shape)):
        return blocks, None
    return inner, tuple(b if b % i == 0 else -(-b // i) * i for b, i in zip(blocks, inner))


def write_chunks(arr: Any) -> tuple[int, ...]:
    """The blocks `arr` (a Zarr array or :class:`CheckedArray`) is written and computed
    in: its shards, else its chunks."""
    if isinstance(arr, CheckedArray):
        return arr.chunks
    return tuple(getattr(arr, "shards", None) or arr.chunks)


# --------------------------------------------------------------------------- metadata
def ome_metadata(voxel_size: Sequence[float], unit: str, name: str,
                 steps: Sequence[Sequence[int]] = ()) -> dict:
    """The OME-Zarr 0.5 ``ome`` attribute block for the root group: ``image`` and the
    lower levels `steps` make (:func:`porevox.engine.ome.image_ome`)."""
    from .ome import image_ome

    return image_ome(name, voxel_size, unit, steps)


def label_name(name: str) -> str | None:
    """``"otsu"`` for ``"labels/otsu"``; None for a path that is not a label image's."""
    parent, _, leaf = name.rpartition("/")
    return leaf if parent == LABELS and leaf and not leaf.startswith(TMP_PREFIX) else None


def store_root(arr: Any):
    """The location (:mod:`.location`) of the store `arr` (a Zarr array or
    :class:`CheckedArray`) is in: a local folder or an object-storage prefix; None for
    an array in memory."""
    arr = arr.arr if isinstance(arr, CheckedArray) else arr
    store = getattr(arr, "store", None)
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root)
    if isinstance(store, zarr.storage.FsspecStore):
        protocol = store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return location(f"{protocol}://{store.path}") if protocol not in ("file", "local") \
            else Path(store.path)
    return None


def label_home(arr: Any) -> tuple[Volume, str] | None:
    """(volume, label name) where `arr` (a Zarr array or :class:`CheckedArray`) is the
    full-resolution level of a volume's label image (either layout), else None."""
    arr = arr.arr if isinstance(arr, CheckedArray) else arr
    root = store_root(arr)
    if root is None:
        return None
    path = arr.path
    if path.endswith(f"/{LEVEL0}") and label_name(path.removesuffix(f"/{LEVEL0}")):
        path = path.removesuffix(f"/{LEVEL0}")
    name = label_name(path)
    if name is None:
        return None
    try:
        volume = open_volume(root, mode="r")
        if volume.array(f"{LABELS}/{name}").path != arr.path:
            return None
    except Exception:     # not a porevox volume
        return None
    return volume, name


class Volume:
    """An opened porevox volume (a Zarr v3 group in a local folder or in object storage)."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group):
        self.path = location(path)
        self.group = group

    # -- metadata ------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return dict(self.group.attrs["porevox"])

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.meta["voxel_size"])

    @property
    def unit(self) -> str:
        return self.meta["unit"]

    @property
    def sample(self) -> dict:
        return dict(self.meta.get("sample", {}))

    @property
    def provenance(self) -> dict:
        return dict(self.meta.get("provenance", {}))

    def update_meta(self, **changes: Any) -> None:
        """Replace keys of the ``porevox`` attribute block (see :meth:`edit_meta`)."""
        self.edit_meta(lambda meta: meta.update(changes))

    def edit_meta(self, change: Callable[[dict], Any]) -> dict:
        """Apply `change` to the ``porevox`` attribute block as it is on disk now, and
        write it back, as one step among this process's threads: the steps of a run
        record stages of one volume concurrently, and a read-modify-write from a
        snapshot would drop the record another step wrote meanwhile. Returns the
        block written."""
        with _meta_lock(self.path):
            group = zarr.open_group(url(self.path), mode="r+")    # the attributes on disk
            meta = dict(group.attrs["porevox"])
            change(meta)
            group.attrs["porevox"] = meta
            self.group = group
        return meta

    # -- arrays --------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        """False for a volume of label images only."""
        return LABELS_ONLY not in self.meta

    @property
    def image(self) -> zarr.Array:
        return self.array("image")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The volume's shape: its image's, or its label images' where it has no image."""
        if not self.has_image:
            return tuple(int(n) for n in self.meta[LABELS_ONLY]["shape"])
        return tuple(self.image.shape)

    @property
    def chunks(self) -> tuple[int, int, int]:
        """The blocks its image (or, without one, its label images) is written and
        computed in: its shards where sharded, else its storage chunks."""
        if not self.has_image:
            meta = self.meta[LABELS_ONLY]
            return tuple(int(n) for n in meta.get("shards") or meta["chunks"])
        return write_chunks(self.image)

    @property
    def read_chunks(self) -> tuple[int, int, int] | None:
        """The chunks inside its shards (what a viewer reads), or None if unsharded."""
        if not self.has_image:
            meta = self.meta[LABELS_ONLY]
            return tuple(int(n) for n in meta["chunks"]) if meta.get("shards") else None
        image = self.image
        return tuple(image.chunks) if getattr(image, "shards", None) else None

    @property
    def labels(self) -> list[str]:
        """Names of the published label images (either layout; not temporary ones)."""
        folder = self.path / LABELS
        return [name for name in listing(folder)
                if not name.startswith(TMP_PREFIX) and (folder / name / "zarr.json").is_file()]

    def array(self, name: str) -> zarr.Array:
        """An array by its path in the group: ``"image"`` or ``"labels/otsu"`` (a label
        image's full-resolution level, ``labels/otsu/0``, in OME-Zarr layout)."""
        if name == "image" and not self.has_image:
            raise InvalidVolumeError(
                f"{self.path} holds label images only ({', '.join(self.labels) or 'none yet'}), no gray "
                "image, and this needs the image: ingest the tomogram with `porevox ingest IMAGE NEW.zarr "
                "--voxel-size Z Y X`, then its segmentation with `--labels NAME --into NEW.zarr`")
        try:
            node = self.group[name]
            if isinstance(node, zarr.Group) and "multiscales" in node.attrs.get("ome", {}):
                node = node[node.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]]
        except KeyError:
            raise InvalidVolumeError(
                f"{self.path} has no array {name!r}; it has "
                f"{['image'] + [f'{LABELS}/{n}' for n in self.labels]}"
            ) from None
        except Exception as err:   # zarr raises several types for broken metadata
            raise InvalidVolumeError(
                f"{self.path / name / 'zarr.json'} cannot be read ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:120]}); restore it from a backup or ingest the "
                "tomogram again") from None
        if not isinstance(node, zarr.Array):
            raise InvalidVolumeError(f"{self.path}/{name} is a group, not an array")
        return _dense(node) if node.attrs.get(DENSE) else node

    @property
    def missing(self) -> dict | None:
        """``{"count", "fill"}`` where the image kept NaN or ±inf voxels (ingested
        with ``allow_nan``): how many, and the finite gray value read in their place."""
        return self.meta.get("missing") or None

    def to_dask(self, name: str = "image"):
        """The array as a Dask array whose chunks are the storage chunks; a chunk that
        cannot be read, or is missing, raises :class:`ChunkError` naming it. The
        image's missing voxels (NaN, ±inf; see :attr:`missing`) read as their fill."""
        arr = checked_dask(self.array(name), self.path.name.removesuffix(".zarr"), name)
        if name == "image" and self.missing:
            arr = arr.map_blocks(fill_missing, self.missing["fill"], dtype=arr.dtype)
        return arr

    def reader(self, name: str = "image") -> CheckedArray:
        """The array for tasks that read their own boxes (a block with its halo across
        storage chunks), naming a corrupt or missing chunk like :meth:`to_dask`."""
        return CheckedArray(self.array(name), self.path.name.removesuffix(".zarr"), name)

    def summary(self) -> dict:
        img = self.image if self.has_image else None
        labels = {}
        for name in self.labels:
            arr = self.array(f"{LABELS}/{name}")
            labels[name] = {"dtype": str(arr.dtype), "chunks": list(arr.chunks),
                            **({"shards": list(arr.shards)} if arr.shards else {})}
        return {
            "path": str(self.path),
            "shape": list(self.shape),
            "dtype": str(img.dtype) if img is not None else None,
            "chunks": list(self.read_chunks or self.chunks),
            **({"shards": list(self.chunks)} if self.read_chunks else {}),
            "nbytes": int(img.nbytes) if img is not None else 0,
            "image": img is not None,
            "voxel_size": list(self.voxel_size),
            "unit": self.unit,
            "sample": self.sample,
            "labels": labels,
            "provenance": self.provenance,
            **({"missing": self.missing} if self.missing else {}),
            "porevox_version": self.meta.get("version"),
        }

    def __repr__(self) -> str:
        dtype = self.image.dtype if self.has_image else None
        return (
            f"Volume({str(self.path)!r}, shape={self.shape}, dtype={dtype}, "
            f"voxel_size={self.voxel_size}, labels={self.labels})"
        )


_META_LOCKS: dict[str, threading.Lock] = {}
_META_LOCKS_GUARD = threading.Lock()


def _meta_lock(path: Path) -> threading.Lock:
    with _META_LOCKS_GUARD:
        return _META_LOCKS.setdefault(identity(path), threading.Lock())


# --------------------------------------------------------------------------- create/open
def create_volume(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    voxel_size: Sequence[float],
    *,
    unit: str = "micrometer",
    sample: Mapping[str, Any] | None = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    name: str | None = None,
    image: bool = True,
) -> Volume:
    """Create an empty volume (the ``image`` array unwritten) at a new `path`; with
    ``image=False``, a volume for label images of `shape` only (`dtype` unused).
    `shards`, whole multiples of `chunks`, make a sharded volume (:func:`plan_shards`
    chooses them at ingest)."""
    path = location(path)
    shape = check_shape(shape)
    dtype = check_dtype(dtype) if image else np.dtype(np.uint8)
    voxel_size = check_voxel_size(voxel_size)
    unit = check_unit(unit)
    chunks = choose_chunks(shape, dtype) if chunks is None else check_chunks(chunks, shape)
    shards = None if shards is None else check_shards(shards, chunks, shape)
    if shards is not None and tuple(shards) == tuple(chunks):
        shards = None
    if path.exists():
        raise InvalidVolumeError(f"{path} already exists; remove it or choose another output path")
    name = name or path.name.removesuffix(".zarr")
    layout = {"shape": list(shape), "chunks": list(chunks), **({"shards": list(shards)} if shards else {})}
    group = zarr.open_group(
        url(path),
        mode="w-",
        zarr_format=3,
        attributes={
            "ome": ome_metadata(voxel_size, unit, name) if image else {"version": "0.5"},
            "porevox": {
                "version": __version__,
                "voxel_size": list(voxel_size),
                "unit": unit,
                "sample": dict(sample or {}),
                "provenance": {},
                **({} if image else {LABELS_ONLY: layout}),
            },
        },
    )
    if image:
        dense_array(group, "image", shape=shape, dtype=dtype, chunks=shards or chunks,
                    inner=chunks if shards else None)
    from .ome import labels_ome

    group.create_group(LABELS, attributes={"ome": labels_ome([])})
    return Volume(path, group)


def open_volume(path: str | os.PathLike | Volume, mode: str = "r+") -> Volume:
    """Open a porevox volume; raise a one-line error naming the fix if it is not one."""
    if isinstance(path, Volume):
        return path
    path = location(path)
    if not path.exists():
        raise VolumeNotFoundError(
            f"no volume at {path}; create one with `porevox ingest SRC {path} --voxel-size Z Y X`"
        )
    try:
        group = zarr.open_group(url(path), mode=mode)
    except Exception as err:  # zarr raises several types for a non-group path
        raise InvalidVolumeError(
            f"{path} is not a Zarr group, or not a readable one ({type(err).__name__}"
            + (f" in {path / 'zarr.json'}" if (path / "zarr.json").is_file() else "")
            + "); restore it from a backup, or create a volume with `porevox ingest`"
        ) from err
    meta = group.attrs.get("porevox")
    labels_only = isinstance(meta, Mapping) and LABELS_ONLY in meta
    if isinstance(meta, Mapping) and "voxel_size" in meta and not labels_only:
        Volume(path, group).array("image")   # its metadata readable, or a one-line error
    if not isinstance(meta, Mapping) or "voxel_size" not in meta or (
            "image" not in group and not labels_only):
        raise InvalidVolumeError(
            f"{path} is a Zarr group but not a porevox volume (no 'porevox' attributes or "
            "no 'image' array); ingest the data with `porevox ingest`"
        )
    try:
        check_voxel_size(meta["voxel_size"])
        check_unit(meta.get("unit", "micrometer"))
    except (InvalidVolumeError, TypeError, ValueError) as err:
        raise InvalidVolumeError(
            f"{path / 'zarr.json'}: attributes.porevox is damaged ({' '.join(str(err).split())}); "
            "restore the file from a backup or write the voxel size and unit back into it"
        ) from None
    return Volume(path, group)


# --------------------------------------------------------------------------- chunks on disk
def _dense(arr: zarr.Array) -> zarr.Array:
    return arr.with_config({"write_empty_chunks": True})


def dense_array(group: zarr.Group, name: str, *, shape, dtype, chunks, dimension_names=AXES,
                fill_value=0, inner: Sequence[int] | None = None) -> zarr.Array:
    """Create an array whose writes store every chunk (or shard), so that a chunk
    file that is not there later is known to be missing (:data:`DENSE`). `chunks` are
    the blocks it is written in; with `inner` (a sharded volume's read chunks) they
    become shards of `inner` chunks where they can (:func:`shard_layout`)."""
    chunks, shards = shard_layout(shape, chunks, inner)
    arr = group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks),
                             shards=shards, fill_value=fill_value, dimension_names=dimension_names,
                             attributes={DENSE: True})
    return _dense(arr)


class CheckedArray:
    """A Zarr array read box by box (by Dask, one storage chunk per block, or by a
    task reading its block with a halo across chunks) whose read names the tomogram,
    the array and the chunk when a chunk cannot be decoded, or when it is missing
    from an array porevox wrote densely. Its ``chunks`` are the blocks it is written
    in (:func:`write_chunks`: of a sharded array, its shards, one file each)."""

    def __init__(self, arr: zarr.Array, tomogram: str, name: str):
        self.arr, self.tomogram, self.name = arr, tomogram, name
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.chunks = write_chunks(arr)
        self.dense = bool(arr.attrs.get(DENSE)) and store_root(arr) is not None

    def _box(self, key) -> tuple[slice, ...]:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        return tuple(slice(k, k + 1) if isinstance(k, (int, np.integer)) else slice(*k.indices(n)[:2])
                     for k, n in zip(key, self.shape))

    def _chunks(self, box) -> list[tuple[int, ...]]:
        """The chunks a box touches, in C order."""
        return list(itertools.product(*(range(s.start // c, max(-(-s.stop // c), s.start // c + 1))
                                        for s, c in zip(box, self.chunks))))

    def _key(self, chunk) -> str:
        return f"{self.arr.path}/c/{'/'.join(map(str, chunk))}"

    def _file(self, chunk) -> str:
        root = store_root(self.arr)
        return str((root if root is not None else Path()) / self._key(chunk))

    def _there(self, chunk) -> bool:
        from zarr.core.sync import sync

        return bool(sync(self.arr.store.exists(self._key(chunk))))

    def _part(self, box, chunk) -> tuple[slice, ...]:
        """The part of `box` in `chunk` (array coordinates)."""
        return tuple(slice(max(s.start, k * c), min(s.stop, (k + 1) * c))
                     for s, k, c in zip(box, chunk, self.chunks))

    def _unreadable(self, box) -> tuple[int, ...]:
        """The first chunk of `box` that does not decode on its own."""
        chunks = self._chunks(box)
        for chunk in chunks:
            try:
                self.arr[self._part(box, chunk)]
            except Exception:
                return chunk
        return chunks[0]

    def __getitem__(self, key):
        box = self._box(key)
        try:
            block = self.arr[key]
        except Exception as err:
            chunk = self._unreadable(box)
            raise ChunkError(
                f"tomogram {self.tomogram}: array {self.name}: chunk {chunk} cannot be read "
                f"({type(err).__name__}: {err}); restore {self._file(chunk)} from a backup or "
                "ingest the tomogram again") from None
        if self.dense and block.size:
            # a missing chunk reads as its fill value: look for the file only there
            # (everywhere, for a strided read)
            sizes = tuple(s.stop - s.start for s in box)
            view = np.reshape(block, sizes) if block.size == math.prod(sizes) else None
            for chunk in self._chunks(box):
                part = tuple(slice(p.start - s.start, p.stop - s.start)
                             for p, s in zip(self._part(box, chunk), box))
                if view is not None and np.any(view[part] != self.arr.fill_value):
                    continue
                if not self._there(chunk):
                    raise ChunkError(
                        f"tomogram {self.tomogram}: array {self.name}: chunk {chunk} is missing "
                        f"({self._file(chunk)}); restore it from a backup or ingest the tomogram "
                        "again")
        return block

    def __dask_tokenize__(self):
        return ("porevox.CheckedArray", self.tomogram, self.name, _array_token(self.arr))


def fill_missing(block: np.ndarray, fill: float) -> np.ndarray:
    """`block` with NaN and ±inf replaced by `fill`."""
    return np.where(np.isfinite(block), block, block.dtype.type(fill))


def checked_dask(arr: zarr.Array, tomogram: str, name: str):
    """`arr` as a Dask array over its storage chunks that names a corrupt or missing
    chunk (see :class:`CheckedArray`)."""
    import dask.array as da

    return da.from_array(CheckedArray(arr, tomogram, name), chunks=write_chunks(arr), asarray=False,
                         fancy=False, meta=np.empty((0,) * arr.ndim, arr.dtype),
                         name=f"zarr-{tomogram}-{name}-{_array_token(arr)}")


def _array_token(arr: zarr.Array) -> str:
    """Changes whenever the array is written again (its metadata file's time)."""
    import dask.base

    return dask.base.tokenize(str(arr.store), arr.path, arr.shape, str(arr.dtype), arr.chunks,
                              arr.shards, _meta_version(arr))


def _meta_version(arr: zarr.Array) -> Any:
    root = store_root(arr)
    return version(root / arr.path / "zarr.json") if root is not None else 0


# --------------------------------------------------------------------------- publishing
def tmp_array(
    volume: Volume, name: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int]
) -> tuple[zarr.Array, str]:
    """Create a fresh array under a hidden temporary name beside `name`.

    Returns the array and its temporary path; :func:`publish_array` renames it to
    `name` once it is completely written. A label image (``labels/<name>``, uint8 or
    uint16, 3-D) is a temporary OME-Zarr group: the array returned is its level 0.
    `chunks` are the blocks the writing tasks write: in a sharded volume, its shards.
    """
    tmp_name = _tmp_name(volume, name)
    inner = volume.read_chunks if len(shape) >= 3 else None
    if label_name(name) and np.dtype(dtype) in LABEL_DTYPES and len(shape) == 3:
        group = volume.group.create_group(tmp_name)
        arr = dense_array(group, LEVEL0, shape=tuple(shape), dtype=np.dtype(dtype), chunks=tuple(chunks),
                          inner=inner)
        return arr, tmp_name
    arr = dense_array(volume.group, tmp_name, shape=tuple(shape), dtype=np.dtype(dtype),
                      chunks=tuple(chunks),
                      dimension_names=(("c",) * (len(shape) - 3) + AXES)[-len(shape):], inner=inner)
    return arr, tmp_name


def tmp_group(volume: Volume, name: str) -> tuple[zarr.Group, str]:
    """Like :func:`tmp_array`, for a group of arrays published together."""
    tmp_name = _tmp_name(volume, name)
    return volume.group.create_group(tmp_name), tmp_name


def _tmp_name(volume: Volume, name: str) -> str:
    """A hidden temporary name beside `name` (its parent group created)."""
    parent, _, leaf = name.rpartition("/")
    if parent:
        volume.group.require_group(parent)
    return f"{parent + '/' if parent else ''}{TMP_PREFIX}{leaf}-{uuid.uuid4().hex[:12]}"


def publish_array(volume: Volume, tmp_name: str, name: str) -> zarr.Array | zarr.Group:
    """Atomically move a completely written temporary array (or group) to its final name.

    A label image's temporary group (:func:`tmp_array`) first gets its lower levels
    and OME-Zarr metadata (:func:`porevox.engine.ome.finish_labels`), and the
    ``labels`` list names it just before the move, so that the stage's record follows
    the move as closely as before (a run killed in between leaves the list one name
    ahead; the next write of that label puts it right). Returns what was published
    (for a label image, its level 0)."""
    src = volume.path / tmp_name
    dst = volume.path / name
    leaf = label_name(name)
    group = leaf is not None and (src / LEVEL0 / "zarr.json").is_file()
    if leaf is not None:
        from .ome import finish_labels, sync_labels

        if group:
            finish_labels(volume, {tmp_name: leaf})
        sync_labels(volume, publishing={leaf: group})
    if is_remote(dst):
        # No rename in object storage: the old one goes (its zarr.json first), then the
        # new one is copied in with its zarr.json last (location.move).
        remove(dst)
    elif dst.exists():
        # Move the old one aside first so the rename below is a single atomic step.
        trash = dst.with_name(f"{TMP_PREFIX}old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.rename(dst, trash)
        shutil.rmtree(trash, ignore_errors=True)
    move(src, dst)
    return volume.array(name) if group else volume.group[name]


@contextlib.contextmanager
def building(out: str | os.PathLike):
    """Build a new volume under a hidden temporary name beside `out`; on success
    move it into place (an existing `out` is moved aside first, then removed; in
    object storage, removed, then the new one copied in with its ``zarr.json`` last),
    on failure remove it. Yields the temporary path. Leftovers of killed builds of
    `out` are removed first."""
    out = location(out)
    there = out.exists() if is_remote(out) else os.path.lexists(out)
    if there and not is_volume(out):
        raise OutputError(f"{out} exists and is not a porevox volume; porevox replaces only what it "
                          f"wrote itself: give a new path, or move {out.name} away")
    for stale in listing(out.parent):
        if stale.startswith((f".{out.name}.tmp-", f".{out.name}.old-")):
            logger.info("removing unfinished build %s", stale)
            remove(out.parent / stale)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        old = None
        if is_remote(out):
            remove(out)
        elif out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
        move(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        discard(tmp)
        raise


def discard(path: str | os.PathLike, settle: float = 0.25, tries: int = 20) -> None:
    """Remove an unfinished output after a failed stage.

    When one task fails, Dask raises at once while sibling tasks may still be
    writing their chunks (and re-creating folders); remove until the path stays
    gone for one `settle` interval. Anything that still outlives this keeps its
    hidden temporary name and is removed by the next run of the stage. Where nothing
    can still be writing (a finished stage's intermediates), ``settle=0``.
    """
    path = location(path)
    for _ in range(tries):
        remove(path)
        time.sleep(settle)
        if not path.exists():
            return


#: Zarr's local store writes every file as ``<name>.<32 hex>.partial``, then renames it.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_partial_writes(path: str | os.PathLike) -> list[str]:
    """Delete the half-written files a killed process left in the volume at `path`
    (Zarr's temporary names) and the block tortuosity solver's scratch folders. Call it
    only while nothing writes to the volume. (Object storage has no half-written
    objects: an upload is atomic.)"""
    path = location(path)
    removed = []
    for name in listing(path):
        if name.startswith(".porevox-tortuosity-"):   # the block solver's, killed
            remove(path / name)
            removed.append(name)
    for folder, _, files in (() if is_remote(path) else os.walk(path)):
        for name in files:
            if _PARTIAL.search(name):
                Path(folder, name).unlink(missing_ok=True)
                removed.append(os.path.relpath(os.path.join(folder, name), path))
    if removed:
        logger.info("%s: removed %d files half-written by a killed process", path, len(removed))
    return removed


def remove_stale_tmp(volume: Volume, name: str) -> list[str]:
    """Delete temporary copies of array `name` left by killed stages; return them."""
    parent, _, leaf = name.rpartition("/")
    folder = volume.path / parent
    removed = []
    stale_names = [n for n in listing(folder)
                   if fnmatch.fnmatchcase(n, f"{TMP_PREFIX}{leaf}-" + "?" * 12)      # tmp_array's names
                   or fnmatch.fnmatchcase(n, f"{TMP_PREFIX}old-{leaf}-" + "?" * 8)]  # publish_array's
    for stale in stale_names:
        remove(folder / stale)
        removed.append(stale)
    if label_name(name) and (folder / "zarr.json").is_file():   # a killed publish's list
        from .ome import sync_labels

        sync_labels(volume)
    if removed:
        logger.info("removed unfinished outputs of killed stages: %s", ", ".join(removed))
    return removed
