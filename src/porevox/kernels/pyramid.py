"""Pyramid levels of a block: the mean (gray) or the mode (labels) of each window.

Pure NumPy; the engine (:mod:`porevox.engine.ome`) reads the blocks and writes the
levels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def _windows(block: np.ndarray, factors: Sequence[int]) -> list[np.ndarray]:
    """The strided views of `block` holding each voxel of every factors-sized window."""
    shape = tuple(n // f for n, f in zip(block.shape, factors))
    return [block[tuple(slice(o, o + n * f, f) for o, n, f in zip(offset, shape, factors))]
            for offset in itertools.product(*(range(f) for f in factors))]


def mean_pool(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The mean of each `factors` window of `block` (whose sides are multiples of
    them), in `block`'s dtype; integers rounded half up."""
    views = _windows(block, factors)
    k = len(views)
    integer = np.issubdtype(block.dtype, np.integer)
    acc = np.zeros(views[0].shape, np.uint64 if integer else np.float64)
    for v in views:
        acc += v
    if integer:
        return ((acc + k // 2) // k).astype(block.dtype)
    return (acc / k).astype(block.dtype)


def mode_pool(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The most frequent value of each `factors` window of `block` (whose sides are
    multiples of them); a tie goes to the smaller value."""
    views = [np.ascontiguousarray(v) for v in _windows(block, factors)]
    counts = [np.ones(views[0].shape, np.uint8) for _ in views]   # how often each one's value occurs
    for i, j in itertools.combinations(range(len(views)), 2):
        same = np.equal(views[i], views[j]).view(np.uint8)
        np.add(counts[i], same, out=counts[i])
        np.add(counts[j], same, out=counts[j])
    best, most = views[0].copy(), counts[0]    # (a view of `block` where it was contiguous)
    for v, n in zip(views[1:], counts[1:]):
        take = (n > most) | ((n == most) & (v < best))
        np.copyto(best, v, where=take)
        np.copyto(most, n, where=take)
    return best


__all__ = ["mean_pool", "mode_pool"]
