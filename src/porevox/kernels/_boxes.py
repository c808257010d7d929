"""Boxes of a block as tuples of slices: a core grown by a halo, one box inside another."""

from __future__ import annotations


def grow(core, depth, shape) -> tuple[slice, ...]:
    """`core` grown by `depth` voxels per axis, clipped to `shape`."""
    return tuple(slice(max(c.start - d, 0), min(c.stop + d, n)) for c, d, n in zip(core, depth, shape))


def within(inner, outer) -> tuple[slice, ...]:
    """`inner` in the coordinates of `outer` (both in one array's coordinates)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
