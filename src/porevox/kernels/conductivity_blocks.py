"""One block's share of the conductivity solve, for a grid decomposed into blocks.

The blocks tile the grid of :mod:`porevox.kernels.conductivity` (conduction along
axis 0, conductances ``g`` and ``gb`` scaled as there). Every array of a block is
framed: its cells plus one layer on each side, which holds the neighbouring blocks'
boundary cells (:func:`faces`, :func:`with_frame`) or zeros on the volume's faces.
With the neighbours' cells in the frame, the grid's stencils hold on a block as on
the whole volume; the multigrid's coarse levels are built per block because the
blocks' edges are multiples of the aggregation factors, so no aggregate crosses
two blocks.

The smoother is the whole solver's red-black Gauss-Seidel on each block with its
frame held fixed (Jacobi between blocks, as hypre's hybrid smoothers): pre-smoothing
starts from zero and needs no neighbour, post-smoothing reads the neighbours' values
after the prolongation, and the post-smoothing sweeps run in the reverse order, so the
V-cycle stays symmetric and a valid CG preconditioner. Residuals, restrictions and
prolongations are exact: the decomposed V-cycle differs from the whole one only in
the smoother at the blocks' faces.

Nothing here talks to Dask: every function takes and returns NumPy arrays, never
modifying its inputs (a task may run twice).
"""

from __future__ import annotations

import numpy as np

from .conductivity import (
    _COARSE_SWEEPS,
    _FINE_SWEEPS,
    _WEIGHT,
    _coarse_restrict,
    _coarse_smooth,
    _fine_pap,
    _fine_restrict,
    _fine_smooth,
    _fine_update_r,
    _prolong_add,
    coarse_operator,
)

#: The six faces of a block, as (axis, side); side 0 is the low one.
FACES = tuple((axis, side) for axis in range(3) for side in (0, 1))
_EMPTY = np.zeros((0, 0, 0), np.uint8)


# --------------------------------------------------------------------------- frames
def framed(core: np.ndarray, dtype=None) -> np.ndarray:
    """`core` with a frame of zeros."""
    out = np.zeros(tuple(n + 2 for n in core.shape), dtype or core.dtype)
    out[1:-1, 1:-1, 1:-1] = core
    return out


def _layer(axis: int, at: int) -> tuple:
    where = [slice(1, -1)] * 3
    where[axis] = at
    return tuple(where)


def faces(a: np.ndarray) -> tuple:
    """The boundary layers of a framed block's cells, in :data:`FACES` order: what
    the neighbour on each side puts in its frame."""
    return tuple(a[_layer(axis, 1 if side == 0 else -2)].copy() for axis, side in FACES)


def with_frame(a: np.ndarray, neighbours, copy: bool = True) -> np.ndarray:
    """The framed array `a` (a copy unless `copy` is False) whose frame holds, on each
    side, the face the neighbour there shares (``neighbours[(axis, side)]``: that
    neighbour's :func:`faces` tuple, or None for zeros)."""
    out = a.copy() if copy else a
    for index, (axis, side) in enumerate(FACES):
        theirs = neighbours.get((axis, side))
        # the neighbour below shares its high face, the one above its low face
        out[_layer(axis, 0 if side == 0 else -1)] = 0 if theirs is None else theirs[index + 1 - 2 * side]
    return out


# --------------------------------------------------------------------------- set-up
def block_levels(mask: np.ndarray, fine: tuple, factors) -> list[tuple]:
    """The block's coarse operators (c0, c1, c2, diag), one per factor of `factors`,
    from its framed `mask` (the neighbours' cells in the frame) and
    ``fine = (g, gb, lo, hi)``. The low side of each c array's frame is still empty:
    :func:`coarse_faces` and :func:`with_coarse_frames` fill it."""
    levels = []
    for f in factors:
        levels.append(coarse_operator(levels[-1], f) if levels else coarse_operator(mask, f, fine))
    return levels


def coarse_faces(levels) -> list[tuple]:
    """Per level, the conductances across the block's high faces (c0, c1 and c2 on
    their last layer of cells): the neighbours above need them in their frames."""
    out = []
    for c0, c1, c2, _ in levels:
        out.append((np.ascontiguousarray(c0[-2, 1:-1, 1:-1]), np.ascontiguousarray(c1[1:-1, -2, 1:-1]),
                    np.ascontiguousarray(c2[1:-1, 1:-1, -2])))
    return out


def with_coarse_frames(levels, below) -> list[tuple]:
    """`levels` with the low frame of each c array set from the neighbour below on
    that axis (``below[axis]``: its :func:`coarse_faces`, or None)."""
    out = []
    for level, ops in enumerate(levels):
        cs = [c.copy() for c in ops[:3]]
        for axis in range(3):
            if below.get(axis) is not None:
                where = [slice(1, -1)] * 3
                where[axis] = 0
                cs[axis][tuple(where)] = below[axis][level][axis]
        out.append((*cs, ops[3]))
    return out


def first_rhs(mask: np.ndarray, gb: float, lo: int) -> np.ndarray:
    """The right-hand side: the Dirichlet current into the volume's first layer."""
    b = np.zeros(mask.shape)
    if lo > 0:
        b[lo, 1:-1, 1:-1] = gb * mask[lo, 1:-1, 1:-1]
    return b


# --------------------------------------------------------------------------- fine level
def fine_pap(mask, p, fine) -> float:
    """Σ p·(A p) over the block's cells, `p` with its neighbours in the frame."""
    (g0, g1, g2), gb, lo, hi = fine
    return float(_fine_pap(mask, p, g0, g1, g2, gb, lo, hi))


def fine_update(mask, p, r, alpha, fine) -> tuple[np.ndarray, float]:
    """r − alpha·A p (a new array) and its squared norm over the block."""
    (g0, g1, g2), gb, lo, hi = fine
    out = r.copy()
    rr, _ = _fine_update_r(mask, p, out, float(alpha), g0, g1, g2, gb, lo, hi, False)
    return out, float(rr)


def fine_presmooth(mask, r, fine, sweeps=_FINE_SWEEPS) -> np.ndarray:
    """Pre-smoothing of A z = r from zero, the frame held at zero."""
    (g0, g1, g2), gb, lo, hi = fine
    z = np.zeros(r.shape)
    for s in range(sweeps):
        _fine_smooth(mask, r, z, g0, g1, g2, gb, lo, hi, 0, s == 0)
        _fine_smooth(mask, r, z, g0, g1, g2, gb, lo, hi, 1, False)
    return z


def fine_restrict(mask, r, z, fine, f, cshape) -> np.ndarray:
    """The residual r − A z summed over the next level's aggregates, `z` with its
    neighbours in the frame."""
    (g0, g1, g2), gb, lo, hi = fine
    out = np.zeros(cshape)
    _fine_restrict(mask, r, z, g0, g1, g2, gb, lo, hi, out, *f, True)
    return out


def fine_postsmooth(mask, r, z, fine, sweeps=_FINE_SWEEPS, copy=True) -> np.ndarray:
    """Post-smoothing (reverse colour order) from `z`, its neighbours in the frame."""
    (g0, g1, g2), gb, lo, hi = fine
    z = z.copy() if copy else z
    for _ in range(sweeps):
        _fine_smooth(mask, r, z, g0, g1, g2, gb, lo, hi, 1, False)
        _fine_smooth(mask, r, z, g0, g1, g2, gb, lo, hi, 0, False)
    return z


# --------------------------------------------------------------------------- coarse levels
def coarse_presmooth(ops, b, sweeps=_COARSE_SWEEPS) -> np.ndarray:
    x = np.zeros(b.shape)
    for s in range(sweeps):
        _coarse_smooth(*ops, b, x, 0, s == 0)
        _coarse_smooth(*ops, b, x, 1, False)
    return x


def coarse_restrict(ops, b, x, f, cshape) -> np.ndarray:
    out = np.zeros(cshape)
    _coarse_restrict(*ops, b, x, out, *f, True)
    return out


def coarse_postsmooth(ops, b, x, sweeps=_COARSE_SWEEPS, copy=True) -> np.ndarray:
    x = x.copy() if copy else x
    for _ in range(sweeps):
        _coarse_smooth(*ops, b, x, 1, False)
        _coarse_smooth(*ops, b, x, 0, False)
    return x


def prolong(x, e, f, mask=None, diag=None, weight=_WEIGHT) -> np.ndarray:
    """x + weight · (e spread over its aggregates), on the active cells (`mask` on
    the fine level, ``diag > 0`` on a coarse one); a new array."""
    out = x.copy()
    _prolong_add(out, e, _EMPTY if mask is None else mask,
                 np.zeros((1, 1, 1)) if diag is None else diag, weight, *f)
    return out


__all__ = ["FACES", "block_levels", "coarse_faces", "coarse_postsmooth", "coarse_presmooth",
           "coarse_restrict", "faces", "fine_pap", "fine_postsmooth", "fine_presmooth",
           "fine_restrict", "fine_update", "first_rhs", "framed", "prolong", "with_coarse_frames",
           "with_frame"]
