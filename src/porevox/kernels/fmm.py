"""Geodesic distance by fast marching, and the geodesic tortuosity built on it.

:func:`fast_marching` solves the eikonal equation ``|∇d| = 1`` on the voxel grid,
restricted to the `allowed` voxels (6-neighbour stencil, anisotropic voxel size
honoured), from initial upper bounds: voxels with a finite `initial` value start as
trial points with that value, and every voxel's final value is
``min(initial, computed)`` — or exactly `initial` where the caller marks it
``fixed`` (a Dirichlet condition). The method is the standard fast marching method
(Sethian 1996): a 4-ary min-heap of the trial voxels held in numba arrays, each
voxel's heap position kept so that a changed trial value moves in place; the
arrays are framed by two blocked voxels, so the stencils need no bounds checks.
Upwind schemes, as scikit-fmm's ``distance``:

* ``order=1``: per axis, the smaller accepted neighbour ``v1``, term
  ``(d - v1)² / h²``;
* ``order=2``: where the next voxel beyond ``v1`` in the same direction is accepted
  too with ``v2 <= v1`` (up to a relative 1e-10: values equal but for round-off tie),
  the second-order one-sided difference, term ``9/4 (d - (4 v1 - v2)/3)² / h²``; else
  the first-order term.

The quadratic ``Σ terms = 1`` is solved over the axes taken in increasing order of
their upwind value, an axis joining only while the solution exceeds its value (the
causal solution; scikit-fmm sums every accepted axis and gives up where the
discriminant is negative — on a fast marching order the two agree but for such
rare cases). When a voxel is accepted, its trial neighbours are recomputed, and for
``order=2`` also the trial voxels two steps away behind an accepted neighbour (their
second-order stencil may now use the new voxel), as scikit-fmm does.

Agreement with scikit-fmm (tests): first order to round-off; second order τ within
6e-4 (median distance difference ~1e-13 voxel on isotropic voxels, 2e-4 on the
paper's anisotropic ones), the differences lying where scikit-fmm sums non-causal
axes or keeps a stale ``v2``. The second-order scheme is not continuous in its data
(it switches stencils where ``v2`` and ``v1`` tie): a 1e-9 perturbation of the
sources moves some distances by up to 0.7 voxel, τ by up to 1e-3 — ours and
scikit-fmm's alike. Ties up to round-off count as ties, so that a solve reaching the
same values by another route (the block solver) takes the same stencils: with an
exact ``v2 <= v1``, a 1e-12 difference at the first bend of a channel 3 voxels wide
moved every distance beyond it by a third of a voxel (τ by 3e-3); with the
tolerance a 1e-13 perturbation moves τ by 1e-7.

Speed, one process, 40 % porosity, best of 2: 128³ 0.20 / 0.22 s (orders 1 / 2)
where ``skfmm.distance`` takes 0.51 / 0.62 s; 256³ 2.2 / 2.3 s against 5.5 / 6.9 s.
(Array arguments of inlined numba helpers cost atomic reference counting on every
call, a third of the time: the helpers take scalars.)

:func:`fast_marching_update` is the incremental form: known values kept, the march
started from the voxels whose values dropped and re-opening a known voxel only where
its value drops by more than round-off (:data:`_REOPEN`), so that its work is that of
the change (the block solver's visits).

:func:`inlet_distance` is the distance through the solid from an inlet face, and
:func:`geodesic_tortuosity` the paper's τ (Wijaya et al. 2024): geodesic distance
from the inlet face divided by the straight distance, averaged over the reachable
solid of the last quarter of the length.

All functions run on the CPU (fast marching is sequential); CuPy inputs are copied
to the host. The numba kernels release the GIL, so distances along several
directions can run in threads.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from ..backend import to_numpy
from ..errors import InvalidVolumeError
from ._checks import check_voxel_size
from .conductivity import NoPathWarning, check_axis

#: Bytes per voxel :func:`inlet_distance` and :func:`geodesic_tortuosity` hold at
#: their peak beyond their input: float64 distances, the uint8 state, int32 heap
#: positions, the heap of the front; measured (VmHWM) on 128³ and 256³ porous
#: structures with 40 % porosity: 14.1 and 13.6. :func:`fast_marching` with bounds
#: of different values holds a copy of them besides (+ 8).
BYTES_PER_VOXEL = 15.0

_FAR, _TRIAL, _FROZEN, _BLOCKED, _SOURCE = 0, 1, 2, 3, 4
_NINE_QUARTERS = 9.0 / 4.0
_TIE = 1.0 + 1e-10  # v2 <= v1 up to round-off: the second-order stencil
#: A known voxel is re-opened only where its value drops by more than this (relative):
#: the second-order stencil recomputed from other neighbours moves values by round-off,
#: and re-opening for that re-marched whole blocks for nothing (4x the work along z).
_REOPEN = 1.0 - 1e-12
_PAD = 2  # blocked frame around the kernel's arrays: the second-order stencil's reach


# --------------------------------------------------------------------------- checks
def check_order(order: Any) -> int:
    """`order` as 1 or 2 (the upwind scheme's order)."""
    if isinstance(order, (int, np.integer)) and not isinstance(order, bool) and order in (1, 2):
        return int(order)
    raise InvalidVolumeError(f"order must be 1 or 2 (upwind scheme order); got {order!r}")


def _check_3d(name: str, arr: Any) -> np.ndarray:
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        raise TypeError(f"{name} must be a 3-D array; got {type(arr).__name__}")
    arr = to_numpy(arr)
    if arr.ndim != 3:
        raise InvalidVolumeError(
            f"{name} must be 3-D (z, y, x); got {arr.ndim}-D of shape {arr.shape}; "
            "pass a (z, y, x) volume (add a length-1 axis to a 2-D slice)")
    return arr


def check_direction(direction: Any) -> int:
    """`direction` as +1 or -1 (the inlet at the low or the high end of the axis)."""
    if isinstance(direction, (int, np.integer)) and not isinstance(direction, bool) and direction in (1, -1):
        return int(direction)
    raise InvalidVolumeError(
        f"direction must be +1 (inlet at slice 0) or -1 (inlet at the last slice); got {direction!r}")


def memory_estimate(shape) -> int:
    """Bytes :func:`inlet_distance` needs at its peak for a volume of `shape`, beyond
    its input."""
    return int(math.prod(int(s) for s in shape) * BYTES_PER_VOXEL)


def fast_marching_depth(order: int = 2) -> int:
    """Halo (voxels) a block-local :func:`fast_marching` needs to use the same stencils
    as the whole-volume one at its core's edge: the upwind stencil's reach."""
    return check_order(order)


# --------------------------------------------------------------------------- public kernels
def fast_marching(allowed, initial, *, voxel_size=(1.0, 1.0, 1.0), order=2, fixed=None) -> np.ndarray:
    """Distances by fast marching through the `allowed` voxels from initial upper bounds.

    Parameters
    ----------
    allowed : (P, M, N) ndarray of bool
        Voxels the front may enter (nonzero = allowed). Not modified.
    initial : (P, M, N) ndarray of float
        Initial upper bounds: finite values are sources (or known bounds, such as a
        neighbouring block's distances), ``+inf`` elsewhere. Not modified.
    voxel_size : 3 floats
        Size along (z, y, x); distances come in its unit.
    order : {1, 2}
        Order of the upwind scheme (see the module docstring).
    fixed : (P, M, N) ndarray of bool, optional
        Voxels whose finite `initial` value is imposed (a Dirichlet condition, as a
        block's halo taken from its neighbours): never recomputed, even where a
        smaller value could be. Default: none, every finite value is an upper bound.

    Returns
    -------
    (P, M, N) float64 ndarray
        ``min(initial, computed distance)`` (`initial` where `fixed`) in allowed
        voxels reachable from a finite initial value; ``inf`` elsewhere (unreachable
        or not allowed). A view into the kernel's framed array (two voxels larger
        per side).
    """
    allowed = _check_3d("allowed", allowed)
    initial = _check_3d("initial", initial)
    for name, other in (("initial", initial), ("fixed", fixed)):
        if other is not None and np.shape(other) != allowed.shape:
            raise InvalidVolumeError(f"allowed and {name} must have one shape; got {allowed.shape} "
                                     f"and {np.shape(other)}")
    h = check_voxel_size(voxel_size)
    order = check_order(order)
    if np.isnan(initial).any():
        raise InvalidVolumeError("initial must not hold NaN: use +inf for voxels with no bound")
    state, dist, inner = _framed(allowed)
    out = dist[inner]
    np.copyto(out, initial, where=state[inner] == _FAR)
    finite = np.isfinite(dist)
    if fixed is not None:
        np.copyto(state[inner], np.uint8(_SOURCE), where=finite[inner] & (_check_3d("fixed", fixed) != 0))
    # Bounds at the smallest finite value are accepted before any other voxel: they
    # are sources too, and where all are, the kernel needs no copy of the bounds.
    if finite.any():
        low = dist[finite].min()
        state[finite & (dist == low)] = _SOURCE
    bounds = bool((finite & (state == _FAR)).any())
    _march(state, dist, dist.copy() if bounds else dist, _positions(state.size), bounds,
           h[0], h[1], h[2], order)
    return out


def inlet_distance(solid, *, axis=1, direction=1, voxel_size=(1.0, 1.0, 1.0), order=2) -> np.ndarray:
    """Geodesic distance through the solid from the inlet face along `axis`.

    Parameters
    ----------
    solid : (P, M, N) ndarray of bool or integers
        Nonzero = solid; pore is an obstacle. Not modified.
    axis : int or {"z", "y", "x"}
    direction : {+1, -1}
        The inlet is slice 0 along `axis` for +1, the last slice for -1.
    voxel_size : 3 floats
        Size along (z, y, x).
    order : {1, 2}
        Order of the upwind scheme.

    Returns
    -------
    (P, M, N) float64 ndarray
        Distance from the centre plane of the inlet slice (0 on its solid voxels), in
        the unit of `voxel_size`; ``inf`` in pore and in solid not reachable from the
        inlet (6-connectivity).
    """
    solid = _check_3d("solid", solid)
    axis = check_axis(axis)
    direction = check_direction(direction)
    h = check_voxel_size(voxel_size)
    order = check_order(order)
    state, dist, inner = _framed(solid)
    out = dist[inner]
    inlet = _slice(axis, 0 if direction > 0 else solid.shape[axis] - 1)
    out[inlet] = np.where(solid[inlet] != 0, 0.0, np.inf)
    state[inner][inlet][np.isfinite(out[inlet])] = _SOURCE
    _march(state, dist, dist, _positions(state.size), False, h[0], h[1], h[2], order)
    return out


def fast_marching_update(allowed, distance, seeds, *, fixed=None, voxel_size=(1.0, 1.0, 1.0),
                         order=2) -> int:
    """Lower `distance` in place to the fast-marching solution after some values dropped.

    The incremental form of :func:`fast_marching` for a block whose neighbours'
    values (its halo) came down since its last solve: the finite values of
    `distance` are *known* (a previous solve's, upper bounds), the `seeds` are the
    voxels whose values just dropped (or new sources), and the march starts from the
    seeds alone. A known voxel is re-opened only where its upwind value computed from
    a newly accepted neighbour is lower than it by more than a relative 1e-12; voxels
    that were unreached (``inf``) are marched as by :func:`fast_marching`. The work is
    that of the voxels whose values drop, not of the block. With every value ``inf``
    but the seeds' it is :func:`fast_marching` from them (the same result). For ``order=1`` (a monotone
    scheme) the result is the whole solve's from the same data: every voxel ends with
    the upwind value of its neighbours (the fast-marching fixed point).

    Parameters
    ----------
    allowed : (P, M, N) ndarray of bool
        Voxels the front may enter. Not modified.
    distance : (P, M, N) float64 ndarray
        Known values (``inf`` where unknown); updated in place.
    seeds : (P, M, N) ndarray of bool
        Voxels the march starts from, at their (finite) values in `distance`.
    fixed : (P, M, N) ndarray of bool, optional
        Voxels whose values are imposed (never lowered): the halo, the inlet. An
        imposed voxel without a value (``inf``) is not entered.
    voxel_size, order
        As for :func:`fast_marching`.

    Returns
    -------
    int
        Voxels accepted by the march (the work done).
    """
    allowed = _check_3d("allowed", allowed)
    if not isinstance(distance, np.ndarray) or distance.dtype != np.float64 or distance.ndim != 3:
        raise InvalidVolumeError("distance must be a 3-D float64 NumPy array (updated in place)")
    for name, other in (("distance", distance), ("seeds", seeds), ("fixed", fixed)):
        if other is not None and np.shape(other) != allowed.shape:
            raise InvalidVolumeError(f"allowed and {name} must have one shape; got {allowed.shape} "
                                     f"and {np.shape(other)}")
    h = check_voxel_size(voxel_size)
    order = check_order(order)
    fixed = np.zeros((0, 0, 0), np.uint8) if fixed is None else _flags(fixed)
    framed = math.prod(n + 2 * _PAD for n in allowed.shape)
    pops = _update(_flags(allowed), distance, _flags(seeds), fixed, _positions(framed), h[0], h[1], h[2],
                   order)
    if pops < 0:
        raise InvalidVolumeError("distance must not hold NaN: use +inf for unknown voxels")
    return int(pops)


@dataclass(frozen=True)
class TortuosityResult:
    """Result of :func:`geodesic_tortuosity`.

    tau : the geodesic tortuosity, mean of geodesic / straight distance over the
        averaged set (NaN when it is empty).
    n_averaged : number of voxels averaged (reachable solid in the last slices).
    reachable_fraction : solid voxels reachable from the inlet / solid voxels (NaN
        without solid).
    profile : per slice, in order of distance from the inlet (index 0 = the inlet
        slice, always NaN), the mean geodesic / straight ratio of its reachable solid
        (NaN where there is none).
    axis, direction, last_slices : the axis (0, 1, 2), the direction (+1, -1) and the
        number of slices averaged.
    note : why τ is NaN ("" when it is not).
    """

    tau: float
    n_averaged: int
    reachable_fraction: float
    profile: tuple[float, ...]
    axis: int
    direction: int
    last_slices: int
    note: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["profile"] = list(self.profile)
        return out


def geodesic_tortuosity(distance, solid, *, axis=1, direction=1, voxel_size=(1.0, 1.0, 1.0),
                        last_fraction=0.25) -> TortuosityResult:
    """The paper's geodesic tortuosity from an :func:`inlet_distance` field.

    τ is the mean of ``distance / straight`` over the reachable solid voxels in the
    last ``max(1, ceil(last_fraction * n))`` slices at the outlet end, ``straight``
    being ``|k - k_inlet| * voxel_size[axis]`` for a voxel in slice ``k``.

    Parameters
    ----------
    distance : (P, M, N) ndarray of float
        Distance from the inlet face (``inf`` where unreachable). Not modified.
    solid : (P, M, N) ndarray of bool or integers
        Nonzero = solid. Not modified.
    axis, direction, voxel_size
        As given to :func:`inlet_distance`.
    last_fraction : float in (0, 1]
        Fraction of the length, at the outlet end, over which τ is averaged.

    Returns
    -------
    TortuosityResult
        NaN τ with a :class:`~porevox.kernels.conductivity.NoPathWarning` where no
        solid of the last slices is reachable (no percolating path, no solid, or a
        volume one slice thick along `axis`).
    """
    sums = tortuosity_sums(distance, solid, axis=axis, direction=direction, voxel_size=voxel_size)
    result = tortuosity_from_sums(sums, axis=axis, direction=direction, last_fraction=last_fraction)
    if result.note:
        warnings.warn(result.note, NoPathWarning, stacklevel=2)
    return result


def tortuosity_sums(distance, solid, *, axis=1, direction=1, voxel_size=(1.0, 1.0, 1.0),
                    offset=(0, 0, 0), volume_shape=None) -> dict:
    """Per-slice sums behind :func:`geodesic_tortuosity`, mergeable over blocks.

    `distance` and `solid` may be a block (no halo) of a larger volume starting at
    volume index `offset` of a volume of `volume_shape` (default: the whole volume
    is given). Adding the results of the blocks of a volume (element-wise) gives the
    whole volume's.

    Returns
    -------
    dict
        ``sums`` and ``counts``: per slice of the volume along `axis`, in order of
        distance from the inlet, the sum of ``distance / straight`` and the number
        of reachable solid voxels (the inlet slice, where ``straight`` is 0, counts
        nothing); ``solid`` and ``reached``: solid voxels and reachable ones.
    """
    distance = _check_3d("distance", distance)
    solid = _check_3d("solid", solid)
    if distance.shape != solid.shape:
        raise InvalidVolumeError(f"distance and solid must have one shape; got {distance.shape} "
                                 f"and {solid.shape}")
    axis = check_axis(axis)
    direction = check_direction(direction)
    h = check_voxel_size(voxel_size)[axis]
    n = int((volume_shape or distance.shape)[axis])
    start = int(offset[axis])
    sums = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    n_solid = n_reached = 0
    for local in range(distance.shape[axis]):
        k = start + local
        m = k if direction > 0 else n - 1 - k
        d = distance[_slice(axis, local)]
        reach = (solid[_slice(axis, local)] != 0)
        n_solid += int(np.count_nonzero(reach))
        reach &= np.isfinite(d)
        count = int(np.count_nonzero(reach))
        n_reached += count
        if m > 0 and count:
            sums[m] = float(np.sum(d[reach], dtype=np.float64)) / (m * h)
            counts[m] = count
    return {"sums": sums, "counts": counts, "solid": n_solid, "reached": n_reached}


def tortuosity_from_sums(sums: dict, *, axis=1, direction=1, last_fraction=0.25) -> TortuosityResult:
    """:class:`TortuosityResult` from (merged) :func:`tortuosity_sums`; a NaN τ says
    why in ``note`` (no warning here)."""
    axis = check_axis(axis)
    direction = check_direction(direction)
    if not (isinstance(last_fraction, (int, float)) and 0 < last_fraction <= 1):
        raise InvalidVolumeError(f"last_fraction must be a number in (0, 1]; got {last_fraction!r}")
    total = np.asarray(sums["sums"], dtype=np.float64)
    counts = np.asarray(sums["counts"], dtype=np.int64)
    n_solid, n_reached = int(sums["solid"]), int(sums["reached"])
    n = total.size
    last = max(1, math.ceil(last_fraction * n))
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    if n:
        profile[0] = np.nan
    tail = slice(max(1, n - last), n)
    n_avg = int(counts[tail].sum())
    note = ""
    if n_avg > 0:
        tau = float(total[tail].sum() / n_avg)
    else:
        why = ("the volume has no solid" if n_solid == 0 else
               f"the volume is one slice thick along axis {axis}" if n == 1 else
               f"no solid of the last {last} slices is connected to the inlet face along axis {axis}")
        note = f"no percolating path: {why}; tortuosity is NaN"
        tau = math.nan
    return TortuosityResult(
        tau=tau, n_averaged=n_avg,
        reachable_fraction=float(n_reached / n_solid) if n_solid else math.nan,
        profile=tuple(float(v) for v in profile), axis=axis, direction=direction, last_slices=last,
        note=note)


# --------------------------------------------------------------------------- helpers
def _framed(allowed) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The kernel's state (_FAR where allowed, else _BLOCKED) and distance (inf)
    arrays, framed by _PAD blocked voxels, and the slices of the interior."""
    shape = tuple(n + 2 * _PAD for n in allowed.shape)
    inner = tuple(slice(_PAD, n + _PAD) for n in allowed.shape)
    state = np.full(shape, _BLOCKED, np.uint8)
    np.copyto(state[inner], np.uint8(_FAR), where=np.asarray(allowed) != 0)
    return state, np.full(shape, np.inf), inner


def _flags(mask) -> np.ndarray:
    """A mask as uint8 (nonzero = set) without a copy where it is bool or uint8."""
    mask = to_numpy(mask)
    if mask.dtype == bool:
        return mask.view(np.uint8)
    return mask if mask.dtype == np.uint8 else (mask != 0).view(np.uint8)


def _positions(n: int) -> np.ndarray:
    """Scratch for the heap positions: int32 where it can index every voxel."""
    return np.empty(n, np.int32 if n < 2**31 else np.int64)


def _slice(axis: int, index: int) -> tuple:
    return tuple(index if a == axis else slice(None) for a in range(3))


# --------------------------------------------------------------------------- numba
@njit(cache=True, nogil=True, inline="always")
def _sift_up(hv, hi, pos, at, value, index):
    """Place (value, index) at heap position `at` or above it."""
    while at > 0:
        parent = (at - 1) >> 2
        if hv[parent] <= value:
            break
        hv[at] = hv[parent]
        hi[at] = hi[parent]
        pos[hi[at]] = at
        at = parent
    hv[at] = value
    hi[at] = index
    pos[index] = at


@njit(cache=True, nogil=True, inline="always")
def _sift_down(hv, hi, pos, size, at, value, index):
    """Place (value, index) at heap position `at` or below it (heap of `size`)."""
    while True:
        first = 4 * at + 1
        if first >= size:
            break
        child = first
        best = hv[first]
        for c in range(first + 1, min(first + 4, size)):
            if hv[c] < best:
                best = hv[c]
                child = c
        if best >= value:
            break
        hv[at] = hv[child]
        hi[at] = hi[child]
        pos[hi[at]] = at
        at = child
    hv[at] = value
    hi[at] = index
    pos[index] = at


@njit(cache=True, nogil=True, inline="always")
def _axis_term(s_lo, d_lo, s_lo2, d_lo2, s_hi, d_hi, s_hi2, d_hi2, order):
    """The upwind value along one axis of a voxel from the states and values of its
    neighbours one and two steps below (lo) and above (hi): (t, weight) for the term
    weight * (d - t)^2 / h^2, or (inf, 0) without an accepted neighbour. (Scalars,
    not arrays: array arguments of inlined functions cost reference counting.)"""
    v1 = np.inf
    v2 = np.inf
    if s_lo == _FROZEN:
        v1 = d_lo
        if order == 2 and s_lo2 == _FROZEN and d_lo2 <= v1 * _TIE:
            v2 = d_lo2
    if s_hi == _FROZEN and d_hi < v1:
        v1 = d_hi
        v2 = np.inf
        if order == 2 and s_hi2 == _FROZEN and d_hi2 <= v1 * _TIE:
            v2 = d_hi2
    if v2 < np.inf:
        return (4.0 * v1 - v2) / 3.0, _NINE_QUARTERS
    if v1 < np.inf:
        return v1, 1.0
    return np.inf, 0.0


@njit(cache=True, nogil=True, inline="always")
def _solve(t0, a0, t1, a1, t2, a2):
    """The causal root of sum_a a_a * (d - t_a)^2 = 1, the axes taken by increasing
    t_a, each joining only while the root exceeds its t_a (inf without any)."""
    if t1 < t0:
        t0, t1 = t1, t0
        a0, a1 = a1, a0
    if t2 < t1:
        t1, t2 = t2, t1
        a1, a2 = a2, a1
        if t1 < t0:
            t0, t1 = t1, t0
            a0, a1 = a1, a0
    if t0 == np.inf:
        return np.inf
    u = t0 + 1.0 / math.sqrt(a0)
    if u <= t1:
        return u
    aa = a0 + a1
    bb = a0 * t0 + a1 * t1
    cc = a0 * t0 * t0 + a1 * t1 * t1 - 1.0
    u = (bb + math.sqrt(max(bb * bb - aa * cc, 0.0))) / aa
    if u <= t2:
        return u
    aa += a2
    bb += a2 * t2
    cc += a2 * t2 * t2
    return (bb + math.sqrt(max(bb * bb - aa * cc, 0.0))) / aa


@njit(cache=True, nogil=True)
def _march(state, dist, bound, pos, bounds, h0, h1, h2, order):
    """Fast marching in place on `dist`.

    `state` and `dist` are framed by _PAD blocked voxels (no bounds checks needed);
    on entry `state` is _BLOCKED, _SOURCE (finite `dist` imposed: never recomputed)
    or _FAR; _FAR voxels with a finite `dist` hold upper bounds, kept in `bound`
    (read only when `bounds`). `pos` (scratch, one integer per voxel) holds each
    trial voxel's heap position.
    """
    st = state.ravel()
    d = dist.ravel()
    size = 0
    for p in range(st.size):
        if st[p] == _FAR and d[p] < np.inf:
            st[p] = _TRIAL
        if st[p] == _TRIAL or st[p] == _SOURCE:
            size += 1
    hv = np.empty(max(1024, 2 * size), np.float64)
    hi = np.empty(hv.size, np.int64)
    size = 0
    for p in range(st.size):
        if st[p] == _TRIAL or st[p] == _SOURCE:
            _sift_up(hv, hi, pos, size, d[p], p)
            size += 1
    while True:
        size = _march_heap(st, d, bound.ravel(), pos, hv, hi, size, state.shape[1], state.shape[2],
                           bounds, 1.0 / (h0 * h0), 1.0 / (h1 * h1), 1.0 / (h2 * h2), order)
        if size == 0:
            break
        grown_v = np.empty(2 * hv.size, np.float64)  # the front outgrew the heap
        grown_i = np.empty(2 * hv.size, np.int64)
        grown_v[:size] = hv[:size]
        grown_i[:size] = hi[:size]
        hv = grown_v
        hi = grown_i
    for p in range(st.size):
        if st[p] != _FROZEN:
            d[p] = np.inf


@njit(cache=True, nogil=True)
def _march_heap(st, d, b, pos, hv, hi, size, n1, n2, bounds, i0, i1, i2, order):
    """The main loop of :func:`_march` on flat arrays, until the heap is empty (returns
    0) or may overflow (returns its size, for the caller to grow it)."""
    s0 = n1 * n2
    s1 = n2
    offsets = (-s0, s0, -s1, s1, -1, 1)
    room = hv.size - 6  # a voxel's acceptance pushes at most its 6 neighbours
    while size > 0:
        if size > room:
            return size
        p = hi[0]
        size -= 1
        if size > 0:
            _sift_down(hv, hi, pos, size, 0, hv[size], hi[size])
        st[p] = _FROZEN
        for off in offsets:
            q = p + off
            sq = st[q]
            if sq == _FROZEN and order == 2:
                # q accepted: the trial voxel beyond it may now use p in its stencil
                q += off
                sq = st[q]
                if sq != _TRIAL:
                    continue
            elif sq != _FAR and sq != _TRIAL:
                continue
            t0, w0 = _axis_term(st[q - s0], d[q - s0], st[q - 2 * s0], d[q - 2 * s0],
                                st[q + s0], d[q + s0], st[q + 2 * s0], d[q + 2 * s0], order)
            t1, w1 = _axis_term(st[q - s1], d[q - s1], st[q - 2 * s1], d[q - 2 * s1],
                                st[q + s1], d[q + s1], st[q + 2 * s1], d[q + 2 * s1], order)
            t2, w2 = _axis_term(st[q - 1], d[q - 1], st[q - 2], d[q - 2],
                                st[q + 1], d[q + 1], st[q + 2], d[q + 2], order)
            u = _solve(t0, w0 * i0, t1, w1 * i1, t2, w2 * i2)
            if bounds and b[q] < u:
                u = b[q]
            if sq == _FAR:
                if u == np.inf:
                    continue
                st[q] = _TRIAL
                d[q] = u
                _sift_up(hv, hi, pos, size, u, q)
                size += 1
            elif u != d[q]:
                at = pos[q]
                if u < d[q]:
                    _sift_up(hv, hi, pos, at, u, q)
                else:  # a second-order stencil came in: the value may rise
                    _sift_down(hv, hi, pos, size, at, u, q)
                d[q] = u
    return 0


@njit(cache=True, nogil=True)
def _update(allowed, distance, seeds, fixed, pos, h0, h1, h2, order):
    """:func:`fast_marching_update`: the framed state built in one pass (known voxels
    _FROZEN with their value as bound, imposed ones with ``-inf``, unknown imposed ones
    _BLOCKED; seeds _SOURCE if imposed, else _TRIAL), the march from the seeds, the
    values copied back. Returns the voxels accepted, or -1 on a NaN distance."""
    n0, n1, n2 = allowed.shape
    has_fixed = fixed.size > 0
    shape = (n0 + 2 * _PAD, n1 + 2 * _PAD, n2 + 2 * _PAD)
    state = np.full(shape, _BLOCKED, np.uint8)
    dist = np.full(shape, np.inf)
    bound = np.full(shape, np.inf)
    size = 0
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                if allowed[i, j, k] == 0:
                    continue
                v = distance[i, j, k]
                if v != v:
                    return -1
                imposed = has_fixed and fixed[i, j, k] != 0
                a, b, c = i + _PAD, j + _PAD, k + _PAD
                if v == np.inf:
                    state[a, b, c] = _BLOCKED if imposed else _FAR
                    continue
                dist[a, b, c] = v
                bound[a, b, c] = -np.inf if imposed else v
                if seeds[i, j, k] != 0:
                    state[a, b, c] = _SOURCE if imposed else _TRIAL
                    size += 1
                else:
                    state[a, b, c] = _FROZEN
    if size == 0:
        return 0
    st = state.ravel()
    d = dist.ravel()
    hv = np.empty(max(1024, 2 * size), np.float64)
    hi = np.empty(hv.size, np.int64)
    size = 0
    for p in range(st.size):
        if st[p] == _TRIAL or st[p] == _SOURCE:
            _sift_up(hv, hi, pos, size, d[p], p)
            size += 1
    pops = 0
    while True:
        size, done = _update_heap(st, d, bound.ravel(), pos, hv, hi, size, shape[1], shape[2],
                                  1.0 / (h0 * h0), 1.0 / (h1 * h1), 1.0 / (h2 * h2), order)
        pops += done
        if size == 0:
            break
        grown_v = np.empty(2 * hv.size, np.float64)
        grown_i = np.empty(2 * hv.size, np.int64)
        grown_v[:size] = hv[:size]
        grown_i[:size] = hi[:size]
        hv = grown_v
        hi = grown_i
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                distance[i, j, k] = dist[i + _PAD, j + _PAD, k + _PAD]
    return pops


@njit(cache=True, nogil=True)
def _update_heap(st, d, b, pos, hv, hi, size, n1, n2, i0, i1, i2, order):
    """The main loop of :func:`_update`: as :func:`_march_heap`, but a known voxel
    (_FROZEN with a ``b`` above ``-inf``) is re-opened where its new upwind value is
    lower. Returns (heap size, 0 when done; voxels accepted)."""
    s0 = n1 * n2
    s1 = n2
    offsets = (-s0, s0, -s1, s1, -1, 1)
    room = hv.size - 12  # a voxel's acceptance pushes at most 12 voxels (order 2)
    pops = 0
    while size > 0:
        if size > room:
            return size, pops
        p = hi[0]
        size -= 1
        if size > 0:
            _sift_down(hv, hi, pos, size, 0, hv[size], hi[size])
        st[p] = _FROZEN
        b[p] = -np.inf
        pops += 1
        for off in offsets:
            q = p + off
            for step in range(order):
                if step == 1:
                    # the voxel beyond an accepted q may now use p in its stencil
                    if st[q] != _FROZEN:
                        break
                    q += off
                sq = st[q]
                if sq == _BLOCKED or sq == _SOURCE:
                    continue
                if sq == _FROZEN and b[q] == -np.inf:
                    continue
                if sq == _FAR and step == 1:
                    continue
                t0, w0 = _axis_term(st[q - s0], d[q - s0], st[q - 2 * s0], d[q - 2 * s0],
                                    st[q + s0], d[q + s0], st[q + 2 * s0], d[q + 2 * s0], order)
                t1, w1 = _axis_term(st[q - s1], d[q - s1], st[q - 2 * s1], d[q - 2 * s1],
                                    st[q + s1], d[q + s1], st[q + 2 * s1], d[q + 2 * s1], order)
                t2, w2 = _axis_term(st[q - 1], d[q - 1], st[q - 2], d[q - 2],
                                    st[q + 1], d[q + 1], st[q + 2], d[q + 2], order)
                u = _solve(t0, w0 * i0, t1, w1 * i1, t2, w2 * i2)
                if b[q] < u:
                    u = b[q]
                if sq == _FAR:
                    if u == np.inf:
                        continue
                    st[q] = _TRIAL
                    d[q] = u
                    _sift_up(hv, hi, pos, size, u, q)
                    size += 1
                elif sq == _TRIAL:
                    if u != d[q]:
                        at = pos[q]
                        if u < d[q]:
                            _sift_up(hv, hi, pos, at, u, q)
                        else:
                            _sift_down(hv, hi, pos, size, at, u, q)
                        d[q] = u
                elif u < d[q] * _REOPEN:  # a known voxel whose value drops: re-opened
                    st[q] = _TRIAL
                    d[q] = u
                    _sift_up(hv, hi, pos, size, u, q)
                    size += 1
    return 0, pops


__all__ = ["BYTES_PER_VOXEL", "TortuosityResult", "check_direction", "check_order", "fast_marching",
           "fast_marching_depth", "fast_marching_update", "geodesic_tortuosity", "inlet_distance",
           "memory_estimate", "tortuosity_from_sums", "tortuosity_sums"]
