"""`pv.feature_transform` / `pv.distance_transform`: the exact Euclidean transforms of
a volume of any size, as Dask arrays.

Three passes of :func:`porevox.kernels.edt.feature_pass`, each over blocks that hold
whole lines of its axis (the array rechunked between passes, so a task holds a
bundle of lines, never the volume, whatever the distances). The features (the
nearest pore voxel of every voxel, global indices) come back in the image's chunks,
(3, P, M, N) int32: the distance of any block follows from them without a halo, and
the struts pass reads them so that each block's halo is known before it runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..engine import as_dask
from ..engine.blockwise import block_slices
from ..engine.cluster import chunk_bytes_budget
from ..engine.storage import write_chunks
from ..kernels._checks import check_voxel_size
from ..kernels.edt import feature_distance, feature_pass

#: Dask's task-based rechunk: the peer-to-peer one (distributed's default for large
#: rechunks) cancelled the other passes' tasks computed with it ("lost dependencies").
RECHUNK = "tasks"
#: Bytes per voxel a pass task holds: its features in and out (up to 2 + 3 int32)
#: and their transposed copies, with a margin.
BYTES_PER_VOXEL = 48


def feature_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """Chunks for a volume's features (12 bytes per voxel): a quarter of the workers'
    chunk budget each, so their writes spread over the workers and the largest radius
    per chunk is fine-grained enough to size each block's halo; and thin enough
    across every axis that whole lines of one chunk fit a pass's task."""
    from ..engine.storage import choose_chunks

    shape = tuple(int(n) for n in shape)
    chunks = list(choose_chunks(shape, np.uint8, target_bytes=max(chunk_bytes_budget() // 48, 32**3)))
    budget = 4.5 * chunk_bytes_budget() / BYTES_PER_VOXEL
    while max(chunks) > 16 and any(n * math.prod(chunks) / c > budget for n, c in zip(shape, chunks)):
        a = int(np.argmax(chunks))
        chunks[a] = -(-chunks[a] // 2)
    return tuple(chunks)


def _pass(block, axis, voxel_size, block_info=None):
    offset = [lo for lo, _ in block_info[0]["array-location"][-3:]]
    return feature_pass(block, axis, voxel_size=voxel_size, offset=offset)


def _distance(features, voxel_size, block_info=None):
    offset = [lo for lo, _ in block_info[0]["array-location"][-3:]]
    return feature_distance(features, voxel_size=voxel_size, offset=offset)


def _line_chunks(shape, chunks, axis: int, budget_voxels: int) -> tuple[int, int, int]:
    """Whole lines along `axis`, the other axes' chunks halved (the larger first)
    until a bundle fits the budget."""
    out = [int(c) for c in chunks]
    out[axis] = int(shape[axis])
    others = [a for a in range(3) if a != axis]
    while math.prod(out) > budget_voxels and max(out[a] for a in others) > 1:
        a = max(others, key=lambda b: out[b])
        out[a] = -(-out[a] // 2)
    return tuple(out)


def feature_transform(image: Any, *, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                      chunks: Sequence[int] | None = None) -> da.Array:
    """The nearest background (zero) voxel of every voxel of `image`, lazily.

    Returns
    -------
    (3, P, M, N) int32 Dask array in the chunks of `image` (or `chunks`): the global
    (z, y, x) indices of the nearest zero voxel (−1 where the volume has none).
    """
    vs = check_voxel_size(voxel_size)
    image = as_dask(image)
    shape = tuple(int(n) for n in image.shape)
    base = tuple(int(c) for c in (chunks or (c[0] for c in image.chunks)))
    budget = max(int(4.5 * chunk_bytes_budget() / BYTES_PER_VOXEL), max(shape))
    feats = None
    for axis in range(3):
        lines = _line_chunks(shape, base, axis, budget)
        if axis == 0:
            src = image.rechunk(lines, method=RECHUNK)
            feats = src.map_blocks(_pass, 0, vs, new_axis=0, chunks=((1,),) + src.chunks,
                                   dtype=np.int32, name="porevox-edt-0")
        else:
            src = feats.rechunk((axis,) + lines, method=RECHUNK)
            feats = src.map_blocks(_pass, axis, vs, chunks=((axis + 1,),) + src.chunks[1:],
                                   dtype=np.int32, name=f"porevox-edt-{axis}")
    return feats.rechunk((3,) + base, method=RECHUNK)


def distance_from_features(features: da.Array, *, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> da.Array:
    """The distance to the feature of every voxel (float64, the unit of `voxel_size`)."""
    vs = check_voxel_size(voxel_size)
    return features.map_blocks(_distance, vs, drop_axis=0, dtype=np.float64, name="porevox-edt-distance")


def distance_transform(image: Any, *, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                       chunks: Sequence[int] | None = None) -> da.Array:
    """Exact Euclidean distance of every nonzero voxel to the nearest zero voxel, with
    anisotropic `voxel_size` (``scipy.ndimage.distance_transform_edt(image,
    sampling=voxel_size)``, for volumes of any size), lazily, in the chunks of `image`."""
    return distance_from_features(feature_transform(image, voxel_size=voxel_size, chunks=chunks),
                                  voxel_size=voxel_size)


def _bundles(shape, chunks, axis: int, budget_voxels: int) -> list[tuple[slice, ...]]:
    """Boxes of whole lines along `axis` and whole `chunks` across it, as many chunks
    per box as `budget_voxels` holds (at least one)."""
    size = [int(c) for c in chunks]
    size[axis] = int(shape[axis])
    others = [a for a in range(3) if a != axis]
    while True:
        open_axes = [a for a in others if size[a] < shape[a]]
        if not open_axes:
            break
        a = min(open_axes, key=lambda b: size[b])
        bigger = list(size)
        bigger[a] = min(2 * size[a], int(shape[a]))
        if math.prod(bigger) > budget_voxels:
            break
        size = bigger
    return list(block_slices(shape, size))


def _stored_pass(src, dst, box, axis, voxel_size, after=None):
    """One bundle of one pass: read from the array before, written to the next
    (`after`: the previous pass's barrier, for the order only)."""
    block = src[box] if axis == 0 else src[(slice(None),) + box]
    dst[(slice(None),) + box] = feature_pass(np.asarray(block), axis, voxel_size=voxel_size,
                                             offset=[b.start for b in box])


def _last_pass(src, dst, image, box, voxel_size, chunks, after=None):
    """The last pass of one bundle, written; returns the largest distance over the
    solid of each chunk it covers, (grid slices, maxima)."""
    offset = [b.start for b in box]
    feats = feature_pass(np.asarray(src[(slice(None),) + box]), 2, voxel_size=voxel_size, offset=offset)
    dst[(slice(None),) + box] = feats
    dist = feature_distance(feats, voxel_size=voxel_size, offset=offset)
    dist[np.asarray(image[box]) == 0] = 0.0
    grid = tuple(slice(b.start // c, -(-b.stop // c)) for b, c in zip(box, chunks))
    top = np.zeros(tuple(g.stop - g.start for g in grid))
    for cell in np.ndindex(top.shape):
        part = tuple(slice(k * c - b.start, min((k + 1) * c, b.stop) - b.start)
                     for k, c, b in zip((g.start + i for g, i in zip(grid, cell)), chunks, box))
        top[cell] = dist[part].max()
    return grid, top


def _barrier(*_):
    return None


def _assemble(shape, parts):
    grid = np.zeros(shape)
    for where, top in parts:
        grid[where] = top
    return grid


def stored_feature_transform(image, out, passes, *, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)):
    """The feature transform of a stored `image` written into `out` ((3, P, M, N)
    int32 Zarr array), each pass's result going through the store: `passes` are two
    Zarr arrays, (1, P, M, N) and (2, P, M, N) int32 in the chunks of `out`. Each
    pass's tasks read bundles of whole lines from the array before and write whole
    chunks of the next, so the data crosses between the passes on disk, never in the
    workers' memory (a transform many times the workers' memory runs in bounded
    memory; an in-memory rechunk between the passes killed workers at 1024³ on 2 x
    1 GiB).

    Returns a Dask delayed of the radius grid: the largest distance to the pore over
    the solid of each chunk of `out` (inf where no pore exists).
    """
    vs = check_voxel_size(voxel_size)
    shape = tuple(int(n) for n in image.shape)
    chunks = tuple(int(c) for c in write_chunks(out)[1:])
    budget = max(int(4.5 * chunk_bytes_budget() / BYTES_PER_VOXEL), 1)
    src, mid0, mid1, dst = (dask.delayed(a, pure=True) for a in (image, *passes, out))
    step = dask.delayed(_stored_pass, pure=False)
    done = [step(src, mid0, box, 0, vs) for box in _bundles(shape, chunks, 0, budget)]
    after = dask.delayed(_barrier, pure=False)(*done)
    done = [step(mid0, mid1, box, 1, vs, after) for box in _bundles(shape, chunks, 1, budget)]
    after = dask.delayed(_barrier, pure=False)(*done)
    last = dask.delayed(_last_pass, pure=False)
    parts = [last(mid1, dst, src, box, vs, chunks, after) for box in _bundles(shape, chunks, 2, budget)]
    grid_shape = tuple(-(-n // c) for n, c in zip(shape, chunks))
    return dask.delayed(_assemble, pure=False)(grid_shape, parts)


def _block_max(features, solid, voxel_size, block_info=None):
    offset = [lo for lo, _ in block_info[0]["array-location"][-3:]]
    d = feature_distance(features, voxel_size=voxel_size, offset=offset)
    inside = np.asarray(solid) != 0
    top = float(d[inside].max()) if inside.any() else 0.0
    return np.full((1, 1, 1), top)


def radius_grid(features: da.Array, image: Any, *, voxel_size: Sequence[float]) -> da.Array:
    """The largest distance to the pore over the solid of each chunk (a small array of
    the chunk grid's shape; inf where a chunk's solid has no pore anywhere)."""
    vs = check_voxel_size(voxel_size)
    image = as_dask(image).rechunk(features.chunks[1:], method=RECHUNK)
    return da.map_blocks(_block_max, features, image, vs, drop_axis=0,
                         chunks=tuple((1,) * len(c) for c in image.chunks), dtype=np.float64,
                         name="porevox-edt-radius")


__all__ = ["distance_from_features", "distance_transform", "feature_chunks", "feature_transform",
           "radius_grid", "stored_feature_transform"]
