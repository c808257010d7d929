"""Running kernels over chunked volumes, and writing their results as stages.

Two runners, one contract — ``kernel(block, **kwargs) -> block`` with a halo of
`depth` voxels per axis, the outer faces of the volume left to the kernel:

* :func:`map_kernel` builds a lazy Dask array with ``map_overlap`` (light kernels);
* :func:`run_by_block` runs heavy kernels by block index, each task reading core +
  halo straight from Zarr and writing its own output chunk.

:func:`store` and :func:`run_by_block` write into a volume as a resumable stage:
under a temporary name, published when complete, then recorded in provenance.
Output storage chunks equal compute chunks, so no chunk is written by two tasks.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from ..backend import get_array_module, to_device, to_numpy
from ..backend import resolve as resolve_backend
from ..errors import InvalidVolumeError
from . import provenance
from .cluster import compute
from .phases import PhaseView, phase_dask
from .storage import (
    CheckedArray,
    Volume,
    checked_dask,
    choose_chunks,
    discard,
    open_volume,
    publish_array,
    remove_stale_tmp,
    tmp_array,
    write_chunks,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """What a stage did: its output name, whether it was skipped, its record."""

    name: str
    skipped: bool
    record: dict


# --------------------------------------------------------------------------- inputs
def as_dask(image: Any, chunks: Sequence[int] | None = None) -> da.Array:
    """A NumPy, CuPy, Zarr or Dask array, or a volume path, as a 3-D Dask array."""
    if isinstance(image, (str, os.PathLike)):
        image = open_volume(image, mode="r").to_dask()
    elif isinstance(image, zarr.Array):
        image = checked_dask(image, str(image.store), image.path)
    elif isinstance(image, PhaseView):
        image = phase_dask(image)
    elif isinstance(image, CheckedArray):
        image = checked_dask(image.arr, image.tomogram, image.name)
    elif not isinstance(image, da.Array):
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            raise TypeError(f"image must be an array or a volume path; got {type(image).__name__}")
        image = da.from_array(image, chunks=chunks or choose_chunks(image.shape, image.dtype),
                              asarray=False)
    if image.ndim != 3:
        raise InvalidVolumeError(
            f"image must be 3-D (z, y, x); got {image.ndim}-D of shape {image.shape}"
        )
    if chunks is not None:
        image = image.rechunk(chunks)
    return image


def normalize_depth(depth: int | Sequence[int]) -> tuple[int, int, int]:
    values = (int(depth),) * 3 if np.isscalar(depth) else tuple(int(d) for d in depth)
    if len(values) != 3 or min(values) < 0:
        raise ValueError(f"depth must be a non-negative int or 3 of them; got {depth!r}")
    return values


def regular_chunks(image: da.Array) -> da.Array:
    """`image` with regular chunks (all equal but a smaller last one), as Zarr needs."""
    target = tuple(c[0] for c in image.chunks)
    if all(all(b == c[0] for b in c[:-1]) and c[-1] <= c[0] for c in image.chunks):
        return image
    logger.info("rechunking %s to regular chunks %s to align with storage", image.chunksize, target)
    return image.rechunk(target)


def fit_chunks_to_depth(image: da.Array, depth: Sequence[int]) -> tuple[da.Array, tuple[int, int, int]]:
    """Make every chunk at least `depth` deep (rechunking explicitly, logged).

    An axis held in one chunk needs no halo; its depth becomes 0. Chunks stay
    regular so they remain aligned with storage chunks.
    """
    image = regular_chunks(image)
    new_chunks, new_depth = [], []
    for n, c, d in zip(image.shape, image.chunks, depth):
        if len(c) == 1:
            new_chunks.append(c[0])
            new_depth.append(0)
            continue
        size = c[0]
        if min(c) < d:
            size = max(size, d)
            while 0 < n % size < d:
                size += 1
            size = min(size, n)
        new_chunks.append(size)
        new_depth.append(0 if size >= n else d)
    new_chunks = tuple(new_chunks)
    if new_chunks != tuple(c[0] for c in image.chunks):
        logger.info("rechunking %s -> %s: chunks must be at least the halo %s deep",
                    image.chunksize, new_chunks, tuple(depth))
        image = image.rechunk(new_chunks)
    return image, tuple(new_depth)


def slice_chunks(image: da.Array, bytes_per_voxel: int, *, multiple: int = 1,
                 balance: bool = False) -> da.Array:
    """`image` rechunked (where it is not already) to blocks of whole (y, x) slices:
    as deep as the workers' chunk budget allows for a kernel holding
    `bytes_per_voxel` per voxel, a multiple of `multiple` deep where the budget
    allows, and with `balance` balanced over the workers' threads
    (:func:`~porevox.engine.cluster.balanced_depth`)."""
    from .cluster import balanced_depth, chunk_bytes_budget

    nz, ny, nx = image.shape
    most = chunk_bytes_budget() // (bytes_per_voxel * ny * nx)
    depth = balanced_depth(nz, most) if balance else max(1, min(nz, most))
    if depth >= multiple:
        depth -= depth % multiple
    if image.chunks[1] != (ny,) or image.chunks[2] != (nx,) or image.chunks[0][0] != depth:
        image = image.rechunk((depth, ny, nx))
    return image


# --------------------------------------------------------------------------- runners
def map_kernel(kernel: Callable, image: Any, depth: int | Sequence[int], dtype: Any,
               **kwargs: Any) -> da.Array:
    """Lazy ``kernel`` over `image` with a `depth`-voxel halo (``map_overlap``).

    The outer faces get no padding (``boundary="none"``): the kernel treats them.
    The result has the (possibly rechunked, regular) chunks of the input.
    """
    image = as_dask(image)
    image, depth = fit_chunks_to_depth(image, normalize_depth(depth))
    dtype = np.dtype(dtype)
    return image.map_overlap(kernel, depth=depth, boundary="none", trim=True, dtype=dtype,
                             meta=image._meta.astype(dtype), **kwargs)


def store(volume: Volume | str | os.PathLike, name: str, image: da.Array, *, stage: str | None = None,
          params: Mapping[str, Any] | None = None, inputs: Mapping[str, str] | None = None,
          force: bool = False) -> StageResult:
    """Write `image` into `volume` as array `name`, as a resumable stage.

    Skipped (and said so) when `stage` already finished with the same `params` and
    `inputs` and its output is present, unless `force`.
    """
    volume = open_volume(volume)
    image = regular_chunks(image)
    if get_array_module(image._meta) is not np:  # Zarr stores host memory
        image = image.map_blocks(to_numpy, dtype=image.dtype, meta=np.empty((0,) * image.ndim, image.dtype))

    def write(out: zarr.Array) -> None:
        compute(da.store(image, out, lock=False, compute=False))

    return run_stage(volume, name, write, shape=image.shape, dtype=image.dtype,
                     chunks=tuple(c[0] for c in image.chunks), stage=stage, params=params,
                     inputs=inputs, force=force)


def run_stage(volume: Volume, name: str, write: Callable[[zarr.Array], None], *, shape, dtype,
              chunks, stage: str | None = None, params: Mapping[str, Any] | None = None,
              inputs: Mapping[str, str] | None = None, force: bool = False) -> StageResult:
    """The resumable-stage protocol for one output array.

    Skip if `stage` finished with the same `params` and `inputs` (unless `force`);
    else create a temporary array, let `write` fill it, claim it for the stage
    (:func:`~porevox.engine.provenance.pending`), publish it as `name`, and only then
    record the stage as done.
    """
    stage = stage or name
    params, inputs = dict(params or {}), dict(inputs or {})
    done = None if force else provenance.completed(volume, stage, params, inputs)
    if done:
        logger.info("stage %s already done with the same inputs and parameters; nothing to do", stage)
        return StageResult(name, True, done)
    started = time.time()
    remove_stale_tmp(volume, name)
    out, tmp = tmp_array(volume, name, shape, dtype, chunks)
    try:
        write(out)
        provenance.pending(volume, stage, [name])
        publish_array(volume, tmp, name)
    except BaseException:
        discard(volume.path / tmp)
        raise
    record = provenance.write_record(volume, stage, params, inputs, [name], started)
    return StageResult(name, False, record)


def write_blockwise(volume: Volume | str | os.PathLike, kernel: Callable, src: str, name: str, *,
                    depth: int | Sequence[int], dtype: Any, stage: str | None = None,
                    force: bool = False, **kwargs: Any) -> StageResult:
    """:func:`map_kernel` over array `src` of `volume`, stored as array `name`."""
    volume = open_volume(volume)
    image = map_kernel(kernel, volume.to_dask(src), depth, dtype, **kwargs)
    return store(volume, name, image, stage=stage,
                 params=_params(kernel, depth, dtype, kwargs),
                 inputs={src: provenance.fingerprint_array(volume, src)}, force=force)


def block_slices(shape: Sequence[int], chunks: Sequence[int]):
    """The core box of every chunk, as tuples of slices, in C order."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    for corner in itertools.product(*ranges):
        yield tuple(slice(o, min(o + c, n)) for o, c, n in zip(corner, chunks, shape))


def _run_block(kernel, src: zarr.Array, out: zarr.Array, core: tuple[slice, ...],
               depth: tuple[int, ...], backend: str, kwargs: dict) -> None:
    outer = tuple(slice(max(s.start - d, 0), min(s.stop + d, n))
                  for s, d, n in zip(core, depth, src.shape))
    result = kernel(to_device(src[outer], backend), **kwargs)
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(core, outer))
    out[core] = to_numpy(result[inner]).astype(out.dtype, copy=False)


def run_by_block(volume: Volume | str | os.PathLike, kernel: Callable, src: str, name: str, *,
                 depth: int | Sequence[int], dtype: Any, chunks: Sequence[int] | None = None,
                 stage: str | None = None, force: bool = False, backend: str = "auto",
                 **kwargs: Any) -> StageResult:
    """Heavy `kernel` by block index: each task reads core + halo of `src` from Zarr,
    runs the kernel (on the GPU where `backend` resolves to ``"cupy"``) and writes
    its own chunk of `name`. Resumable like :func:`store`.
    """
    backend = resolve_backend(backend)
    volume = open_volume(volume)
    depth = normalize_depth(depth)
    src_arr = volume.array(src)
    chunks = tuple(chunks or write_chunks(src_arr))
    params = _params(kernel, depth, dtype, kwargs) | {"chunks": list(chunks)}
    inputs = {src: provenance.fingerprint_array(volume, src)}

    def write(out: zarr.Array) -> None:
        src_d, out_d = dask.delayed(src_arr), dask.delayed(out)
        run = dask.delayed(_run_block, pure=True)
        tasks = [run(kernel, src_d, out_d, core, depth, backend, kwargs)
                 for core in block_slices(src_arr.shape, chunks)]
        logger.info("running %s on %d blocks of %s", kernel.__name__, len(tasks), chunks)
        compute(*tasks)

    return run_stage(volume, name, write, shape=src_arr.shape, dtype=dtype, chunks=chunks,
                     stage=stage, params=params, inputs=inputs, force=force)


def _params(kernel: Callable, depth, dtype, kwargs: Mapping[str, Any]) -> dict:
    return {"kernel": f"{kernel.__module__}.{kernel.__qualname__}",
            "depth": list(normalize_depth(depth)), "dtype": np.dtype(dtype).name, **kwargs}


# --------------------------------------------------------------------------- reductions by block
@dataclass(frozen=True)
class Block:
    """Where a block lies: its core box in the volume, and its halo depth per side."""

    core: tuple[slice, ...]          # the core, in volume coordinates
    outer: tuple[slice, ...]         # core + halo, clipped at the volume's outer faces

    @property
    def inner(self) -> tuple[slice, ...]:
        """The core, in coordinates of the block read with its halo."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))

    @property
    def offset(self) -> tuple[int, ...]:
        """Volume index of the first voxel of the block read with its halo."""
        return tuple(o.start for o in self.outer)


def grow(core: Sequence[slice], depth: Sequence[int], shape: Sequence[int]) -> Block:
    """The :class:`Block` of `core` with a `depth` halo, clipped at the outer faces."""
    core = tuple(slice(int(s.start), int(s.stop)) for s in core)
    outer = tuple(slice(max(s.start - d, 0), min(s.stop + d, n))
                  for s, d, n in zip(core, normalize_depth(depth), shape))
    return Block(core, outer)


def _reduce_one(kernel, data, block: Block, shape, backend: str, kwargs: dict):
    return kernel(to_device(data, backend), core=block.inner, offset=block.offset,
                  volume_shape=tuple(shape), **kwargs)


def _read_reduce_one(kernel, stored, block: Block, shape, backend: str, kwargs: dict):
    return _reduce_one(kernel, np.asarray(stored[block.outer]), block, shape, backend, kwargs)


def stored_array(image: Any) -> bool:
    """Whether `image` is an array on disk that tasks can read box by box (a Zarr
    array, or a volume's :class:`~porevox.engine.storage.CheckedArray`, or a phase of
    one)."""
    return isinstance(image, (zarr.Array, CheckedArray))


def stored_handle(image: zarr.Array | CheckedArray):
    """One Dask key for a stored array, read through a :class:`CheckedArray`."""
    if isinstance(image, zarr.Array):
        image = CheckedArray(image, str(image.store), image.path)
    return dask.delayed(image, pure=True)


def block_tasks(kernel: Callable, image: Any, cores: Sequence[Sequence[slice]],
                depth: int | Sequence[int] | Sequence[Sequence[int]], *, backend: str = "auto",
                **kwargs: Any) -> tuple[list[Block], list]:
    """The lazy form of :func:`reduce_boxes`: the blocks and one Dask delayed task per
    block, to be computed together with other work (e.g. every tomogram of a study).

    Where `image` is stored (:func:`stored_array`), each task reads its own block,
    halo included, from the store: the tasks depend on nothing but the array's
    handle, so the scheduler hands them out a few at a time as workers free up
    (Dask's root-task queuing) and a worker holds only the blocks it is running,
    whatever the volume's size. A Dask `image` is sliced per block instead: chunk
    pieces and concatenations that the scheduler cannot bound that way.
    """
    backend = resolve_backend(backend)
    if not stored_array(image):
        image = as_dask(image)
    cores = [tuple(c) for c in cores]
    shape = tuple(int(n) for n in image.shape)
    per_box = (len(cores) > 0 and not np.isscalar(depth) and len(depth) == len(cores)
               and not np.isscalar(depth[0]))
    depths = list(depth) if per_box else [depth] * len(cores)
    blocks = [grow(c, d, shape) for c, d in zip(cores, depths)]
    logger.debug("%s over %d blocks", getattr(kernel, "__name__", "kernel"), len(blocks))
    if stored_array(image):
        stored, run = stored_handle(image), dask.delayed(_read_reduce_one, pure=True)
        return blocks, [run(kernel, stored, b, shape, backend, kwargs) for b in blocks]
    run = dask.delayed(_reduce_one, pure=True)
    return blocks, [run(kernel, image[b.outer], b, shape, backend, kwargs) for b in blocks]


def _combine(combine, *parts):
    return combine(list(parts))


def tree_reduce(tasks: Sequence[Any], cores: Sequence[Sequence[slice]], combine: Callable,
                fan: int = 2) -> Any:
    """Merge per-block results on the workers, neighbours first: the blocks of a
    regular grid (`cores`, as :func:`block_slices` gives them) are combined in groups
    of ``fan`` per axis, level by level, by ``combine(list_of_results)``, whose result
    must be a valid input again. Returns one Dask delayed: the driver receives one
    merged result, whatever the number of blocks."""
    if not tasks:
        raise ValueError("tree_reduce needs at least one task")
    starts = [sorted({int(c[a].start) for c in cores}) for a in range(3)]
    index = [tuple(starts[a].index(int(c[a].start)) for a in range(3)) for c in cores]
    level = dict(zip(index, tasks))
    run = dask.delayed(_combine, pure=True)
    while len(level) > 1:
        groups: dict = {}
        for key, task in sorted(level.items()):
            groups.setdefault(tuple(i // fan for i in key), []).append(task)
        level = {key: (group[0] if len(group) == 1 else run(combine, *group))
                 for key, group in groups.items()}
    return next(iter(level.values()))


def reduce_boxes(kernel: Callable, image: Any, cores: Sequence[Sequence[slice]],
                 depth: int | Sequence[int] | Sequence[Sequence[int]], *, backend: str = "auto",
                 **kwargs: Any) -> list[tuple[Block, Any]]:
    """Run a reducing `kernel` on the given core boxes of `image`, each read with its
    halo; return ``[(block, kernel's result)]`` in the order of `cores`.

    The kernel is called as ``kernel(block_array, core=..., offset=...,
    volume_shape=..., **kwargs)``: `block_array` is the core plus a `depth` halo,
    clipped (not padded) at the volume's outer faces; `core` locates the core in it;
    `offset` is the volume index of its first voxel. Its result is small (counts,
    sums, a few samples); the caller merges them. `depth` may be one depth for all
    boxes or one per box (for reruns with grown halos).
    """
    blocks, tasks = block_tasks(kernel, image, cores, depth, backend=backend, **kwargs)
    logger.info("reducing %s over %d blocks", getattr(kernel, "__name__", "kernel"), len(tasks))
    return list(zip(blocks, compute(*tasks))) if tasks else []


def compute_box(shape: Sequence[int], chunks: Sequence[int], bytes_per_voxel: float,
                depth: int | Sequence[int] = 0, *, grow: bool = True,
                need: Callable[[Sequence[int]], float] | None = None) -> tuple[int, int, int]:
    """The box shape for tasks whose kernels hold `bytes_per_voxel` per voxel of a
    box with its `depth` halo (or `need(box)` bytes), starting from the storage `chunks`.

    The chunks, halved along their longest axis until a box with its halo fits the
    workers' budget for one task (4.5 x :func:`~porevox.engine.cluster.chunk_bytes_budget`);
    then, unless `grow` is False (chunks given explicitly), grown toward a cube
    within that budget — the thinnest axis doubled, the thickest halved where the
    doubled box would not fit — while every worker thread keeps about four boxes. A
    thin storage chunk (a slice of a slice-wise stage) thus becomes a thick box:
    fewer halo voxels read twice, smaller faces to merge. Boxes grow by doubling, so
    along an axis where a box is larger than a chunk it spans whole chunks.
    """
    from .cluster import chunk_bytes_budget, total_threads

    depth = normalize_depth(depth)
    budget = 4.5 * chunk_bytes_budget()

    if need is None:
        def need(b):
            return math.prod(min(n, x + 2 * d) for n, x, d in zip(shape, b, depth)) * bytes_per_voxel

    def count(b):
        return math.prod(-(-n // x) for n, x in zip(shape, b))

    box = [max(1, min(int(c), int(n))) for c, n in zip(chunks, shape)]
    while need(box) > budget and max(box) > 2 * max(depth) + 1:
        axis = int(np.argmax(box))
        box[axis] = -(-box[axis] // 2)
    least = 4 * total_threads()
    while grow:
        open_axes = [a for a in range(3) if box[a] < shape[a]]
        if not open_axes:
            break
        thin = min(open_axes, key=lambda a: box[a])
        bigger = list(box)
        bigger[thin] = min(2 * box[thin], int(shape[thin]))
        if need(bigger) <= budget and count(bigger) >= least:
            box = bigger
            continue
        thick = int(np.argmax(box))
        if box[thick] >= 4 * box[thin]:    # the same volume, nearer a cube
            bigger[thick] = -(-box[thick] // 2)
            if need(bigger) <= budget:
                box = bigger
                continue
        break
    return tuple(box)


def _read_boxes(func, arrays, box, kwargs):
    return func(*(np.asarray(a[box]) for a in arrays), **kwargs)


def box_tasks(func: Callable, arrays: Sequence[Any], boxes: Sequence[Sequence[slice]],
              **kwargs: Any) -> list:
    """One Dask delayed task per box: ``func(*blocks, **kwargs)`` with the box of every
    array of `arrays` (stored arrays, :func:`stored_array`), each read straight from
    its store by the task — the arrays' chunks need not match, and the tasks, which
    depend only on the arrays' handles, are handed out as workers free up."""
    handles = [stored_handle(a) for a in arrays]
    run = dask.delayed(_read_boxes, pure=True)
    return [run(func, handles, tuple(box), kwargs) for box in boxes]


def chunk_boxes(image: Any, chunks: Sequence[int] | None = None) -> list[tuple[slice, ...]]:
    """The core box of every chunk of `image` (its own regular chunks, or `chunks`)."""
    image = as_dask(image)
    chunks = tuple(int(c) for c in (chunks or (c[0] for c in regular_chunks(image).chunks)))
    return list(block_slices(image.shape, chunks))


def reduce_blocks(kernel: Callable, image: Any, depth: int | Sequence[int], *,
                  chunks: Sequence[int] | None = None, backend: str = "auto",
                  **kwargs: Any) -> list[tuple[Block, Any]]:
    """:func:`reduce_boxes` over every chunk of `image` (its own chunks, or `chunks`)
    as a core box, in C order."""
    return reduce_boxes(kernel, image, chunk_boxes(image, chunks), depth, backend=backend, **kwargs)
