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

import dask.array as da
import numpy as np

from ..engine import as_dask
from ..engine.cluster import chunk_bytes_budget
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
    per chunk is fine-grained enough to size each block's halo."""
    from ..engine.storage import choose_chunks

    return choose_chunks(tuple(shape), np.uint8, target_bytes=max(chunk_bytes_budget() // 48, 32**3))


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
           "radius_grid"]
