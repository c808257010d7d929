"""Block histograms."""

from __future__ import annotations

import numba
import numpy as np


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
