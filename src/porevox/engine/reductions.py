"""Global reductions over chunked volumes: one pass of per-block partial results
and a tree merge (Dask's), never the whole volume in one place."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numba
import numpy as np

from ..backend import get_array_module, to_numpy
from .blockwise import as_dask
from .cluster import compute


@numba.njit(cache=True, nogil=True)
def _bincount(flat, nbins):
    counts = np.zeros(nbins, dtype=np.int64)
    for v in flat:
        counts[v] += 1
    return counts


def bincount(image, nbins=None):
    """Count of every integer gray value in `image` (uint8 or uint16).

    Unlike ``np.bincount`` it never casts the block to 64-bit indices, so it needs
    no memory beyond the counts.

    Returns
    -------
    (nbins,) int64 ndarray; ``nbins`` defaults to 256 for uint8 and 65536 for uint16.
    """
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"bincount needs a uint8 or uint16 image; got {image.dtype}")
    full = 1 << (8 * image.dtype.itemsize)
    nbins = full if nbins is None else int(nbins)
    if nbins < full and image.size and int(image.max()) >= nbins:
        raise ValueError(f"nbins={nbins} is too small for the largest value {int(image.max())}")
    return _bincount(image.reshape(-1), nbins)


def _block_counts(block, nbins):
    if get_array_module(block) is not np:
        counts = to_numpy(get_array_module(block).bincount(block.ravel(), minlength=nbins))
    else:
        counts = bincount(block, nbins)
    return counts.reshape(1, 1, 1, nbins)


def _block_hist(block, edges):
    counts, _ = np.histogram(to_numpy(block), bins=edges)
    return counts.reshape(1, 1, 1, -1)


def histogram(image: Any, bins: int | None = None, range: tuple[float, float] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Gray-value histogram of a whole volume.

    uint8 / uint16: with `bins` and `range` left out, the count of every gray value
    (256 or 65536 bins, edges ``0, 1, ..., 2**bits``) — the same as
    ``np.histogram(image, bins=2**bits, range=(0, 2**bits))``. Otherwise (and for
    floats) `bins` equal bins over `range` (default: the volume's min and max), the
    same as ``np.histogram`` on the whole volume.

    Returns
    -------
    counts : (bins,) int64 ndarray
    edges : (bins + 1,) float64 ndarray
    """
    image = as_dask(image)
    per_block = ((1,) * image.numblocks[0], (1,) * image.numblocks[1], (1,) * image.numblocks[2])
    if image.dtype in (np.uint8, np.uint16) and bins is None and range is None:
        nbins = 1 << (8 * image.dtype.itemsize)
        parts = image.map_blocks(_block_counts, nbins, new_axis=3, chunks=(*per_block, (nbins,)),
                                 dtype=np.int64, meta=np.empty((0, 0, 0, 0), np.int64))
        return compute(parts.sum(axis=(0, 1, 2)))[0], np.arange(nbins + 1, dtype=np.float64)
    bins = 256 if bins is None else int(bins)
    if range is None and image.dtype.kind == "f":   # NaN and ±inf are left out, as with a range
        finite = da.where(da.isfinite(image), image, np.nan)
        range = compute(da.nanmin(finite), da.nanmax(finite))
        if not np.isfinite(range).all():
            raise ValueError("the image holds no finite value")
        range = tuple(image.dtype.type(v) for v in range)
    elif range is None:
        range = compute(image.min(), image.max())  # kept in the image's dtype, as numpy does
    _, edges = np.histogram(np.empty(0, image.dtype), bins=bins, range=range)  # numpy's edge dtype
    parts = image.map_blocks(_block_hist, edges, new_axis=3, chunks=(*per_block, (bins,)),
                             dtype=np.int64, meta=np.empty((0, 0, 0, 0), np.int64))
    return compute(parts.sum(axis=(0, 1, 2)))[0], edges


def summary_stats(image: Any) -> dict:
    """min, max, mean, std, sum and count of a volume in one pass over the data."""
    image = as_dask(image)
    lo, hi, total, sq, count = compute(
        image.min(), image.max(), image.sum(dtype=np.float64),
        (image.astype(np.float64) ** 2).sum(), image.size,
    )
    mean = float(total) / count
    return {"min": float(lo), "max": float(hi), "mean": mean,
            "std": float(np.sqrt(max(float(sq) / count - mean**2, 0.0))),
            "sum": float(total), "count": int(count)}


def count_equal(image: Any, value: float) -> int:
    """Number of voxels equal to `value` (e.g. solid voxels of a segmentation)."""
    return int(compute((as_dask(image) == value).sum())[0])
