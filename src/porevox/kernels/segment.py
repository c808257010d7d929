"""Thresholds from a gray-value histogram, and the paper's hybrid annotation of slices.

All thresholds follow scikit-image's convention: gray values *above* the threshold
are copper (foreground), values at or below it are pore.

The hybrid rule (Wijaya et al. 2024, "threshold at the first peak of the second
derivative of the gray-value histogram"), made exact here:

1. smooth the histogram with a Gaussian of `smooth` × the gray-value span
   (0.1–99.9 % percentiles), and take its second derivative (a Gaussian
   derivative of the same width);
2. the copper mode is the highest point of the smoothed histogram above the Otsu
   threshold;
3. the threshold is where the second derivative peaks between the Otsu threshold
   and the copper mode (its largest positive value there): the lower *foot* of
   the copper peak — for a Gaussian peak of width σ, smoothed by σs, at
   mode − √3·sqrt(σ² + σs²). Gray values between the Otsu threshold and it —
   shine-through, dimmer than copper but brighter than empty pore — fall on the
   pore side. (The largest value, not the nearest local maximum: the second
   derivative of a counted histogram ripples, and the largest peak is stable.)
4. if there is no such maximum between the Otsu threshold and the copper mode (a
   histogram without a resolved copper peak), the Otsu threshold is used, and the
   result says so (``fallback``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: The SLIC kernel used by default: the numba port (labels identical to
#: scikit-image's, ~3.8x faster on one thread; ``benchmarks/slic_suite.py``).
SLIC_METHOD = "numba"

#: Classes of the hybrid annotation (the paper's): copper, pore by the threshold,
#: shine-through (pore by the hybrid rule, copper by the global threshold).
COPPER, PORE, SHINE = 0, 1, 2


def _trim(counts: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The histogram between its first and last non-empty bin."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        raise ValueError("the histogram is empty: the image has no voxels")
    return counts[nz[0]:nz[-1] + 1], centers[nz[0]:nz[-1] + 1]


def centers_of(edges: np.ndarray) -> np.ndarray:
    """Bin centres of histogram `edges`; integer gray values for unit-width bins
    starting at integers (the engine's uint8/uint16 histograms)."""
    edges = np.asarray(edges, dtype=np.float64)
    if np.all(np.diff(edges) == 1.0) and edges[0] == np.floor(edges[0]):
        return edges[:-1].copy()
    return (edges[:-1] + edges[1:]) / 2


def otsu_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold from a histogram — equal to ``skimage.filters.threshold_otsu``
    of the image the histogram was counted from (for integer images, exactly)."""
    from skimage.filters import threshold_otsu

    counts, centers = _trim(np.asarray(counts), centers_of(edges))
    if counts.size == 1:
        return float(centers[0])
    return float(threshold_otsu(hist=(counts.astype(np.float64), centers)))


def percentile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The `q` % percentile of the histogram (lower edge of the bin reaching it)."""
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
    return float(centers_of(edges)[min(i, len(counts) - 1)])


def hybrid_threshold(counts: np.ndarray, edges: np.ndarray, *, smooth: float = 0.03) -> dict:
    """The hybrid rule's threshold (see the module docstring) from a histogram.

    Returns a dict: ``threshold``, ``otsu``, ``copper_mode``, ``pore_mode``,
    ``sigma`` (gray values), ``fallback`` (True where Otsu's threshold was used).
    """
    if not 0 < smooth < 0.5:
        raise ValueError(f"smooth must be a fraction of the gray-value span in (0, 0.5); got {smooth}")
    counts = np.asarray(counts, dtype=np.float64)
    centers = centers_of(edges)
    otsu = otsu_threshold(counts, edges)
    width = float(np.mean(np.diff(np.asarray(edges, dtype=np.float64))))
    span = percentile(counts, edges, 99.9) - percentile(counts, edges, 0.1)
    sigma_bins = max(smooth * span / width, 1.0)
    h = ndi.gaussian_filter1d(counts, sigma_bins, mode="constant")
    d2 = ndi.gaussian_filter1d(counts, sigma_bins, order=2, mode="constant")
    above = np.flatnonzero(centers > otsu)
    below = np.flatnonzero(centers <= otsu)
    result = {"otsu": otsu, "sigma": sigma_bins * width, "fallback": True, "threshold": otsu,
              "copper_mode": float(centers[above[np.argmax(h[above])]]) if above.size else otsu,
              "pore_mode": float(centers[below[np.argmax(h[below])]]) if below.size else otsu}
    if not above.size:
        return result
    mode = int(above[np.argmax(h[above])])
    window = np.arange(int(above[0]), mode)
    if window.size:
        i = int(window[np.argmax(d2[window])])
        if d2[i] > 0 and 0 < i < len(d2) - 1 and d2[i] >= d2[i - 1] and d2[i] >= d2[i + 1]:
            result.update(threshold=float(centers[i]), fallback=False)
    return result


def classify(values: np.ndarray, otsu: float, hybrid: float) -> np.ndarray:
    """Hybrid annotation classes of gray values (or superpixel means)."""
    values = np.asarray(values)
    return np.where(values > hybrid, COPPER, np.where(values > otsu, SHINE, PORE)).astype(np.uint8)


def annotate(block: np.ndarray, *, otsu: float, hybrid: float, step: tuple[float, float],
             compactness: float = 0.2, method: str = SLIC_METHOD, max_num_iter: int = 10) -> np.ndarray:
    """The hybrid annotation of each slice of a ``(z, y, x)`` block of whole slices.

    Each slice is cut into SLIC superpixels on a grid of `step` pixels per axis
    (y, x) — :func:`porevox.kernels.slic.slic` (numba, the default) or
    scikit-image's (``method="skimage"``; a whole-pixel square grid), which rescale
    each slice to [0, 1] by its own range; each superpixel takes the class of its
    mean gray value (:func:`classify`). Slices are independent, so any split over z
    gives the same result.
    """
    from .slic import slic, slic_skimage

    if method not in ("numba", "skimage"):
        raise ValueError(f"SLIC method must be numba or skimage; got {method!r}")
    run = slic if method == "numba" else slic_skimage
    out = np.empty(block.shape, dtype=np.uint8)
    for z in range(block.shape[0]):
        gray = block[z].astype(np.float64)
        labels = run(gray, step=step, compactness=compactness, max_num_iter=max_num_iter).ravel()
        means = np.bincount(labels, gray.ravel()) / np.maximum(np.bincount(labels), 1)
        out[z] = classify(means, otsu, hybrid)[labels].reshape(gray.shape)
    return out


__all__ = ["COPPER", "PORE", "SHINE", "annotate", "centers_of", "classify", "hybrid_threshold",
           "otsu_threshold", "percentile", "SLIC_METHOD"]
