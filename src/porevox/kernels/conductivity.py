"""Effective conductivity of the solid phase: steady-state conduction along an axis.

Finite volumes on the voxel grid, as TauFactor does: conductivity 1 in solid voxels
and 0 in pore; the conductance of the face between two solid neighbours along axis
``a`` is ``A_a / L_a`` (``A_a`` the product of the other two voxel sizes, ``L_a`` the
voxel size along ``a``); potential 1 and 0 on the two end faces along `axis`, half a
voxel from the first and last layer centres (conductance ``2 A_a / L_a``); no flux
through the sides. Solid not connected (6-connectivity) to both end faces is removed
first: it carries no current and would make the system singular.

The linear system is solved matrix-free by the conjugate gradient method. Nothing is
assembled: the operator is a numba stencil over a zero-framed copy of the mask, and
the solver keeps three float64 arrays of the grid (residual, search direction,
preconditioned residual) plus the potential on the two end layers only — that is all
the effective conductivity needs. Preconditioners (``method``):

``"mg"`` (default)
    one V-cycle of geometric multigrid: 2x2x2 aggregation (semi-coarsening, only
    along the strongly coupled axes, on strongly anisotropic voxels) with the exact
    Galerkin coarse operator (piecewise-constant interpolation keeps it a 7-point
    stencil, so it stays matrix-free), symmetric red-black Gauss-Seidel smoothing,
    the coarse correction over-weighted, a sparse direct solve on the coarsest grid
    (≤ 4096 cells). The coarse grids add about 1/7 of the fine grid's memory: ~34 bytes per
    voxel in all. 15-35 iterations where Jacobi needs hundreds to thousands; measured
    on 2 cores: 128³ in ~0.7 s, 538 x 538 x 400 in 58 s and 3.6 GiB.
``"jacobi"``
    the diagonal; one array less (~19 bytes per voxel), but its iteration count grows
    with the size of the volume (10x slower than "mg" at 128³). A memory-lighter
    fallback and a cross-check.
``"amg"``
    an assembled sparse matrix with a pyamg smoothed-aggregation preconditioner (needs
    ``pyamg``): ~13 times the memory of "mg" and 8x slower at 64³ and 128³, so never
    chosen automatically; kept as an independent cross-check.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit, prange
from scipy import ndimage
from threadpoolctl import threadpool_limits

from ..errors import InvalidVolumeError
from ._checks import check_segmentation, check_voxel_size

logger = logging.getLogger(__name__)

METHODS = ("mg", "jacobi", "amg")
AXIS_NAMES = {"z": 0, "y": 1, "x": 2}

#: Bytes per voxel each method holds at its peak beyond its input, measured (VmHWM) on
#: 256³ random structures: "mg" 33.6 (three float64 arrays, the framed mask, the
#: coarse grids), "jacobi" two float64 arrays, "amg" the assembled matrix and pyamg's
#: hierarchy (measured at 64³).
BYTES_PER_VOXEL = {"mg": 36.0, "jacobi": 19.0, "amg": 480.0}

_COARSEST_CELLS = 4096  # direct solve at or below this many coarse cells
# Red-black Gauss-Seidel sweeps before and after the coarse correction (one on the
# fine grid, four on the coarse ones, where they are cheap), and the correction
# over-weighted by 1.8 (piecewise-constant interpolation under-corrects). Measured on
# 128³ random structures with isotropic and anisotropic voxels, these took the least
# time: 2 + 2 sweeps cost 15-40 % more; 1 + 1 took up to twice the iterations on
# anisotropic voxels; weight 1.0 took 1.5-2x the iterations.
_STRONG = 0.25  # semi-coarsening threshold (see _coarsening)
_FINE_SWEEPS = 1
_COARSE_SWEEPS = 4
_WEIGHT = 1.8


class NoPathWarning(RuntimeWarning):
    """The solid has no path joining the two end faces: conductivity 0."""


class NotConvergedWarning(RuntimeWarning):
    """The solver stopped at `maxiter` before reaching `rtol`."""


@dataclass(frozen=True)
class ConductivityResult:
    """Result of :func:`effective_conductivity`.

    relative_conductivity : σ_eff / σ_bulk along `axis` (0 when no path).
    tortuosity_factor : D · σ_bulk / σ_eff, TauFactor's τ (inf when no path).
    relative_density : D, solid voxels / all voxels (percolating or not).
    percolating_fraction : solid voxels connected to both end faces / solid voxels.
    iterations, residual : CG iterations and final relative residual ‖r‖/‖b‖.
    flux_imbalance : |I_in − I_out| / I_in, the currents through the two end faces.
    method : the preconditioner used ("mg", "jacobi", "amg"; "none" without a path).
    """

    relative_conductivity: float
    tortuosity_factor: float
    relative_density: float
    percolating_fraction: float
    iterations: int
    residual: float
    flux_imbalance: float
    method: str
    axis: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- checks
def check_axis(axis: Any) -> int:
    """`axis` as 0, 1 or 2 (also "z", "y", "x")."""
    if isinstance(axis, str) and axis.lower() in AXIS_NAMES:
        return AXIS_NAMES[axis.lower()]
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= axis <= 2:
        return int(axis)
    raise InvalidVolumeError(f"axis must be 0, 1, 2 or 'z', 'y', 'x'; got {axis!r}")


def check_stop(rtol: Any, maxiter: Any) -> None:
    """The solver's stopping rule: `rtol` in (0, 1), `maxiter` None or positive."""
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise InvalidVolumeError(f"rtol must be a number in (0, 1); got {rtol!r}")
    if maxiter is not None and (not isinstance(maxiter, (int, np.integer)) or maxiter < 1):
        raise InvalidVolumeError(f"maxiter must be a positive integer; got {maxiter!r}")


def _check_solid(solid: Any) -> np.ndarray:
    solid = np.asarray(check_segmentation(solid))
    if min(solid.shape) < 1:
        raise InvalidVolumeError(f"solid must not be empty; got shape {solid.shape}")
    return solid


def memory_estimate(shape, method: str = "mg") -> int:
    """Bytes :func:`effective_conductivity` needs at its peak for a volume of `shape`
    (beyond the input array itself)."""
    return int(math.prod(int(s) for s in shape) * BYTES_PER_VOXEL[method])


# --------------------------------------------------------------------------- entry
def effective_conductivity(solid, *, voxel_size=(1.0, 1.0, 1.0), axis=1, method="mg",
                           rtol=1e-8, maxiter=None) -> ConductivityResult:
    """Effective conductivity of the solid along `axis`, relative to the bulk.

    Parameters
    ----------
    solid : (P, M, N) ndarray of bool or integers
        Nonzero = solid (conducting). Not modified.
    voxel_size : 3 floats
        Size along (z, y, x); any unit (the result is dimensionless).
    axis : int or {"z", "y", "x"}
        Direction of the applied potential difference.
    method : {"mg", "jacobi", "amg"}
        Preconditioner of the conjugate gradient (see the module docstring).
    rtol : float
        Stop when the residual norm falls to `rtol` times the right-hand side's.
    maxiter : int, optional
        Iteration limit (default 500 for "mg" and "amg", 20 × the volume's largest
        dimension + 1000 for "jacobi"); a :class:`NotConvergedWarning` if reached.

    Returns
    -------
    ConductivityResult
        ``relative_conductivity`` = σ_eff/σ_bulk and ``tortuosity_factor`` =
        D·σ_bulk/σ_eff (TauFactor's definition, D the solid fraction of the whole
        volume), with the solve's diagnostics. Without a path joining the end faces:
        0 and inf, with a :class:`NoPathWarning`.
    """
    t0 = time.perf_counter()
    solid = _check_solid(solid)
    axis = check_axis(axis)
    voxel_size = check_voxel_size(voxel_size)
    if method not in METHODS:
        raise InvalidVolumeError(f"method must be one of {METHODS}; got {method!r}")
    check_stop(rtol, maxiter)

    # The conduction axis becomes axis 0 of the working arrays.
    moved = np.moveaxis(solid, axis, 0)
    vs = (voxel_size[axis], *(v for i, v in enumerate(voxel_size) if i != axis))
    n0, n1, n2 = moved.shape
    n_solid = int(np.count_nonzero(moved))
    density = n_solid / moved.size

    mask, n_active = _percolating_mask(moved)
    percolating = n_active / n_solid if n_solid else 0.0

    def finish(rel, iterations=0, residual=0.0, imbalance=0.0, used="none"):
        tau = density / rel if rel > 0 else math.inf
        return ConductivityResult(
            relative_conductivity=float(rel), tortuosity_factor=float(tau),
            relative_density=float(density), percolating_fraction=float(percolating),
            iterations=int(iterations), residual=float(residual),
            flux_imbalance=float(imbalance), method=used, axis=axis,
            seconds=time.perf_counter() - t0)

    if n_active == 0:
        why = ("the volume has no solid" if n_solid == 0 else
               f"no solid cluster touches both end faces along axis {axis}")
        warnings.warn(f"no conducting path: {why}; relative_conductivity 0, "
                      "tortuosity_factor inf", NoPathWarning, stacklevel=2)
        return finish(0.0)

    g = np.array([vs[1] * vs[2] / vs[0], vs[0] * vs[2] / vs[1], vs[0] * vs[1] / vs[2]])
    gb = 2.0 * g[0]
    scale = float(g.max())  # the solver sees conductances of order 1, whatever the unit
    if maxiter is None:
        maxiter = 20 * max(n0, n1, n2) + 1000 if method == "jacobi" else 500
    logger.info("conductivity: %s-preconditioned CG on %dx%dx%d voxels (%d conducting), axis %d",
                method, n0, n1, n2, n_active, axis)
    solver = {"mg": _solve_mg, "jacobi": _solve_jacobi, "amg": _solve_amg}[method]
    # BLAS threads (OpenBLAS spins after each call: the coarsest grid's SuperLU solve)
    # would steal the cores from numba's threads; one BLAS thread is all it needs.
    with threadpool_limits(limits=1, user_api="blas"):
        x_in, x_out, iterations, residual = solver(mask, g / scale, gb / scale, rtol, maxiter)
    i_in = gb * float(np.sum(1.0 - x_in[mask[1] != 0]))
    i_out = gb * float(np.sum(x_out[mask[-2] != 0]))
    del mask
    imbalance = abs(i_in - i_out) / i_in if i_in > 0 else 0.0
    if residual > rtol:
        warnings.warn(f"conductivity solve stopped at maxiter={maxiter} with relative residual "
                      f"{residual:.2e} > rtol={rtol:g}; raise maxiter", NotConvergedWarning,
                      stacklevel=2)
    # Unit potential difference: σ_eff/σ_bulk = I · L / A.
    rel = i_in * (n0 * vs[0]) / (n1 * vs[1] * n2 * vs[2])
    logger.info("conductivity: %d iterations, residual %.1e, flux imbalance %.1e, σ_rel %.6g",
                iterations, residual, imbalance, rel)
    return finish(rel, iterations, residual, imbalance, method)


def _percolating_mask(moved: np.ndarray) -> tuple[np.ndarray, int]:
    """The solid connected to both end faces along axis 0, as a uint8 array with a
    one-voxel frame of zeros, cropped laterally to the bounding box of that solid (the
    cross-section used for σ_eff stays the full one)."""
    labels, n = ndimage.label(moved)
    if n == 0:
        return np.zeros((0, 0, 0), np.uint8), 0
    both = np.intersect1d(labels[0], labels[-1])
    both = both[both > 0]
    if both.size == 0:
        return np.zeros((0, 0, 0), np.uint8), 0
    keep = np.zeros(n + 1, dtype=np.uint8)
    keep[both] = 1
    active = keep[labels]
    del labels
    j = np.flatnonzero(active.any(axis=(0, 2)))
    i = np.flatnonzero(active.any(axis=(0, 1)))
    core = active[:, j[0]:j[-1] + 1, i[0]:i[-1] + 1]
    mask = np.zeros((core.shape[0] + 2, core.shape[1] + 2, core.shape[2] + 2), np.uint8)
    mask[1:-1, 1:-1, 1:-1] = core
    return mask, int(np.count_nonzero(core))


# --------------------------------------------------------------------------- numba: fine grid
# The fine operator is implicit: faces between active neighbours of `m` (uint8, framed
# by zeros, or by a neighbouring block's cells) along axis a have conductance g[a];
# cells in layers `lo` and `hi` along axis 0 (the volume's first and last, 1 and n0 for
# a whole volume, -1 where a block holds neither) have the Dirichlet conductance gb
# besides. Every vector is zero outside the active cells, so a stencil may read a
# neighbour without testing it.
@njit(cache=True, nogil=True)
def _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi):
    d = (g0 * (m[k - 1, j, i] + m[k + 1, j, i]) + g1 * (m[k, j - 1, i] + m[k, j + 1, i])
         + g2 * (m[k, j, i - 1] + m[k, j, i + 1]))
    if k == lo:
        d += gb
    if k == hi:
        d += gb
    return d


@njit(cache=True, nogil=True)
def _fine_offdiag(v, k, j, i, g0, g1, g2):
    return (g0 * (v[k - 1, j, i] + v[k + 1, j, i]) + g1 * (v[k, j - 1, i] + v[k, j + 1, i])
            + g2 * (v[k, j, i - 1] + v[k, j, i + 1]))


@njit(cache=True, nogil=True, parallel=True)
def _fine_pap(m, p, g0, g1, g2, gb, lo, hi):
    """Σ p·(A p)."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    total = 0.0
    for k in prange(1, n0 + 1):
        s = 0.0
        for j in range(1, n1 + 1):
            for i in range(1, n2 + 1):
                if m[k, j, i]:
                    d = _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                    s += p[k, j, i] * (d * p[k, j, i] - _fine_offdiag(p, k, j, i, g0, g1, g2))
        total += s
    return total


@njit(cache=True, nogil=True, parallel=True)
def _fine_update_r(m, p, r, alpha, g0, g1, g2, gb, lo, hi, jacobi):
    """r -= alpha · A p; return Σ r² and (for Jacobi) Σ r²/d."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    rr = 0.0
    rz = 0.0
    for k in prange(1, n0 + 1):
        s = 0.0
        t = 0.0
        for j in range(1, n1 + 1):
            for i in range(1, n2 + 1):
                if m[k, j, i]:
                    d = _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                    v = r[k, j, i] - alpha * (d * p[k, j, i] - _fine_offdiag(p, k, j, i, g0, g1, g2))
                    r[k, j, i] = v
                    s += v * v
                    if jacobi:
                        t += v * v / d
        rr += s
        rz += t
    return rr, rz


@njit(cache=True, nogil=True, parallel=True)
def _fine_jacobi_p(m, r, p, beta, g0, g1, g2, gb, lo, hi):
    """p = r / diag + beta · p."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    for k in prange(1, n0 + 1):
        for j in range(1, n1 + 1):
            for i in range(1, n2 + 1):
                if m[k, j, i]:
                    d = _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                    p[k, j, i] = r[k, j, i] / d + beta * p[k, j, i]


@njit(cache=True, nogil=True, parallel=True)
def _fine_smooth(m, b, x, g0, g1, g2, gb, lo, hi, color, first):
    """One Gauss-Seidel half-sweep over the cells of `color` ((k+j+i) % 2) of
    A x = b. With `first`, x is taken as zero and its other colour is zeroed."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    for k in prange(1, n0 + 1):
        for j in range(1, n1 + 1):
            i0 = 1 + ((k + j + 1 + color) & 1)
            if first:
                for i in range(1, n2 + 1):
                    x[k, j, i] = 0.0
                for i in range(i0, n2 + 1, 2):
                    if m[k, j, i]:
                        x[k, j, i] = b[k, j, i] / _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
            else:
                for i in range(i0, n2 + 1, 2):
                    if m[k, j, i]:
                        d = _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                        x[k, j, i] = (b[k, j, i] + _fine_offdiag(x, k, j, i, g0, g1, g2)) / d


@njit(cache=True, nogil=True, parallel=True)
def _fine_restrict(m, b, x, g0, g1, g2, gb, lo, hi, out, f0, f1, f2, every):
    """out[I] = Σ over the aggregate I (f0 x f1 x f2 cells) of the residual b − A x.
    Right after a half-sweep over colour 1 the residual is zero on colour 1, and only
    the cells of colour 0 are visited; with `every`, all cells are (a block whose
    neighbours' values in the frame changed since its sweep)."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    step = 1 if every else 2
    for kk in prange(1, out.shape[0] - 1):
        out[kk, :, :] = 0.0
        for k in range(f0 * (kk - 1) + 1, min(f0 * kk, n0) + 1):
            for j in range(1, n1 + 1):
                jj = (j + f1 - 1) // f1
                for i in range(1 if every else 2 - ((k + j) & 1), n2 + 1, step):
                    if m[k, j, i]:
                        d = _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                        out[kk, jj, (i + f2 - 1) // f2] += (b[k, j, i] - d * x[k, j, i]
                                                      + _fine_offdiag(x, k, j, i, g0, g1, g2))


@njit(cache=True, nogil=True, parallel=True)
def _fine_coarsen(m, g0, g1, g2, gb, lo, hi, c0, c1, c2, diag, f0, f1, f2):
    """Galerkin coarse operator (piecewise-constant interpolation over aggregates of
    f0 x f1 x f2 cells, each factor 1 or 2) of the fine operator: face conductances
    summed across aggregate faces; the diagonal is the fine diagonals summed minus
    twice the inner faces."""
    n0, n1, n2 = m.shape[0] - 2, m.shape[1] - 2, m.shape[2] - 2
    a0, a1, a2 = diag.shape[0] - 2, diag.shape[1] - 2, diag.shape[2] - 2
    for kk in prange(1, a0 + 1):
        for jj in range(1, a1 + 1):
            for ii in range(1, a2 + 1):
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                sd = 0.0
                for k in range(f0 * (kk - 1) + 1, min(f0 * kk, n0) + 1):
                    for j in range(f1 * (jj - 1) + 1, min(f1 * jj, n1) + 1):
                        for i in range(f2 * (ii - 1) + 1, min(f2 * ii, n2) + 1):
                            if m[k, j, i] == 0:
                                continue
                            sd += _fine_diag(m, k, j, i, g0, g1, g2, gb, lo, hi)
                            if m[k + 1, j, i]:
                                if f0 == 2 and k & 1:
                                    sd -= 2.0 * g0
                                else:
                                    s0 += g0
                            if m[k, j + 1, i]:
                                if f1 == 2 and j & 1:
                                    sd -= 2.0 * g1
                                else:
                                    s1 += g1
                            if m[k, j, i + 1]:
                                if f2 == 2 and i & 1:
                                    sd -= 2.0 * g2
                                else:
                                    s2 += g2
                c0[kk, jj, ii] = s0
                c1[kk, jj, ii] = s1
                c2[kk, jj, ii] = s2
                diag[kk, jj, ii] = sd


# --------------------------------------------------------------------------- numba: coarse grids
# Coarse operators are explicit: c_a[I] is the conductance between I and I + e_a, and
# diag holds the diagonal (Dirichlet terms included); cells with diag 0 are inactive.
@njit(cache=True, nogil=True)
def _coarse_offdiag(c0, c1, c2, v, k, j, i):
    return (c0[k - 1, j, i] * v[k - 1, j, i] + c0[k, j, i] * v[k + 1, j, i]
            + c1[k, j - 1, i] * v[k, j - 1, i] + c1[k, j, i] * v[k, j + 1, i]
            + c2[k, j, i - 1] * v[k, j, i - 1] + c2[k, j, i] * v[k, j, i + 1])


@njit(cache=True, nogil=True, parallel=True)
def _coarse_smooth(c0, c1, c2, diag, b, x, color, first):
    n0, n1, n2 = diag.shape[0] - 2, diag.shape[1] - 2, diag.shape[2] - 2
    for k in prange(1, n0 + 1):
        for j in range(1, n1 + 1):
            i0 = 1 + ((k + j + 1 + color) & 1)
            if first:
                for i in range(1, n2 + 1):
                    x[k, j, i] = 0.0
                for i in range(i0, n2 + 1, 2):
                    if diag[k, j, i] > 0.0:
                        x[k, j, i] = b[k, j, i] / diag[k, j, i]
            else:
                for i in range(i0, n2 + 1, 2):
                    if diag[k, j, i] > 0.0:
                        x[k, j, i] = (b[k, j, i] + _coarse_offdiag(c0, c1, c2, x, k, j, i)) / diag[k, j, i]


@njit(cache=True, nogil=True, parallel=True)
def _coarse_restrict(c0, c1, c2, diag, b, x, out, f0, f1, f2, every):
    """As :func:`_fine_restrict`, on a coarse level."""
    n0, n1, n2 = diag.shape[0] - 2, diag.shape[1] - 2, diag.shape[2] - 2
    step = 1 if every else 2
    for kk in prange(1, out.shape[0] - 1):
        out[kk, :, :] = 0.0
        for k in range(f0 * (kk - 1) + 1, min(f0 * kk, n0) + 1):
            for j in range(1, n1 + 1):
                jj = (j + f1 - 1) // f1
                for i in range(1 if every else 2 - ((k + j) & 1), n2 + 1, step):
                    if diag[k, j, i] > 0.0:
                        out[kk, jj, (i + f2 - 1) // f2] += (b[k, j, i] - diag[k, j, i] * x[k, j, i]
                                                      + _coarse_offdiag(c0, c1, c2, x, k, j, i))


@njit(cache=True, nogil=True, parallel=True)
def _coarse_coarsen(c0, c1, c2, diag, o0, o1, o2, odiag, f0, f1, f2):
    n0, n1, n2 = diag.shape[0] - 2, diag.shape[1] - 2, diag.shape[2] - 2
    a0, a1, a2 = odiag.shape[0] - 2, odiag.shape[1] - 2, odiag.shape[2] - 2
    for kk in prange(1, a0 + 1):
        for jj in range(1, a1 + 1):
            for ii in range(1, a2 + 1):
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                sd = 0.0
                for k in range(f0 * (kk - 1) + 1, min(f0 * kk, n0) + 1):
                    for j in range(f1 * (jj - 1) + 1, min(f1 * jj, n1) + 1):
                        for i in range(f2 * (ii - 1) + 1, min(f2 * ii, n2) + 1):
                            sd += diag[k, j, i]
                            if f0 == 2 and k & 1:
                                sd -= 2.0 * c0[k, j, i]
                            else:
                                s0 += c0[k, j, i]
                            if f1 == 2 and j & 1:
                                sd -= 2.0 * c1[k, j, i]
                            else:
                                s1 += c1[k, j, i]
                            if f2 == 2 and i & 1:
                                sd -= 2.0 * c2[k, j, i]
                            else:
                                s2 += c2[k, j, i]
                o0[kk, jj, ii] = s0
                o1[kk, jj, ii] = s1
                o2[kk, jj, ii] = s2
                # Rounding may leave a tiny positive diagonal where no cell is active.
                odiag[kk, jj, ii] = sd if sd > 1e-12 * (s0 + s1 + s2 + 1.0) else 0.0


@njit(cache=True, nogil=True, parallel=True)
def _prolong_add(x, e, fine_mask, coarse_diag, scale, f0, f1, f2):
    """x += scale · e on the active cells (fine_mask != 0, or coarse_diag > 0 when
    fine_mask is empty), e piecewise constant over aggregates of f0 x f1 x f2."""
    n0, n1, n2 = x.shape[0] - 2, x.shape[1] - 2, x.shape[2] - 2
    use_mask = fine_mask.shape[0] > 0
    for k in prange(1, n0 + 1):
        kk = (k + f0 - 1) // f0
        for j in range(1, n1 + 1):
            jj = (j + f1 - 1) // f1
            for i in range(1, n2 + 1):
                active = fine_mask[k, j, i] != 0 if use_mask else coarse_diag[k, j, i] > 0.0
                if active:
                    x[k, j, i] += scale * e[kk, jj, (i + f2 - 1) // f2]


@njit(cache=True, nogil=True, parallel=True)
def _dot(a, b):
    total = 0.0
    for k in prange(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            for i in range(a.shape[2]):
                s += a[k, j, i] * b[k, j, i]
        total += s
    return total


@njit(cache=True, nogil=True, parallel=True)
def _xpby(x, p, beta):
    """p = x + beta · p."""
    for k in prange(p.shape[0]):
        for j in range(p.shape[1]):
            for i in range(p.shape[2]):
                p[k, j, i] = x[k, j, i] + beta * p[k, j, i]


# --------------------------------------------------------------------------- multigrid
def _coarsening(shape, strength):
    """Aggregation factors (1 or 2 per axis) for the next level: halve the axes whose
    coupling is at least _STRONG times the strongest (semi-coarsening keeps point
    smoothing effective on strongly anisotropic voxels), never an axis of length 1."""
    top = max(strength)
    return tuple(2 if n > 3 and c >= _STRONG * top else 1 for n, c in zip(shape, strength))


def plan_levels(shape, g, coarsest=_COARSEST_CELLS):
    """The multigrid's levels for a grid of `shape` cells with face conductances `g`:
    the aggregation factors from each level to the next, and every level's shape
    (the fine grid's first). Blocks of a decomposed grid follow the same plan."""
    shapes, factors = [tuple(int(n) for n in shape)], []
    strength = [float(v) for v in g]  # a coarse face sums the fine faces it covers
    while math.prod(shapes[-1]) > coarsest:
        f = _coarsening(tuple(n + 2 for n in shapes[-1]), strength)
        if f == (1, 1, 1):
            break
        factors.append(f)
        shapes.append(tuple(-(-n // k) for n, k in zip(shapes[-1], f)))
        strength = [c * math.prod(f) / k for c, k in zip(strength, f)]
    return factors, shapes


class _Multigrid:
    """A symmetric V-cycle M ≈ A⁻¹ of the framed fine operator (used as a CG
    preconditioner): red-black Gauss-Seidel pre-smoothing (red, black), restriction of
    the residual, recursion, prolongation, post-smoothing in the reverse order (black,
    red), a sparse direct solve on the coarsest grid."""

    def __init__(self, mask, g, gb, sweeps=_FINE_SWEEPS, coarse_sweeps=_COARSE_SWEEPS,
                 weight=_WEIGHT):
        self.sweeps = sweeps
        self.coarse_sweeps = coarse_sweeps
        self.weight = weight
        self.mask = mask
        self.g = tuple(float(v) for v in g)
        self.gb = float(gb)
        self.levels = []   # (c0, c1, c2, diag, b, x) per coarse level
        self.factors, _ = plan_levels([n - 2 for n in mask.shape], self.g)
        lo, hi = 1, mask.shape[0] - 2
        for f in self.factors:
            ops = (coarse_operator(self.levels[-1][:4], f) if self.levels else
                   coarse_operator(mask, f, (self.g, self.gb, lo, hi)))
            self.levels.append((*ops, np.zeros(ops[3].shape), np.zeros(ops[3].shape)))
        self._factor_coarsest()

    @classmethod
    def from_operator(cls, ops, factors, coarse_sweeps=_COARSE_SWEEPS, weight=_WEIGHT):
        """The V-cycle of the rest of a hierarchy, from an explicit level `ops`
        ((c0, c1, c2, diag), framed by zeros) down with the given `factors`."""
        self = cls.__new__(cls)
        self.coarse_sweeps, self.weight, self.mask = coarse_sweeps, weight, None
        self.levels = [(*ops, np.zeros(ops[3].shape), np.zeros(ops[3].shape))]
        self.factors = [(1, 1, 1), *factors]
        for f in factors:
            nxt = coarse_operator(self.levels[-1][:4], f)
            self.levels.append((*nxt, np.zeros(nxt[3].shape), np.zeros(nxt[3].shape)))
        self._factor_coarsest()
        return self

    def solve(self, b):
        """x = M b on the top explicit level (of :meth:`from_operator`), framed."""
        self.levels[0][4][...] = b
        self._cycle(0)
        return self.levels[0][5].copy()

    def __getstate__(self):  # SuperLU does not pickle: factor again where unpickled
        return {k: v for k, v in self.__dict__.items() if k != "coarsest"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._factor_coarsest()

    def _factor_coarsest(self):
        from scipy.sparse.linalg import splu

        if self.levels:
            c0, c1, c2, diag = self.levels[-1][:4]
        else:  # a small problem: the fine operator itself
            c0, c1, c2, diag = _explicit_fine(self.mask, self.g, self.gb)
        matrix, active = _assemble(c0, c1, c2, diag)
        self.coarsest = (active, splu(matrix.tocsc()))

    def _direct(self, b, x):
        active, lu = self.coarsest
        x[...] = 0.0
        x[active] = lu.solve(b[active])

    def apply(self, r, z):
        """z = M r."""
        if not self.levels:
            self._direct(r, z)
            return
        m, (g0, g1, g2), gb = self.mask, self.g, self.gb
        hi = m.shape[0] - 2
        for s in range(self.sweeps):
            _fine_smooth(m, r, z, g0, g1, g2, gb, 1, hi, 0, s == 0)
            _fine_smooth(m, r, z, g0, g1, g2, gb, 1, hi, 1, False)
        f = self.factors[0]
        _fine_restrict(m, r, z, g0, g1, g2, gb, 1, hi, self.levels[0][4], *f, False)
        self._cycle(0)
        _prolong_add(z, self.levels[0][5], m, np.zeros((1, 1, 1)), self.weight, *f)
        for _ in range(self.sweeps):
            _fine_smooth(m, r, z, g0, g1, g2, gb, 1, hi, 1, False)
            _fine_smooth(m, r, z, g0, g1, g2, gb, 1, hi, 0, False)

    def _cycle(self, level):
        c0, c1, c2, diag, b, x = self.levels[level]
        if level == len(self.levels) - 1:
            self._direct(b, x)
            return
        for s in range(self.coarse_sweeps):
            _coarse_smooth(c0, c1, c2, diag, b, x, 0, s == 0)
            _coarse_smooth(c0, c1, c2, diag, b, x, 1, False)
        nxt, f = self.levels[level + 1], self.factors[level + 1]
        _coarse_restrict(c0, c1, c2, diag, b, x, nxt[4], *f, False)
        self._cycle(level + 1)
        _prolong_add(x, nxt[5], np.zeros((0, 0, 0), np.uint8), diag, self.weight, *f)
        for _ in range(self.coarse_sweeps):
            _coarse_smooth(c0, c1, c2, diag, b, x, 1, False)
            _coarse_smooth(c0, c1, c2, diag, b, x, 0, False)

    @property
    def nbytes(self):
        return sum(a.nbytes for lev in self.levels for a in lev)


def coarse_operator(above, f, fine=None):
    """The Galerkin operator (c0, c1, c2, diag), framed, of the level below `above`
    aggregated by `f`: `above` is a fine mask, with ``fine = (g, gb, lo, hi)``, or a
    coarse level's (c0, c1, c2, diag). Only interior cells are read, so a block's
    operator needs its neighbours' cells in the mask's frame and nothing else."""
    shape = (above if fine else above[3]).shape
    cshape = tuple((n - 2 + k - 1) // k + 2 for n, k in zip(shape, f))
    c0, c1, c2, diag = (np.zeros(cshape) for _ in range(4))
    if fine:
        (g0, g1, g2), gb, lo, hi = fine[0], fine[1], fine[2], fine[3]
        _fine_coarsen(above, g0, g1, g2, gb, lo, hi, c0, c1, c2, diag, *f)
    else:
        _coarse_coarsen(*above, c0, c1, c2, diag, *f)
    return c0, c1, c2, diag


def _explicit_fine(mask, g, gb):
    """The fine operator as explicit face conductances and diagonal (small grids)."""
    m = mask.astype(np.float64)
    c = [np.zeros(m.shape) for _ in range(3)]
    for a in range(3):
        c[a] = g[a] * m * np.roll(m, -1, axis=a)
    diag = sum(c[a] + np.roll(c[a], 1, axis=a) for a in range(3))
    diag[1] += gb * m[1]
    diag[-2] += gb * m[-2]
    return c[0], c[1], c[2], diag * (m > 0)


def _assemble(c0, c1, c2, diag):
    """The operator given by face conductances and diagonal as a CSR matrix over its
    active cells (diag > 0, in C order), and the mask of those cells."""
    import scipy.sparse as sp

    active = diag > 0
    index = np.full(diag.shape, -1, dtype=np.int64)
    n = int(active.sum())
    index[active] = np.arange(n)
    rows, cols, vals = [index[active]], [index[active]], [diag[active]]
    for a, c in enumerate((c0, c1, c2)):
        nb = np.roll(index, -1, axis=a)
        sel = active & (c != 0) & (nb >= 0)
        for r_, c_ in ((index[sel], nb[sel]), (nb[sel], index[sel])):
            rows.append(r_)
            cols.append(c_)
            vals.append(-c[sel])
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n, n))
    return matrix, active


# --------------------------------------------------------------------------- solvers
def _rhs(mask, gb):
    b = np.zeros(mask.shape)
    b[1] = gb * mask[1]
    return b


def _solve_mg(mask, g, gb, rtol, maxiter):
    """CG preconditioned by a multigrid V-cycle. Returns the potential on the first
    and last layers, the iteration count and the final relative residual."""
    g0, g1, g2 = (float(v) for v in g)
    r = _rhs(mask, gb)
    bnorm = math.sqrt(_dot(r, r))
    mg = _Multigrid(mask, g, gb)
    logger.debug("conductivity: multigrid with %d coarse levels, %.0f MiB",
                 len(mg.levels), mg.nbytes / 2**20)
    z = np.zeros_like(r)  # the frame must stay zero: stencils read it
    mg.apply(r, z)
    p = z.copy()
    rz = _dot(r, z)
    x_in = np.zeros(mask.shape[1:])
    x_out = np.zeros(mask.shape[1:])
    last = mask.shape[0] - 2
    residual, it = 1.0, 0
    while it < maxiter:
        it += 1
        alpha = rz / _fine_pap(mask, p, g0, g1, g2, gb, 1, last)
        x_in += alpha * p[1]
        x_out += alpha * p[last]
        rr, _ = _fine_update_r(mask, p, r, alpha, g0, g1, g2, gb, 1, last, False)
        residual = math.sqrt(rr) / bnorm
        if residual <= rtol:
            break
        mg.apply(r, z)
        rz_new = _dot(r, z)
        _xpby(z, p, rz_new / rz)
        rz = rz_new
    return x_in, x_out, it, residual


def _solve_jacobi(mask, g, gb, rtol, maxiter):
    """CG preconditioned by the diagonal, fully matrix-free (two float64 arrays)."""
    g0, g1, g2 = (float(v) for v in g)
    r = _rhs(mask, gb)
    bnorm = math.sqrt(_dot(r, r))
    p = np.zeros_like(r)
    last = mask.shape[0] - 2
    _fine_jacobi_p(mask, r, p, 0.0, g0, g1, g2, gb, 1, last)
    rz = _dot(r, p)
    x_in = np.zeros(mask.shape[1:])
    x_out = np.zeros(mask.shape[1:])
    residual, it = 1.0, 0
    while it < maxiter:
        it += 1
        alpha = rz / _fine_pap(mask, p, g0, g1, g2, gb, 1, last)
        x_in += alpha * p[1]
        x_out += alpha * p[last]
        rr, rz_new = _fine_update_r(mask, p, r, alpha, g0, g1, g2, gb, 1, last, True)
        residual = math.sqrt(rr) / bnorm
        if residual <= rtol:
            break
        _fine_jacobi_p(mask, r, p, rz_new / rz, g0, g1, g2, gb, 1, last)
        rz = rz_new
    return x_in, x_out, it, residual


def _solve_amg(mask, g, gb, rtol, maxiter):
    """Assembled sparse matrix, CG with a pyamg smoothed-aggregation preconditioner."""
    try:
        import pyamg
    except ImportError as err:
        raise InvalidVolumeError("method='amg' needs pyamg; `pip install pyamg` or use "
                                 "method='mg'") from err
    from scipy.sparse.linalg import cg

    matrix, active = _assemble(*_explicit_fine(mask, g, gb))
    b = _rhs(mask, gb)[active]
    ml = pyamg.smoothed_aggregation_solver(matrix, symmetry="symmetric")
    count = [0]

    def callback(_xk):
        count[0] += 1

    x, _info = cg(matrix, b, rtol=rtol, atol=0.0, maxiter=maxiter, M=ml.aspreconditioner(),
                  callback=callback)
    residual = float(np.linalg.norm(b - matrix @ x) / np.linalg.norm(b))
    full = np.zeros(mask.shape)
    full[active] = x
    last = mask.shape[0] - 2
    return full[1], full[last], count[0], residual


__all__ = ["BYTES_PER_VOXEL", "METHODS", "ConductivityResult", "NoPathWarning",
           "NotConvergedWarning", "check_axis", "check_stop", "effective_conductivity", "memory_estimate",
           "plan_levels"]
