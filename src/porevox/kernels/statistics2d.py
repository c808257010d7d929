"""Statistical descriptors of a segmented 2-D image: the two-point correlation S2 and
chord-length distributions (evidence beside D, SP2D and the shape index when real
and generated microstructures are compared).

Two-point correlation
    ``S2(d) = P(x ∈ solid and x + d ∈ solid)`` over all pairs that lie inside the
    image (no periodic wrap): the zero-padded FFT autocorrelation of the indicator
    divided by that of the image's support, which counts the pairs at each lag.
    :func:`two_point_correlation` averages it over lags of the same length (rounded
    to whole pixels of the smaller pixel size): S2(0) = D and S2 → D² for an
    uncorrelated structure far out.

Chord lengths
    The runs of one phase along the image rows (x) and columns (y). A run that
    touches the image edge is cut off there, so it is left out (its length is only
    a lower bound).
"""

from __future__ import annotations

import numpy as np

from ._checks import check_voxel_size
from .integral import _check_solid


def _autocorrelation(a: np.ndarray) -> np.ndarray:
    shape = [2 * n for n in a.shape]
    f = np.fft.rfft2(a, shape)
    return np.fft.irfft2(f * np.conj(f), shape)


def two_point_correlation(image, *, pixel_size=(1.0, 1.0), max_distance: float | None = None):
    """The radially averaged two-point correlation of the solid phase.

    Parameters
    ----------
    image : (M, N) ndarray of bool or integers
        Nonzero = solid.
    pixel_size : 2 floats
        Size along (y, x).
    max_distance : float, optional
        Largest distance, in the unit of `pixel_size` (default: half the smaller side).

    Returns
    -------
    r : 1-D ndarray
        Distances, one per whole pixel of the smaller pixel size, from 0.
    s2 : 1-D ndarray
        S2 at those distances (the mean over the lags that round to them, weighted by
        their pair counts).
    """
    s = _check_solid(image, name="image", ndim=2).astype(np.float64)
    py, px = check_voxel_size(pixel_size, n=2, name="pixel_size")
    ny, nx = s.shape
    step = min(py, px)
    max_distance = 0.5 * min(ny * py, nx * px) if max_distance is None else float(max_distance)
    pairs = _autocorrelation(s)
    support = _autocorrelation(np.ones_like(s))
    dy = np.fft.fftfreq(2 * ny, 1 / (2 * ny))[:, None] * py
    dx = np.fft.fftfreq(2 * nx, 1 / (2 * nx))[None, :] * px
    dist = np.hypot(dy, dx)
    inside = (support > 0.5) & (dist <= max_distance + 0.5 * step)
    bins = np.rint(dist[inside] / step).astype(np.int64)
    num = np.bincount(bins, weights=pairs[inside])
    den = np.bincount(bins, weights=support[inside])
    keep = den > 0
    return np.flatnonzero(keep) * step, num[keep] / den[keep]


def _runs(line: np.ndarray, phase: bool) -> np.ndarray:
    """Lengths of the runs of `phase` in a 1-D boolean array that touch neither end."""
    x = np.r_[False, line == phase, False].astype(np.int8)
    d = np.diff(x)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    interior = (starts > 0) & (ends < line.size)
    return (ends - starts)[interior]


def chord_lengths(image, *, phase: int = 1, pixel_size=(1.0, 1.0)) -> dict:
    """Chord lengths of `phase` (1 solid, 0 pore) along x (rows) and y (columns).

    Returns
    -------
    dict with ``"x"`` and ``"y"``: 1-D float arrays of chord lengths in the unit of
    `pixel_size`, runs cut by the image edge left out.
    """
    s = _check_solid(image, name="image", ndim=2)
    py, px = check_voxel_size(pixel_size, n=2, name="pixel_size")
    if phase not in (0, 1):
        raise ValueError(f"phase must be 1 (solid) or 0 (pore); got {phase!r}")
    want = bool(phase)
    along_x = np.concatenate([_runs(row, want) for row in s]) if s.shape[0] else np.empty(0)
    along_y = np.concatenate([_runs(col, want) for col in s.T]) if s.shape[1] else np.empty(0)
    return {"x": along_x.astype(np.float64) * px, "y": along_y.astype(np.float64) * py}


__all__ = ["chord_lengths", "two_point_correlation"]
