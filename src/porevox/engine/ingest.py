"""Ingest: a user's stack (TIFF, folder of TIFFs, npy, raw, Zarr) into a volume.

The stack is read block by block by the workers (:class:`~.sources.Source` is a
lazy, picklable reader), each task writing exactly one storage chunk, so nothing
ever holds the whole stack. The new volume is built under a hidden temporary name
beside `out` and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InvalidVolumeError, OutputError
from . import provenance
from .cluster import chunk_bytes_budget, compute
from .location import location
from .ome import describe_label, label_counts, write_image_pyramid
from .outputs import check_output, is_volume
from .phases import PHASES
from .reductions import histogram
from .sources import Source, open_source
from .storage import (
    LABEL_DTYPES,
    Volume,
    building,
    check_chunks,
    check_shards,
    check_unit,
    check_voxel_size,
    choose_chunks,
    create_volume,
    open_volume,
    plan_shards,
)

logger = logging.getLogger(__name__)

STAGE = "ingest"


def source_to_dask(source: Source, chunks: Sequence[int] | None = None) -> da.Array:
    """A lazy Dask array over `source`: each block reads only its own box. Default
    chunks are sized for the active cluster's workers."""
    chunks = (check_chunks(chunks, source.shape) if chunks
              else choose_chunks(source.shape, source.dtype, chunk_bytes_budget()))
    return da.from_array(
        source, chunks=chunks, lock=False, fancy=False, asarray=True,
        meta=np.empty((0, 0, 0), source.dtype),
        name=f"read-{provenance.fingerprint_files(source.fingerprint_paths())}-{chunks}",
    )


@dataclass(frozen=True)
class IngestPlan:
    """A validated ingest: what to read, where to write, and whether it is done."""

    source: Source
    out: Path
    voxel_size: tuple[float, float, float]
    unit: str
    sample: dict
    chunks: tuple[int, int, int] | None   # None: sized for the cluster when it runs
    shards: tuple[int, int, int] | None   # None: plan_shards's when it runs
    params: dict
    inputs: dict
    done: bool
    box: tuple[tuple[int, int], ...] | None = None   # the VOI ((z0, z1), (y0, y1), (x0, x1))
    allow_nan: bool = False   # keep NaN and ±inf voxels of a float stack (else: refused)

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.box is None:
            return tuple(self.source.shape)
        return tuple(b - a for a, b in self.box)


def plan_ingest(
    src: str | os.PathLike,
    out: str | os.PathLike,
    voxel_size: Sequence[float],
    *,
    unit: str = "micrometer",
    sample: Mapping[str, Any] | None = None,
    chunks: Sequence[int] | None = None,
    kind: str | None = None,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    offset: int = 0,
    byte_order: str = "little",
    overwrite: bool = False,
    box: Sequence[Sequence[int]] | None = None,
    allow_nan: bool = False,
    shards: Sequence[int] | None = None,
) -> IngestPlan:
    """Check everything about an ingest before any work: the source, the voxel size,
    the chunks (and `shards`, whole multiples of them; by default, shards of about a
    compute chunk's size where the chunks are small and many) and the output path. `out` may be an
    object-storage URL. Raises a one-line error naming the fix."""
    out = location(out)
    source = open_source(src, kind=kind, shape=shape, dtype=dtype, offset=offset,
                         byte_order=byte_order)
    check_output(out, inputs=[source.path], what="volume",
                 fix="give a new .zarr path (--overwrite replaces only a porevox volume)")
    voxel_size = check_voxel_size(voxel_size)
    unit = check_unit(unit)
    box = check_box(box, source.shape) if box is not None else None
    shape = tuple(b - a for a, b in box) if box else source.shape
    chunks = check_chunks(chunks, shape) if chunks is not None else None
    if shards is not None:
        shards = check_shards(shards, chunks, shape)
    sample = dict(sample or {})
    params = {"kind": source.kind, "voxel_size": voxel_size, "unit": unit,
              "chunks": list(chunks) if chunks else "auto",
              **({"shards": list(shards)} if shards else {}),
              "sample": sample, "offset": source.offset, "byte_order": source.byte_order}
    if box:
        params["box"] = [list(b) for b in box]
    inputs = {"source": provenance.fingerprint_files(source.fingerprint_paths())}
    done = False
    if is_volume(out):
        try:
            existing = open_volume(out, mode="r")
        except InvalidVolumeError:
            existing = None
        done = existing is not None and bool(provenance.completed(existing, STAGE, params, inputs))
        if not done and not overwrite:
            raise InvalidVolumeError(
                f"{out} already exists and holds other data; pass --overwrite to replace "
                "it or choose another output path"
            )
    return IngestPlan(source, out, voxel_size, unit, sample, chunks, shards, params, inputs, done, box,
                      allow_nan)


def _write_counting(block, target, block_info=None):
    """Write `block` where it belongs in `target`; return its non-finite count."""
    target[tuple(slice(a, b) for a, b in block_info[0]["array-location"])] = block
    return np.full((1, 1, 1), np.count_nonzero(~np.isfinite(block)), np.int64)


def _store_float(data: da.Array, volume: Volume, plan: IngestPlan) -> int:
    """Store a float stack into the volume's image, counting NaN and ±inf per chunk as
    they pass; refuse them, or (``allow_nan``) keep them as missing values that read
    as the image's median. Returns how many there are."""
    per_chunk = compute(data.map_blocks(_write_counting, volume.image, chunks=(1, 1, 1), dtype=np.int64,
                                        meta=np.empty((0, 0, 0), np.int64)))[0]
    n = int(per_chunk.sum())
    if n and not plan.allow_nan:
        first = tuple(int(i) for i in np.argwhere(per_chunk)[0])
        raise InvalidVolumeError(
            f"{plan.source.path}: {n:,} voxel{' is' if n == 1 else 's are'} NaN or ±inf (in "
            f"{np.count_nonzero(per_chunk)} of {per_chunk.size} chunks, the first chunk {first}); "
            "fix the stack, or pass --allow-nan to keep them as missing values")
    if n:
        counts, edges = histogram(volume.to_dask("image"), bins=4096)   # of the finite values
        middle = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
        fill = float((edges[middle] + edges[middle + 1]) / 2)
        volume.update_meta(missing={"count": n, "fill": fill})
        logger.warning("%s: kept %d NaN or ±inf voxels (--allow-nan); they read as the median gray "
                       "value %.6g", plan.source.path, n, fill)
    return n


def check_box(box: Sequence[Sequence[int]], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """A VOI ``((z0, z1), (y0, y1), (x0, x1))`` inside `shape`, or raise."""
    try:
        pairs = tuple((int(a), int(b)) for a, b in box)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(f"box must be [[z0, z1], [y0, y1], [x0, x1]]; got {box!r}") from err
    if len(pairs) != 3 or any(not 0 <= a < b <= n for (a, b), n in zip(pairs, shape)):
        raise InvalidVolumeError(f"box {[list(p) for p in pairs]} must lie within the stack's shape "
                                 f"{tuple(shape)} with start < stop on every axis")
    return pairs


def run_ingest(plan: IngestPlan) -> tuple[Volume, bool]:
    """Carry out a planned ingest. Returns the volume and whether work was done
    (False when `out` already held this very ingest: same source, same parameters)."""
    source, out = plan.source, plan.out
    if plan.done:
        logger.info("ingest of %s into %s already done with these parameters; nothing to do",
                    source.path, out)
        return open_volume(out), False
    shape = plan.shape
    chunks = plan.chunks or choose_chunks(shape, source.dtype, chunk_bytes_budget())
    shards = plan.shards or plan_shards(shape, chunks, source.dtype, chunk_bytes_budget())
    started = time.time()
    logger.info("ingesting %s (%s, %s %s, %.1f MB) into %s, chunks %s%s", source.path, source.kind,
                source.shape, np.dtype(source.dtype).name, source.nbytes / 1e6, out, chunks,
                f" in shards {shards}" if shards else "")
    with building(out) as tmp:
        volume = create_volume(tmp, shape, source.dtype, plan.voxel_size, unit=plan.unit,
                               sample=plan.sample, chunks=chunks, shards=shards or chunks,
                               name=out.name.removesuffix(".zarr"))
        blocks = volume.chunks     # one task writes one shard (or chunk)
        if plan.box is None:
            data = source_to_dask(source, blocks)
        else:   # read whole chunks of the VOI from the stack, one output chunk per task
            data = source_to_dask(source, blocks)[tuple(slice(a, b) for a, b in plan.box)]
            data = data.rechunk(blocks)
        if np.issubdtype(source.dtype, np.floating):
            extra = {"nonfinite": _store_float(data, volume, plan)}
        else:
            compute(da.store(data, volume.image, lock=False, compute=False))
            extra = {}
        missing = volume.missing
        write_image_pyramid(volume, fill=missing["fill"] if missing else None)
        provenance.write_record(volume, STAGE, plan.params, plan.inputs, ["image"], started,
                                source=str(Path(source.path).absolute()), chunks=list(chunks),
                                **({"shards": list(shards)} if shards else {}), **extra)
    return open_volume(out), True




@dataclass(frozen=True)
class LabelPlan:
    """A validated ingest of a user's segmentation into an existing volume, or into a
    new volume of label images only (`create`: its shape, voxel size, unit, chunks and
    sample)."""

    source: Source
    volume: Path
    name: str                       # labels/<name>
    names: dict                     # phase value -> name, as given
    params: dict
    inputs: dict
    box: tuple[tuple[int, int], ...] | None = None   # the VOI of the stack, as its image's
    create: dict | None = None


def parse_phase_names(text: str | Mapping | None) -> dict[int, str]:
    """``"0=pore,1=LSM,2=YSZ"`` (or a mapping) as {0: "pore", 1: "LSM", 2: "YSZ"}."""
    if text is None or text == "":
        return {}
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).split(","))
    out: dict[int, str] = {}
    for value, name in items:
        try:
            key = int(str(value).strip())
        except ValueError:
            key = -1
        name = "" if name is None else str(name).strip()
        if not 0 <= key < 2**16 or not name or key in out:
            raise InvalidVolumeError(f"--phase-names takes value=name pairs joined by commas, each value "
                                     f"once, 0-65535 (e.g. 0=pore,1=LSM,2=YSZ); got {text!r}")
        out[key] = name
    return out


def plan_label_ingest(src: str | os.PathLike, volume: str | os.PathLike, name: str, *,
                      voxel_size: Sequence[float] | None = None, phase_names=None, kind: str | None = None,
                      shape: Sequence[int] | None = None, dtype: Any = None, offset: int = 0,
                      byte_order: str = "little", box: Sequence[Sequence[int]] | None = None,
                      new: bool = False, unit: str = "micrometer", chunks: Sequence[int] | None = None,
                      shards: Sequence[int] | None = None,
                      sample: Mapping[str, Any] | None = None) -> LabelPlan:
    """Check a segmentation's ingest into `volume` as ``labels/<name>`` before any work:
    the stack (uint8 or uint16 values), its shape (or that of its `box`, the VOI its
    image was cropped to) against the volume's, the voxel size where given, the name,
    and that ``labels/<name>`` is absent or this ingest's own. With `new`, a `volume`
    that is not there yet becomes a volume of label images only (`voxel_size` needed;
    `unit`, `chunks`, `shards`, `sample` as for an image). Raises a one-line error naming the fix."""
    from .storage import LABELS

    source = open_source(src, kind=kind, shape=shape, dtype=dtype, offset=offset, byte_order=byte_order)
    if np.dtype(source.dtype) not in LABEL_DTYPES:
        raise InvalidVolumeError(f"{source.path}: a segmentation must hold uint8 or uint16 label values; "
                                 f"got {np.dtype(source.dtype)}: cast it to integers first")
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise InvalidVolumeError(f"--labels must be letters, digits, '.', '_' or '-' (not starting with "
                                 f"'.'); got {name!r}")
    box = check_box(box, source.shape) if box is not None else None
    shape = tuple(b - a for a, b in box) if box else tuple(source.shape)
    names = parse_phase_names(phase_names)
    params = {"kind": source.kind, "offset": source.offset, "byte_order": source.byte_order,
              "phase_names": {str(k): v for k, v in sorted(names.items())},
              **({"box": [list(b) for b in box]} if box else {})}
    inputs = {"source": provenance.fingerprint_files(source.fingerprint_paths())}
    if new and not is_volume(volume):
        out = check_output(volume, inputs=[source.path], what="volume", fix="give a new .zarr path")
        if voxel_size is None:
            raise InvalidVolumeError(f"{out} is a new volume of label images: give its --voxel-size Z Y X")
        given = check_chunks(chunks, shape) if chunks is not None else None
        shards = check_shards(shards, given, shape) if shards is not None else None
        chunks = given or choose_chunks(shape, source.dtype, chunk_bytes_budget())
        shards = shards or plan_shards(shape, chunks, source.dtype, chunk_bytes_budget())
        create = {"shape": shape, "voxel_size": check_voxel_size(voxel_size), "unit": check_unit(unit),
                  "chunks": chunks, "sample": dict(sample or {}), "shards": shards or chunks}
        return LabelPlan(source, out, name, names, params, inputs, box, create)
    target = open_volume(volume, mode="r")
    if shape != target.shape:
        raise InvalidVolumeError(f"{source.path} has shape {shape}{' in its box' if box else ''} but "
                                 f"{target.path.name} has {target.shape}; a segmentation must "
                                 "match its volume voxel for voxel")
    if voxel_size is not None:
        given = check_voxel_size(voxel_size)
        if not np.allclose(given, target.voxel_size, rtol=1e-6, atol=0):
            raise InvalidVolumeError(f"--voxel-size {tuple(given)} differs from {target.path.name}'s "
                                     f"{tuple(target.voxel_size)}; a segmentation must match its volume")
    stage = f"{STAGE}:{LABELS}/{name}"
    if name in target.labels and stage not in target.provenance:
        by = ", ".join(provenance.writers(target, f"{LABELS}/{name}")) or "something other than porevox"
        raise OutputError(f"{target.path}: labels/{name} exists and was written by {by}; porevox replaces "
                          "only what it wrote itself: choose another --labels name")
    return LabelPlan(source, target.path, name, names, params, inputs, box)


def run_label_ingest(plan: LabelPlan) -> tuple[Volume, bool, dict]:
    """Carry out a planned segmentation ingest: ``labels/<name>`` written blockwise in
    the volume's chunks (published when complete), its values counted, and the phases
    (value, name, voxels) recorded on the array; a new volume of label images only is
    built beside its path and moved into place once complete. Returns the volume,
    whether work was done, and the phases."""
    if plan.create is None:
        return _write_labels(plan.volume, plan)
    c = plan.create
    with building(plan.volume) as tmp:
        create_volume(tmp, c["shape"], None, c["voxel_size"], unit=c["unit"], sample=c["sample"],
                      chunks=c["chunks"], shards=c["shards"], name=plan.volume.name.removesuffix(".zarr"),
                      image=False)
        _, did, phases = _write_labels(tmp, plan)
    return open_volume(plan.volume), did, phases


def _write_labels(path: Path, plan: LabelPlan) -> tuple[Volume, bool, dict]:
    from .blockwise import store
    from .storage import LABELS

    volume = open_volume(path)
    key = f"{LABELS}/{plan.name}"
    chunks = volume.chunks
    data = source_to_dask(plan.source, chunks)
    if plan.box is not None:   # whole chunks of the VOI read, one output chunk per task
        data = data[tuple(slice(a, b) for a, b in plan.box)].rechunk(chunks)
    result = store(volume, key, data, stage=f"{STAGE}:{key}", params=plan.params, inputs=plan.inputs)
    phases = volume.array(key).attrs.get(PHASES)
    if result.skipped and phases is not None:
        return volume, False, phases
    present = label_counts(volume, plan.name)       # counted as its levels were written
    if present is None:
        counts, _ = histogram(volume.to_dask(key))
        present = {int(v): int(c) for v, c in enumerate(counts) if c}
    unknown = sorted(set(plan.names) - set(present))
    if unknown:
        logger.warning("labels/%s: --phase-names names values not in the segmentation: %s", plan.name,
                       ", ".join(map(str, unknown)))
    phases = {str(v): {"name": plan.names.get(v, f"phase {v}"), "voxels": n} for v, n in present.items()}
    describe_label(volume, plan.name, phases)
    logger.info("labels/%s of %s: %s", plan.name, volume.path.name,
                ", ".join(f"{v} = {p['name']} ({p['voxels']:,} voxels)" for v, p in phases.items()))
    return volume, True, phases


def ingest(src: str | os.PathLike, out: str | os.PathLike, voxel_size: Sequence[float],
           **options: Any) -> tuple[Volume, bool]:
    """Write the stack at `src` as a new porevox volume at `out`.

    `options` are those of :func:`plan_ingest` (unit, sample, chunks, kind, shape,
    dtype, offset, byte_order, overwrite). Returns the volume and whether work was
    done (False when the same ingest had been done before).
    """
    return run_ingest(plan_ingest(src, out, voxel_size, **options))
