"""FIB-SEM preprocessing kernels: curtaining removal (an FFT stripe filter) and shading /
shadow correction by histogram shifting (Wijaya et al. 2024: "curtaining reduced with
an FFT filter; shadowing with histogram shifting").

Arrays are ``(z, y, x)``: z the milling (slice) direction, y the ion-beam direction
(sample surface to substrate), x across. Pure NumPy/SciPy; no Dask, no I/O.

Destriping (curtaining)
-----------------------
Curtains are stripes along y: constant down a slice, varying across x. In the
spectrum of a slice their energy lies on the ky ≈ 0 line. Each slice is transformed
with a 2-D DCT-II (the FFT of the slice mirrored at its four edges, so the filter sees
no wrap-around edges) and a stripe estimate is taken from that line:

* notch in ky: a Gaussian of standard deviation `band` (cycles/µm) around ky = 0;
  ``band=0`` (the default) keeps only the ky = 0 line (stripes as tall as the slice);
* high-pass in x: only stripes with periods up to `max_period` (µm) are curtaining;
  large-scale brightness is not. The weight is a Butterworth step
  ``1 / (1 + (kc / kx)**(2 n))`` in kx with ``kc = 1 / (√2 · max_period)`` and
  ``n = log2(19)``: periods ≤ `max_period` are removed by ≥ 95 %, periods ≥
  2 · `max_period` by ≤ 5 %;
* coherence along z: curtains are cut by the ion beam into many consecutive slices,
  while the structure changes from slice to slice. The notch line is averaged over
  neighbouring slices with a Gaussian of `z_sigma` µm (reflected at the first and
  last slice), which keeps the stripes and averages away the structure's own column
  means, which a single-slice filter cannot tell from a curtain. ``z_sigma=0``
  filters every slice on its own (the classic filter);
* adaptive (spectral subtraction, on by default): a kx component is removed with
  weight ``max(0, 1 − N / P)``, where P is the (z-averaged) power on the notch line
  and N the power that the structure puts at that kx on the next `n_reference`
  ky lines (both smoothed over ±1 kx bin). Where there is no stripe the filter
  leaves the slice alone.

The estimate is subtracted: ``destriped = image − stripes``. Since it needs whole
slices and a global pass along z, the engine computes it in two passes:
:func:`stripe_lines` per block of whole slices, :func:`stripe_spectrum` once on the
(small) line coefficients of all slices, :func:`remove_stripes` per block. Any split
over z gives exactly the whole-volume result of :func:`destripe`.

Shading / shadow correction (histogram shifting)
-----------------------------------------------
The volume is cut into a grid of ``regions = (nz, ny, nx)`` boxes (default
``(1, 6, 6)``: 6 × 6 in the slice plane, the whole depth; ``nz`` = the number of
slices aligns every slice on its own). Region *i* along an axis of length L spans
``[i·L // n, (i+1)·L // n)``; its centre is the mean of its first and last index.

1. the gray-value histogram of every region over the volume (:func:`region_histograms`
   per block, summed);
2. landmarks (:func:`shading_plan`, :func:`histogram_landmarks`), on histograms
   smoothed by a Gaussian of `smooth` × the volume's 0.1–99.9 % gray-value span:
   the region's Otsu threshold (of its raw counts); the *copper mode*, the
   brightest peak above the threshold with a prominence of at least 3 % of the
   highest bin there (in a very porous region the shine-through hump above the
   threshold can outgrow the copper peak; copper is the brightest phase); the
   *pore mode*, the highest peak at or below the threshold.
   A peak's position is the centroid of its top (the contiguous bins above 70 % of
   its height), steadier than the highest bin. Shine-through fills the pore side of
   a histogram with a broad shoulder whose bumps can outgrow the empty-pore peak, so
   a region's pore mode is searched within ±`window` × (copper − pore distance) of
   the whole volume's pore mode, both scaled by the region's copper mode over the
   volume's. A region is valid when it holds at least `min_count` voxels, either
   side of its threshold at least `min_fraction` of them, and copper > pore. (A
   region of one phase only cannot be told from a two-phase one by its histogram
   when shine-through fills the gap between the modes: make regions large enough to
   hold both phases — hundreds of struts at the default 6 × 6 on the paper's VOIs.);
3. corrections (:func:`shading_corrections`). The reference is the valid region
   with the brightest copper mode — the least shadowed one. ``method="shift"``
   (the classic histogram shift) adds the difference of the copper modes:
   ``offset = C_ref − C``, ``gain = 1``. ``method="linear"`` (default) maps each
   region's pore and copper landmarks onto the reference's: ``gain = (C_ref −
   P_ref) / (C − P)``, ``offset = C_ref − gain · C`` — exact for a multiplicative
   shading, which darkens pores less than copper. Single pore modes stay noisy
   (the pore side holds fewer, more varied voxels), so the pore landmarks used are
   those of the robust (Theil–Sen) line ``P = k · C + c`` through all valid regions'
   modes, k clipped to [0, 1] (:func:`pooled_pore_line`; k = 1 is an additive
   shading, k < 1 a multiplicative one about a black level). Invalid regions take the
   landmarks of their nearest valid region;
4. gains and offsets are interpolated between region centres — linearly along each
   axis, held flat beyond the outermost centres — to every voxel, and applied
   pointwise: ``out = gain · value + offset`` (:func:`apply_shading`), clipped and
   rounded (half to even) to an integer dtype.

Histogram bins (:func:`histogram_bins`): one bin per gray value for uint8; for uint16 and
floats, at most 2048 bins over the image's range (integer-wide for integers). A value
``v`` falls in bin ``floor((v − lo) / width + 0.5)``, clipped to the first or last bin:
bins are centred on ``lo + i · width``.
"""

from __future__ import annotations

import math
from numbers import Real

import numba
import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

#: Default parameters (the pipeline's and the CLI's defaults).
MAX_PERIOD = 1.0          # µm: stripes with shorter periods are curtaining
BAND = 0.0                # cycles/µm: Gaussian half-width of the ky notch (0: the ky = 0 line)
Z_SIGMA = 0.5             # µm: averaging of the stripe estimate along z
N_REFERENCE = 8           # ky lines beyond the notch that measure the structure's power
REGIONS = (1, 6, 6)       # shading grid (z, y, x)
METHOD = "linear"
METHODS = ("linear", "shift")
SMOOTH = 0.02             # histogram smoothing, fraction of the 0.1–99.9 % gray-value span
MIN_FRACTION = 0.05
WINDOW = 0.15             # pore-mode search window, fraction of the copper–pore distance
MIN_COUNT = 500
MAX_BINS = 2048
_BUTTERWORTH_N = math.log2(19.0)
_NOTCH_FLOOR = 0.01       # notch weights below this are outside the band


# --------------------------------------------------------------------------- checks
def _real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_destripe_params(max_period: float, band: float, z_sigma: float, n_reference: int) -> None:
    """Raise a one-line ValueError for unusable destriping parameters."""
    if not (_real(max_period) and max_period > 0):
        raise ValueError(f"max_period must be a positive length in µm; got {max_period!r}")
    if not (_real(band) and band >= 0):
        raise ValueError(f"band must be >= 0 cycles/µm (0: the ky = 0 line only); got {band!r}")
    if not (_real(z_sigma) and z_sigma >= 0):
        raise ValueError(f"z_sigma must be >= 0 µm (0: every slice on its own); got {z_sigma!r}")
    if not (_count(n_reference) and n_reference >= 1):
        raise ValueError(f"n_reference must be an integer >= 1; got {n_reference!r}")


def check_regions(regions, shape) -> tuple[int, int, int]:
    """`regions` as 3 counts (z, y, x), each between 1 and the axis length.

    An int n means ``(1, n, n)``, two ints ``(ny, nx)`` mean ``(1, ny, nx)``.
    """
    try:
        if isinstance(regions, (int, np.integer)):
            values = (1, int(regions), int(regions))
        else:
            values = tuple(int(r) for r in regions)
            if len(values) == 2:
                values = (1, *values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"regions must be an int or 2 or 3 ints (z, y, x); got {regions!r}") from err
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"regions must be an int or 2 or 3 positive ints (z, y, x); got {regions!r}")
    if any(r > n for r, n in zip(values, shape)):
        raise ValueError(f"regions {values} must not exceed the volume's shape {tuple(shape)} per axis")
    return values


def check_shading_params(method: str, smooth: float, window: float, min_fraction: float,
                         min_count: int) -> None:
    """Raise a one-line ValueError for unusable shading parameters."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if not (_real(smooth) and 0 <= smooth < 0.5):
        raise ValueError(f"smooth must be a fraction of the gray-value span in [0, 0.5); got {smooth!r}")
    if not (_real(window) and 0 < window <= 1):
        raise ValueError(f"window must be a fraction of the copper–pore distance in (0, 1]; got {window!r}")
    if not (_real(min_fraction) and 0 <= min_fraction < 0.5):
        raise ValueError(f"min_fraction must be in [0, 0.5); got {min_fraction!r}")
    if not (_count(min_count) and min_count >= 1):
        raise ValueError(f"min_count must be an integer >= 1; got {min_count!r}")


# --------------------------------------------------------------------------- destriping
def notch_weights(ny: int, vy: float, band: float) -> np.ndarray:
    """Weights of the ky lines in the notch: ``exp(−ky² / (2 band²))`` for the DCT
    lines ``ky = j / (2 · ny · vy)`` down to 1 %; ``[1.0]`` for ``band=0``."""
    if band <= 0:
        return np.ones(1)
    ky = np.arange(ny) / (2.0 * ny * vy)
    g = np.exp(-0.5 * (ky / band) ** 2)
    return g[: max(1, int(np.count_nonzero(g >= _NOTCH_FLOOR)))]


def highpass_weights(nx: int, vx: float, max_period: float) -> np.ndarray:
    """Butterworth step in kx (see the module docstring) for the DCT frequencies
    ``kx = k / (2 · nx · vx)``; 0 at kx = 0."""
    kx = np.arange(nx) / (2.0 * nx * vx)
    kc = 1.0 / (math.sqrt(2.0) * max_period)
    out = np.zeros(nx)
    pos = kx > 0
    out[pos] = 1.0 / (1.0 + (kc / kx[pos]) ** (2 * _BUTTERWORTH_N))
    return out


def stripe_lines(block: np.ndarray, *, voxel_size, band: float = BAND,
                 n_reference: int = N_REFERENCE) -> np.ndarray:
    """The low-ky DCT lines of every slice of a block of whole slices.

    Returns
    -------
    (z, L, x) float64: the DCT-II (orthonormal, over y then x) coefficients of the
    first ``L = notch lines + n_reference`` ky lines of each slice (fewer when a slice
    has fewer rows).
    """
    block = _check_block(block)
    nz, ny, nx = block.shape
    n_lines = min(ny, len(notch_weights(ny, voxel_size[1], band)) + n_reference)
    out = np.empty((nz, n_lines, nx), dtype=np.float64)
    for z in range(nz):   # slice by slice: the same arithmetic whatever the block holds
        col = sfft.dct(block[z].astype(np.float64), type=2, norm="ortho", axis=0)[:n_lines]
        out[z] = sfft.dct(col, type=2, norm="ortho", axis=1)
    return out


def stripe_spectrum(lines: np.ndarray, *, voxel_size, ny: int, max_period: float = MAX_PERIOD,
                    band: float = BAND, z_sigma: float = Z_SIGMA, adaptive: bool = True) -> np.ndarray:
    """The stripe estimate of every slice from :func:`stripe_lines` of *all* slices.

    Parameters
    ----------
    lines : (Z, L, X) float64
        :func:`stripe_lines` of the whole volume, in slice order.
    ny : int
        Rows per slice (sets the ky of each line).

    Returns
    -------
    (Z, B, X) float64: DCT coefficients of the stripes on the B notch lines.
    """
    check_destripe_params(max_period, band, z_sigma, 1)
    vz, vy, vx = (float(v) for v in voxel_size)
    g = notch_weights(ny, vy, band)
    n_band = len(g)
    hp = highpass_weights(lines.shape[2], vx, max_period)
    smooth = lines
    if z_sigma > 0 and lines.shape[0] > 1:
        smooth = ndi.gaussian_filter1d(lines, z_sigma / vz, axis=0, mode="reflect", truncate=4.0)
    notch = smooth[:, :n_band]
    weight = g[None, :, None] * hp[None, None, :]
    ref = smooth[:, n_band:]
    if adaptive and ref.shape[1]:
        noise = ndi.uniform_filter1d((ref**2).mean(axis=1), 3, axis=1, mode="reflect")[:, None, :]
        power = ndi.uniform_filter1d(notch**2, 3, axis=2, mode="reflect")
        weight = weight * np.clip(1.0 - noise / np.maximum(power, 1e-300), 0.0, 1.0)
    return notch * weight


def dct_basis(n: int, count: int) -> np.ndarray:
    """The first `count` orthonormal DCT-II basis vectors of length `n`, as rows."""
    y = np.arange(n, dtype=np.float64)
    j = np.arange(count, dtype=np.float64)[:, None]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * j * (2 * y + 1) / (2 * n))
    basis[0] = 1.0 / np.sqrt(n)
    return basis


def remove_stripes(block: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """`block` (whole slices) minus the stripes whose DCT coefficients `spectrum`
    ``(z, B, x)`` (the block's rows of :func:`stripe_spectrum`) holds. float32.

    The stripes of a slice are ``Σ_j basis_j(y) · idct_x(spectrum_j)(x)``: the inverse
    2-D DCT of coefficients that are zero beyond the B notch lines."""
    block = _check_block(block)
    nz, ny, nx = block.shape
    if spectrum.shape[0] != nz or spectrum.shape[2] != nx or spectrum.shape[1] > ny:
        raise ValueError(f"spectrum of shape {spectrum.shape} does not fit a block of shape {block.shape}")
    basis = dct_basis(ny, spectrum.shape[1])
    out = np.empty(block.shape, dtype=np.float32)
    for z in range(nz):
        profiles = sfft.idct(spectrum[z], type=2, norm="ortho", axis=1)
        stripes = basis[0][:, None] * profiles[0][None, :]
        for j in range(1, len(profiles)):
            stripes += basis[j][:, None] * profiles[j][None, :]
        out[z] = block[z] - stripes
    return out


def destripe(image: np.ndarray, *, voxel_size, max_period: float = MAX_PERIOD, band: float = BAND,
             z_sigma: float = Z_SIGMA, adaptive: bool = True, n_reference: int = N_REFERENCE
             ) -> np.ndarray:
    """Curtaining removed from a whole volume (see the module docstring).

    Parameters
    ----------
    image : (Z, Y, X) ndarray
        Whole slices; the first and last slice are the volume's. Not modified.
    voxel_size : 3 floats
        (z, y, x) in µm (the unit of `max_period`, `band` and `z_sigma`).
    max_period : float
        Stripes with periods up to this (µm) are removed (≥ 95 %); at twice it, ≤ 5 %.
    band : float
        Gaussian half-width (cycles/µm) of the notch around ky = 0; 0: the ky = 0 line.
    z_sigma : float
        Gaussian averaging of the stripe estimate along z (µm); 0: slice by slice.
    adaptive : bool
        Remove a kx component only as far as it stands above the structure's power.
    n_reference : int
        ky lines beyond the notch that measure the structure's power (adaptive).

    Returns
    -------
    (Z, Y, X) float32 ndarray.
    """
    check_destripe_params(max_period, band, z_sigma, n_reference)
    lines = stripe_lines(image, voxel_size=voxel_size, band=band, n_reference=n_reference)
    spectrum = stripe_spectrum(lines, voxel_size=voxel_size, ny=image.shape[1], max_period=max_period,
                               band=band, z_sigma=z_sigma, adaptive=adaptive)
    return remove_stripes(image, spectrum)


def stripe_rms(spectrum: np.ndarray, shape) -> float:
    """Root-mean-square (gray values) of the stripes removed from a volume of `shape`
    (Parseval: the DCT is orthonormal)."""
    return float(np.sqrt(np.sum(spectrum**2) / math.prod(shape)))


def _check_block(block) -> np.ndarray:
    block = np.asarray(block)
    if block.ndim != 3:
        raise ValueError(f"image must be 3-D (z, y, x); got {block.ndim}-D of shape {block.shape}")
    return block


# --------------------------------------------------------------------------- regions, histograms
def region_bounds(n: int, count: int) -> np.ndarray:
    """Boundaries ``[i·n // count for i in 0..count]`` of `count` regions along an axis of `n`."""
    return np.array([i * n // count for i in range(count + 1)], dtype=np.int64)


def region_centres(n: int, count: int) -> np.ndarray:
    b = region_bounds(n, count)
    return (b[:-1] + b[1:] - 1) / 2.0


def histogram_bins(dtype, lo: float | None = None, hi: float | None = None,
                   max_bins: int = MAX_BINS) -> dict:
    """Histogram bins for shading: ``{"lo", "width", "nbins"}``; centres ``lo + i·width``.

    uint8: one bin per gray value over 0..255. Other integers: over ``[lo, hi]`` (the
    image's min and max), integer widths, at most `max_bins` bins. Floats: `max_bins`
    bins over ``[lo, hi]``.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return {"lo": 0.0, "width": 1.0, "nbins": 256}
    if lo is None or hi is None:
        raise ValueError(f"histogram bins of a {dtype} image need its min and max (lo, hi)")
    lo, hi = float(lo), float(hi)
    if dtype.kind in "ui":
        width = max(1, math.ceil((hi - lo + 1) / max_bins))
        return {"lo": lo, "width": float(width), "nbins": int((hi - lo) // width) + 1}
    width = (hi - lo) / (max_bins - 1) if hi > lo else 1.0
    return {"lo": lo, "width": width, "nbins": max_bins}


@numba.njit(cache=True, nogil=True)
def _region_counts(block, rz, ry, rx, n_ry, n_rx, lo, width, nbins, n_regions):
    counts = np.zeros((n_regions, nbins), dtype=np.int64)
    for iz in range(block.shape[0]):
        for iy in range(block.shape[1]):
            base = (rz[iz] * n_ry + ry[iy]) * n_rx
            for ix in range(block.shape[2]):
                b = math.floor((float(block[iz, iy, ix]) - lo) / width + 0.5)
                b = min(max(b, 0), nbins - 1)
                counts[base + rx[ix], b] += 1
    return counts


def region_histograms(block: np.ndarray, *, origin, shape, regions, lo: float, width: float,
                      nbins: int) -> np.ndarray:
    """Gray-value histogram of every shading region, counted over one block.

    Parameters
    ----------
    block : (z, y, x) ndarray
        A box of the volume starting at global index `origin`.
    shape : 3 ints
        The whole volume's shape.
    regions : 3 ints
        The region grid (z, y, x) (:func:`check_regions`).
    lo, width, nbins :
        The bins (:func:`histogram_bins`).

    Returns
    -------
    (nz·ny·nx, nbins) int64 counts, regions in C order; the sum over the blocks of any
    chunking is the histogram of the whole volume.
    """
    block = _check_block(block)
    ids = [_region_ids(o, b, n, r) for o, b, n, r in zip(origin, block.shape, shape, regions)]
    return _region_counts(np.ascontiguousarray(block), ids[0], ids[1], ids[2], int(regions[1]),
                          int(regions[2]), float(lo), float(width), int(nbins), math.prod(regions))


def _region_ids(origin: int, length: int, n: int, count: int) -> np.ndarray:
    idx = np.arange(origin, origin + length)
    return (np.searchsorted(region_bounds(n, count), idx, side="right") - 1).astype(np.int64)


# --------------------------------------------------------------------------- landmarks
def otsu_bin(counts: np.ndarray) -> int:
    """Otsu's threshold as a bin index: bins ``<= t`` are one class, ``> t`` the other.
    The same arithmetic as ``skimage.filters.threshold_otsu`` (which returns the
    centre of bin t), empty leading and trailing bins aside."""
    counts = np.asarray(counts, dtype=np.float64)
    nz = np.flatnonzero(counts)
    if nz.size < 2:
        return int(nz[0]) if nz.size else 0
    first = int(nz[0])
    hist = counts[first:int(nz[-1]) + 1]
    centres = np.arange(first, first + hist.size, dtype=np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * centres) / w1
    m2 = (np.cumsum((hist * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return first + int(np.argmax(between))


def _peak(h: np.ndarray, lo: int, hi: int, top: float = 0.7) -> float:
    """Position of the highest peak of `h` in bins [lo, hi): the centroid of its top
    (the contiguous bins around the maximum above `top` × the maximum, weighted by
    their height above that level) — the mode of a symmetric peak, steadier than the
    highest bin."""
    lo, hi = max(lo, 0), min(hi, h.size)
    i = lo + int(np.argmax(h[lo:hi]))
    level = top * h[i]
    a = i
    while a > lo and h[a - 1] > level:
        a -= 1
    b = i
    while b < hi - 1 and h[b + 1] > level:
        b += 1
    w = h[a:b + 1] - level
    if w.sum() <= 0:
        return float(i)
    return float(np.dot(np.arange(a, b + 1), w) / w.sum())


def _brightest_peak(h: np.ndarray, lo: int, hi: int, rel: float = 0.03) -> float:
    """Position (as :func:`_peak`) of the brightest peak of `h` in bins [lo, hi) whose
    prominence is at least `rel` × the highest bin there. A shine-through hump
    between pore and copper can outgrow a porous region's copper peak; copper is the
    brightest phase, so its peak is the brightest prominent one (noise wiggles on a
    flank have no prominence)."""
    from scipy.signal import find_peaks

    lo, hi = max(lo, 0), min(hi, h.size)
    seg = np.concatenate([[0.0], h[lo:hi], [0.0]])   # so that peaks at the ends count
    if hi - lo < 3 or seg.max() <= 0:
        return _peak(h, lo, hi)
    peaks, props = find_peaks(seg, prominence=rel * seg.max())
    if peaks.size == 0:
        return _peak(h, lo, hi)
    k = int(np.argmax(peaks))
    base = lo + max(int(props["left_bases"][k]) - 1, 0)
    return _peak(h, base, hi)


def histogram_landmarks(counts: np.ndarray, *, lo: float = 0.0, width: float = 1.0, sigma: float = 1.0,
                        pore_near: float | None = None, window: float | None = None,
                        min_fraction: float = MIN_FRACTION, min_count: int = MIN_COUNT) -> dict:
    """Pore and copper modes of one region's histogram (see the module docstring).

    Parameters
    ----------
    counts : (nbins,) counts, bins centred on ``lo + i · width``.
    sigma : float
        Gaussian smoothing of the histogram, in bins (0: none).
    pore_near, window : float, optional
        Look for the pore mode only within `window` gray values of `pore_near`
        (and at or below the threshold); default: anywhere below the threshold.

    Returns
    -------
    dict: ``pore``, ``copper``, ``threshold`` (gray values; NaN where there is no
    data), ``count`` (voxels), ``fraction`` (of voxels above the threshold), ``valid``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    nan = float("nan")
    if total == 0 or np.count_nonzero(counts) < 2:
        return {"pore": nan, "copper": nan, "threshold": nan, "count": int(total),
                "fraction": nan, "valid": False}
    t = otsu_bin(counts)
    h = ndi.gaussian_filter1d(counts, sigma, mode="constant") if sigma > 0 else counts
    copper = _brightest_peak(h, t + 1, counts.size)
    a, b = 0, t + 1
    if pore_near is not None and window is not None:
        a = max(0, int(math.floor((pore_near - window - lo) / width)))
        b = min(t + 1, int(math.ceil((pore_near + window - lo) / width)) + 1)
        if b <= a:
            a, b = 0, t + 1
    pore = _peak(h, a, b)
    above = float(counts[t + 1:].sum()) / total
    valid = bool(total >= min_count and min_fraction <= above <= 1 - min_fraction and copper > pore)
    return {"pore": lo + pore * width, "copper": lo + copper * width, "threshold": lo + (t + 0.5) * width,
            "count": int(total), "fraction": above, "valid": valid}


# --------------------------------------------------------------------------- corrections
def pooled_pore_line(pore: np.ndarray, copper: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Slope k and intercept c of the robust (Theil–Sen) line ``pore = k · copper + c``
    through the valid regions' modes, k clipped to [0, 1]; ``(1, median(pore −
    copper))`` with fewer than 3 valid regions or no spread in the copper modes."""
    p, c = np.asarray(pore, np.float64)[valid], np.asarray(copper, np.float64)[valid]
    k = 1.0
    if p.size >= 3 and np.ptp(c) > 0:
        i, j = np.triu_indices(p.size, 1)
        dc = c[j] - c[i]
        keep = dc != 0
        k = float(np.clip(np.median((p[j] - p[i])[keep] / dc[keep]), 0.0, 1.0))
    return k, float(np.median(p - k * c))


def fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`values` with every invalid region's value taken from its nearest valid region."""
    values = np.asarray(values, dtype=np.float64)
    if valid.all():
        return values.copy()
    _, idx = ndi.distance_transform_edt(~valid, return_distances=True, return_indices=True)
    return values[tuple(idx)]


def shading_corrections(pore: np.ndarray, copper: np.ndarray, valid: np.ndarray,
                        method: str = METHOD) -> dict:
    """Per-region gain and offset mapping each region onto the reference region.

    Parameters
    ----------
    pore, copper : (nz, ny, nx) landmark gray values of every region.
    valid : (nz, ny, nx) bool; invalid regions take the nearest valid region's landmarks.
    method : ``"linear"`` (both landmarks: gain and offset; the pore landmarks pooled
        by :func:`pooled_pore_line`) or ``"shift"`` (the copper mode only).

    Returns
    -------
    dict: ``gain``, ``offset`` ((nz, ny, nx) float64), ``copper_used``, ``pore_used``
    (the landmarks mapped), ``reference`` (the reference region's (z, y, x) index),
    ``reference_pore``, ``reference_copper``, ``slope`` and ``intercept`` of the pooled
    pore line (linear), ``filled`` (number of invalid regions).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    pore, copper = np.asarray(pore, dtype=np.float64), np.asarray(copper, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(pore) & np.isfinite(copper)
    if not valid.any():
        raise ValueError("shading correction found no region with both a pore and a copper mode; "
                         "use fewer regions or lower min_fraction / min_count")
    out = {"filled": int((~valid).sum())}
    if method == "linear":
        k, c = pooled_pore_line(pore, copper, valid)
        out.update(slope=k, intercept=c)
    copper, pore = fill_invalid(copper, valid), fill_invalid(pore, valid)
    ref = np.unravel_index(int(np.argmax(np.where(valid, copper, -np.inf))), copper.shape)
    c_ref = copper[ref]
    if method == "linear":
        pore = out["slope"] * copper + out["intercept"]
        spread = copper - pore
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (c_ref - pore[ref]) / spread
        offset = c_ref - gain * copper
        good = valid & np.isfinite(gain) & (spread > 0)
        if not good.all() and good.any():     # a fitted pore landmark at or above copper
            gain, offset = fill_invalid(gain, good), fill_invalid(offset, good)
            out["filled"] = int((~good).sum())
    else:
        gain = np.ones_like(copper)
        offset = c_ref - copper
    out.update(gain=gain, offset=offset, copper_used=copper, pore_used=pore,
               reference=tuple(int(i) for i in ref), reference_copper=float(c_ref),
               reference_pore=float(pore[ref]))
    return out


def _axis_weights(origin: int, length: int, n: int, count: int):
    """Neighbouring region centres and linear weights for the indices of one axis,
    flat beyond the outermost centres."""
    centres = region_centres(n, count)
    pos = np.clip(np.arange(origin, origin + length, dtype=np.float64), centres[0], centres[-1])
    i0 = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, count - 1)
    i1 = np.minimum(i0 + 1, count - 1)
    span = centres[i1] - centres[i0]
    t = np.divide(pos - centres[i0], span, out=np.zeros_like(pos), where=span > 0)
    return i0, i1, t


def correction_maps(origin, block_shape, shape, regions, gain: np.ndarray, offset: np.ndarray):
    """Per-voxel gain and offset of a block, interpolated between region centres.

    Yields, for every slice of the block, ``(gain, offset)`` as (y, x) float64 maps.
    Every value depends on its global index only, so blocks agree with the whole.
    """
    iz0, iz1, tz = _axis_weights(origin[0], block_shape[0], shape[0], regions[0])
    iy0, iy1, ty = _axis_weights(origin[1], block_shape[1], shape[1], regions[1])
    ix0, ix1, tx = _axis_weights(origin[2], block_shape[2], shape[2], regions[2])
    ty, tx = ty[:, None], tx[None, :]
    a, b = iy0[:, None], iy1[:, None]
    c, d = ix0[None, :], ix1[None, :]

    def plane(grid, k):
        g = grid[k]
        return ((1 - ty) * ((1 - tx) * g[a, c] + tx * g[a, d])
                + ty * ((1 - tx) * g[b, c] + tx * g[b, d]))

    cache: dict = {}
    for z in range(block_shape[0]):
        maps = []
        for grid, key in ((gain, "g"), (offset, "o")):
            k0, k1 = int(iz0[z]), int(iz1[z])
            for k in (k0, k1):
                if (key, k) not in cache:
                    cache[(key, k)] = plane(grid, k)
            maps.append((1 - tz[z]) * cache[(key, k0)] + tz[z] * cache[(key, k1)])
        yield maps[0], maps[1]


def apply_shading(block: np.ndarray, *, origin, shape, regions, gain: np.ndarray, offset: np.ndarray,
                  dtype=None) -> np.ndarray:
    """``gain · block + offset`` with the interpolated maps (:func:`correction_maps`).

    Parameters
    ----------
    block : (z, y, x) ndarray starting at global index `origin` of a volume of `shape`.
    gain, offset : (nz, ny, nx) region corrections (:func:`shading_corrections`).
    dtype : output dtype (default: the block's); integers are rounded and clipped to
        their range.
    """
    block = _check_block(block)
    dtype = np.dtype(dtype or block.dtype)
    out = np.empty(block.shape, dtype=dtype)
    maps = correction_maps(origin, block.shape, shape, regions, np.asarray(gain, np.float64),
                           np.asarray(offset, np.float64))
    for z, (g, o) in enumerate(maps):
        out[z] = to_dtype(g * block[z] + o, dtype)
    return out


def to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """`values` in `dtype`: integers rounded (half to even) and clipped to the range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return np.asarray(values).astype(dtype)


def shading_plan(counts: np.ndarray, *, regions, bins: dict, method: str = METHOD,
                 smooth: float = SMOOTH, window: float = WINDOW, min_fraction: float = MIN_FRACTION,
                 min_count: int = MIN_COUNT) -> dict:
    """Landmarks and corrections of every region from their summed histograms.

    Parameters
    ----------
    counts : (nz·ny·nx, nbins) the regions' histograms (:func:`region_histograms`, summed).
    bins : :func:`histogram_bins`.
    smooth : histogram smoothing, fraction of the 0.1–99.9 % gray-value span of the
        whole volume.

    Returns
    -------
    dict: ``pore``, ``copper``, ``valid``, ``count`` ((nz, ny, nx) arrays), ``sigma``
    (gray values), and :func:`shading_corrections`' keys.
    """
    check_shading_params(method, smooth, window, min_fraction, min_count)
    counts = np.asarray(counts)
    total = counts.sum(axis=0)
    span_bins = max(_percentile_bin(total, 99.9) - _percentile_bin(total, 0.1), 1)
    sigma = smooth * span_bins
    glob = histogram_landmarks(total, lo=bins["lo"], width=bins["width"], sigma=sigma)
    marks = []
    for c in counts:   # the copper mode first, then the pore mode near the global one, scaled
        m = histogram_landmarks(c, lo=bins["lo"], width=bins["width"], sigma=sigma,
                                min_fraction=min_fraction, min_count=min_count)
        if m["valid"] and glob["valid"]:
            scale = (m["copper"] - bins["lo"]) / max(glob["copper"] - bins["lo"], 1e-12)
            m = histogram_landmarks(c, lo=bins["lo"], width=bins["width"], sigma=sigma,
                                    pore_near=bins["lo"] + (glob["pore"] - bins["lo"]) * scale,
                                    window=window * (glob["copper"] - glob["pore"]) * scale,
                                    min_fraction=min_fraction, min_count=min_count)
        marks.append(m)
    grid = tuple(regions)
    plan = {k: np.array([m[k] for m in marks]).reshape(grid) for k in ("pore", "copper", "valid", "count")}
    plan["sigma"] = sigma * bins["width"]
    plan.update(shading_corrections(plan["pore"], plan["copper"], plan["valid"], method))
    return plan


def _percentile_bin(counts: np.ndarray, q: float) -> int:
    cum = np.cumsum(counts)
    return int(min(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"), counts.size - 1))


def correct_shading(image: np.ndarray, *, regions=REGIONS, method: str = METHOD, smooth: float = SMOOTH,
                    window: float = WINDOW, min_fraction: float = MIN_FRACTION, min_count: int = MIN_COUNT,
                    bins: dict | None = None, dtype=None) -> np.ndarray:
    """Shading correction of a whole volume (see the module docstring).

    `bins` defaults to :func:`histogram_bins` of the image's dtype and range; `dtype`
    (the output's) to the image's. A destriped (float) image of integer data is
    corrected with the integer image's bins and `dtype`.
    """
    image = _check_block(image)
    regions = check_regions(regions, image.shape)
    if bins is None:
        bins = (histogram_bins(image.dtype) if image.dtype == np.uint8
                else histogram_bins(image.dtype, float(image.min()), float(image.max())))
    counts = region_histograms(image, origin=(0, 0, 0), shape=image.shape, regions=regions, **bins)
    plan = shading_plan(counts, regions=regions, bins=bins, method=method, smooth=smooth, window=window,
                        min_fraction=min_fraction, min_count=min_count)
    return apply_shading(image, origin=(0, 0, 0), shape=image.shape, regions=regions, gain=plan["gain"],
                         offset=plan["offset"], dtype=dtype or image.dtype)


__all__ = ["BAND", "MAX_BINS", "MAX_PERIOD", "METHOD", "METHODS", "MIN_COUNT", "MIN_FRACTION", "N_REFERENCE",
           "REGIONS", "SMOOTH", "WINDOW", "Z_SIGMA", "apply_shading", "check_destripe_params",
           "check_regions", "check_shading_params", "correct_shading", "correction_maps", "dct_basis",
           "destripe", "fill_invalid", "highpass_weights", "histogram_bins", "histogram_landmarks",
           "notch_weights", "otsu_bin", "pooled_pore_line", "region_bounds", "region_centres",
           "region_histograms", "remove_stripes", "shading_corrections", "shading_plan", "stripe_lines",
           "stripe_rms", "stripe_spectrum", "to_dtype"]
