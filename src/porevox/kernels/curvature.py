"""Mean and Gaussian curvature of the solid–pore interface, by a level-set method.

Sign convention (DESIGN.md): the normal points from solid into pore; a convex solid
particle (a sphere of radius r) has mean curvature M = +1/r and Gaussian curvature
G = +1/r²; a saddle (a neck between particles) has G < 0. Units: M in 1/unit and G
in 1/unit² of `voxel_size` (µm⁻¹, µm⁻²).

Method
------
1. **Signed distance.** φ < 0 in solid, φ > 0 in pore, from the exact anisotropic
   Euclidean distance transforms of both phases (``distance_transform_edt`` with
   ``sampling=voxel_size``): in pore ``φ = d(voxel, nearest solid centre) − c``, in
   solid ``φ = −(d(voxel, nearest pore centre) − c)``, with the half-voxel ``c`` =
   half the smallest voxel size. Between a solid and a pore neighbour φ crosses zero
   half-way, on the voxel face, whatever ``c``; ``c`` only sets the jump of φ there,
   and half a voxel makes φ's slope across the interface 1 as elsewhere (slightly
   steeper across faces normal to a longer voxel side, which the smoothing absorbs).
   ``|φ|`` is clipped at ``cap = ε_max + truncate·σ + h_max`` (ε_max = h_max the
   widest band, below): far from the interface φ is not needed, and the clip makes it
   block-local (a block whose halo is at least ``cap`` computes the same clipped φ as
   the whole volume wherever the result depends on it).
2. **Smoothing.** φ_s = Gaussian(φ, σ) with σ in physical units (``truncate`` σ
   radius, mode "nearest"), which removes the voxel staircase.
3. **Differences.** Gradient g and Hessian H of φ_s by second-order central
   differences with the voxel sizes, evaluated on the band voxels only. On each level
   set of φ_s, ``M = div(g/|g|)/2 = (|g|² tr H − gᵀHg) / (2|g|³)`` and
   ``G = gᵀ adj(H) g / |g|⁴`` (the normal g/|g| points into the pore).
4. **Band and weights (co-area formula).** Voxels with ``|φ_s| < ε`` are sampled with
   the weight ``w = δ_ε(φ_s)·|g|``, δ_ε the cosine (Hann) bump of half-width ε:
   ``Σ w·V`` (V the voxel volume) integrates the areas of the level sets of φ_s over
   the band, i.e. the area of the level set near zero. ε is one voxel size *along the
   normal*, ``ε = |(g_z h_z, g_y h_y, g_x h_x)|/|g|`` (``h_i`` on a face normal to axis
   i, where the bump then sums to exactly 1 over the voxel layers at any offset; for
   oblique faces the layers' projections are dense and the sum is close to 1); a
   narrow band keeps thin struts and sheets apart from their medial ridge, where φ
   has a kink.
5. **Corrections to the interface (zero level).** A band voxel lies on a level set at
   a distance ``s`` from the interface: ``t``, the distance to the zero level of φ_s
   along the normal (one quadratic Newton step, ``f − |g| t + ½ h_nn t² = 0``, h_nn =
   gᵀHg/|g|²), minus the shift of that zero level by the smoothing, ``φ_s ≈ φ +
   ½σ²Δφ`` with the Laplacian along the level set, ``Δ_T φ = 2M|g|`` (the normal part
   is 0 for a distance function; taking the full ``tr H`` instead picks up the kink at
   medial ridges and makes struts of radius 3 voxels 10 % off): ``s = t − σ²M``.
   Level sets of a distance function are parallel surfaces: the principal curvatures
   at distance s are ``k = k0/(1 + s·k0)`` and the area element is ``(1 + s·k0_1)(1 +
   s·k0_2)`` times the interface's. Inverted with ``f = 1 − 2sM + s²G`` (from M and G
   at the level; no square roots needed): ``M0 = (M − sG)/f``, ``G0 = G/f``, area
   weight ``w·f`` (``f`` clipped to [0.2, 5]; it is near 1 unless a radius of
   curvature is as small as the band, a feature of one or two voxels).
   Without the smoothing shift a sphere of radius 10 voxels comes out 2.5 % high in M
   and 5 % in G and 5 % low in area; without the parallel-surface factor 5 % off in
   all three. With both, spheres, cylinders and tori of radius ≥ 10 voxels come within
   1 % in M and ∫G dA/4π within 0.015 of the Euler characteristic (see the tests).

Accuracy limits: G carries a small positive bias from the residual staircase
(products of curvature noise), about +0.5 % of 1/r² at r = 20 voxels and +1.3 % at
r = 30 (it grows as r²: it is a constant ~1.5e-5 voxel⁻² on flat interface).
Features a few σ across: struts (solid or pore cylinders) of radius 3-4 voxels stay
within ~3 % in M; *sheets* thinner than ~4σ (6 voxels at the default σ) are biased
by 2-3 % per surface, because smoothing the kink of φ at their medial plane moves
both surfaces (the bias falls to ~0.5 % at 10 voxels thick).

Outer faces of the volume: the interface is sampled up to them (voxels inside the
volume only). Past a face the clipped φ is continued, before the smoothing, by odd
reflection about the face voxel, ``φ(−j) = 2φ(0) − φ(j)``: a linear continuation, so
a surface the face cuts runs on unbent, a shape near the face meets no image of
itself, and the face itself is never interface. (Mirroring the solid instead gives
φ's even reflection; inside the volume φ is the same. It bends oblique surfaces to
meet the face at a right angle and merges a shape a voxel or two off the face with
its image: a sphere 1 voxel off reads ∫G dA/4π ≈ 0.55.) Shapes ≥ 1 voxel from a face
read as in the middle (identically beyond ``cap``), and so does a cylinder the face
cuts at a right angle; cut at 27-45°, a cylinder (r = 10) 30-40 voxels long reads M
0.5-2 % low and ∫G dA/4π -0.008 to -0.016 per cut.
Limit: at the face voxel the continuation has no curvature along the face normal, so
the three voxel layers at a face read |G| low, by about 27, 13 and 3 % on random
structures (the mean G barely moves: both signs lose) and 90, 50 and 18 % on saddles
(a Schwarz P box of 2 periods of 28 voxels: G 8-20 % low). A block on an outer face
pads itself there (by what its halo lacks of :func:`curvature_depth`), so blocks give
the whole-volume values in their cores.

Default σ (:func:`default_sigma`): 1.5 × the largest voxel size. Measured on spheres
(isotropic voxels, mean of several sub-voxel positions): at 1.0 the staircase leaves
G 10 % high at r = 20 and 25 % at r = 30 voxels; at 1.5, 0.5 % and 1.3 %; at 2.0 G is
exact to 0.1 % but spheres of radius 6 lose 3-6 % and struts of radius 4 lose 10 %.
On anisotropic voxels the largest size carries the coarsest steps. Cost: at 1.5 the
halo is 15 voxels per side on cubic voxels, (15, 20, 20) on (0.025, 0.0186, 0.0186).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..backend import get_array_module, ndimage_module
from ..errors import InvalidVolumeError
from ._checks import check_positive, check_segmentation, check_voxel_size

_SIGMA_VOXELS = 1.5        # default σ, in units of the largest voxel size
_BAND = 1.0                # band half-width ε, in voxel sizes along the normal (≤ h_max)
_CAP_MARGIN = 1.0          # extra signed-distance range beyond band + smoothing, in h_max
_MIN_AREA_FACTOR = 0.2     # lower clip of the parallel-surface area factor f
_HIST_KMAX = 2.0           # histogram range of principal curvatures, in 1/σ
_BATCH = 1 << 18           # band voxels evaluated at a time (bounds the temporaries)


class NoInterfaceWarning(RuntimeWarning):
    """The volume has no solid–pore interface (all solid, all pore, or empty): the
    curvature statistics are NaN."""


# --------------------------------------------------------------------------- parameters
def _check_sigma(sigma: Any, voxel_size) -> float:
    if sigma is None:
        return default_sigma(voxel_size)
    return check_positive(sigma, "sigma", " (physical units) or None")


def _check_truncate(truncate: Any) -> float:
    return check_positive(truncate, "truncate")


def default_sigma(voxel_size=(1.0, 1.0, 1.0)) -> float:
    """Default Gaussian smoothing σ, in the unit of `voxel_size`: 1.5 × the largest
    voxel size (see the module docstring for why)."""
    return _SIGMA_VOXELS * max(check_voxel_size(voxel_size))


def _params(voxel_size, sigma, truncate):
    vs = check_voxel_size(voxel_size)
    sig = _check_sigma(sigma, vs)
    trunc = _check_truncate(truncate)
    hmax = max(vs)
    band = _BAND * hmax
    cap = band + trunc * sig + _CAP_MARGIN * hmax
    # scipy's (and cupyx's) Gaussian kernel radius is int(truncate * sigma + 0.5) voxels
    radius = tuple(int(trunc * sig / h + 0.5) for h in vs)
    depth = tuple(int(math.ceil(cap / h - 1e-9)) + r + 1 for h, r in zip(vs, radius))
    return vs, sig, trunc, band, cap, depth


def curvature_depth(voxel_size=(1.0, 1.0, 1.0), sigma=None, truncate=4.0) -> tuple[int, int, int]:
    """Halo (voxels per axis (z, y, x)) that makes :func:`interface_curvature` on a
    block equal the whole-volume result in the block's core: the signed-distance cap
    (``ceil(cap/h)``), the smoothing radius and one voxel for the central differences.
    Past the volume's outer faces the kernel continues φ itself by that width."""
    return _params(voxel_size, sigma, truncate)[5]


def curvature_edges(voxel_size=(1.0, 1.0, 1.0), sigma=None, bins=64):
    """Fixed histogram edges ``(g_edges, m_edges)`` in physical units, from the voxel
    size and σ only (so every block of a volume bins identically).

    The smoothed field shows principal curvatures up to about ``1/σ``; the edges span
    ``±k_max`` with ``k_max = 2/σ`` for M (uniform bins), and ``±k_max²`` for G with
    bins uniform in ``sign(G)·sqrt(|G|)`` (fine near 0, where most of the interface is).

    Parameters
    ----------
    bins : int or (int, int)
        Number of bins for (G, M).

    Returns
    -------
    g_edges, m_edges : float64 ndarrays of ``bins + 1`` edges.
    """
    vs = check_voxel_size(voxel_size)
    sig = _check_sigma(sigma, vs)
    nb = np.broadcast_to(np.asarray(bins), (2,))
    if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 for b in nb.tolist()):
        raise InvalidVolumeError(f"bins must be a positive integer or two of them (G, M); got {bins!r}")
    nb_g, nb_m = (int(b) for b in nb)
    kmax = _HIST_KMAX / sig
    u = np.linspace(-kmax, kmax, nb_g + 1)
    g_edges = np.sign(u) * u * u
    m_edges = np.linspace(-kmax, kmax, nb_m + 1)
    return g_edges, m_edges


# --------------------------------------------------------------------------- input
def _check_solid(solid: Any):
    return check_segmentation(solid, hint="; pass one volume (or one block of it)")


def _check_geometry(shape, core, offset, volume_shape):
    if core is None:
        core = tuple(slice(0, n) for n in shape)
    core = tuple(slice(*s.indices(n)[:2]) for s, n in zip(core, shape))
    if len(core) != 3:
        raise InvalidVolumeError(f"core must be 3 slices locating the core in the block; got {core!r}")
    offset = tuple(int(o) for o in offset)
    volume_shape = tuple(int(n) for n in (volume_shape if volume_shape is not None else shape))
    if len(offset) != 3 or len(volume_shape) != 3:
        raise InvalidVolumeError(f"offset and volume_shape must have 3 entries (z, y, x); got "
                                 f"{offset!r}, {volume_shape!r}")
    return core, offset, volume_shape


# --------------------------------------------------------------------------- fields
def _band_curvature(solid, vs, sig, trunc, band, cap, depth, core, offset, volume_shape):
    """Band samples of the block: flat indices, corrected M0, G0 and area per voxel
    (weight × voxel volume), all as float64 arrays of the array module of `solid`."""
    xp = get_array_module(solid)
    ndi = ndimage_module(solid)
    mask = solid != 0
    shape = mask.shape
    empty = xp.zeros(0, dtype=np.float64)
    n_solid = int(xp.count_nonzero(mask))
    if mask.size == 0 or n_solid == 0 or n_solid == mask.size:
        return xp.zeros(0, dtype=np.int64), empty, empty, empty

    # outer faces: where a block side is one and its halo there is short of `depth`, φ
    # is continued past the face below (see the module docstring); the padded block
    # then has a full `depth` halo on every side. An axis the block spans whole is
    # padded by `depth` on both sides, as in the whole-volume call.
    pad = []
    for a in range(3):
        lo_face, hi_face = offset[a] == 0, offset[a] + shape[a] == volume_shape[a]
        if lo_face and hi_face:
            pad.append((depth[a], depth[a]))
        else:
            pad.append((max(depth[a] - core[a].start, 0) if lo_face else 0,
                        max(depth[a] - (shape[a] - core[a].stop), 0) if hi_face else 0))
    # region sampled: the core (one voxel from the block's own faces, for safety on
    # blocks with too small a halo), in the coordinates of the padded block
    lo = [max(c.start + p[0], 1) for c, p in zip(core, pad)]
    hi = [min(c.stop + p[0], n + p[0] + p[1] - 1) for c, p, n in zip(core, pad, shape)]
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        return xp.zeros(0, dtype=np.int64), empty, empty, empty

    half = 0.5 * min(vs)
    d_pore = ndi.distance_transform_edt(~mask, sampling=vs)    # pore voxels: to nearest solid
    phi = d_pore - half
    del d_pore
    d_solid = ndi.distance_transform_edt(mask, sampling=vs)    # solid voxels: to nearest pore
    phi = xp.where(mask, half - d_solid, phi)
    del d_solid, mask
    xp.clip(phi, -cap, cap, out=phi)
    if any(b or e for b, e in pad):
        # odd reflection about the face voxel, φ(−j) = 2φ(0) − φ(j): a linear
        # continuation, so level sets cross the face unbent
        phi = xp.pad(phi, pad, mode="reflect", reflect_type="odd")
        xp.clip(phi, -cap, cap, out=phi)
    phi = ndi.gaussian_filter(phi, sigma=tuple(sig / h for h in vs), truncate=trunc, mode="nearest")

    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    inband = xp.abs(phi[region]) < band
    iz, iy, ix = (i.astype(np.int64) for i in xp.nonzero(inband))
    del inband
    if iz.size == 0:
        return iz, empty, empty, empty
    sy, sz = phi.shape[2], phi.shape[1] * phi.shape[2]        # strides of the padded block
    idx = (iz + lo[0]) * sz + (iy + lo[1]) * sy + (ix + lo[2])
    # the same voxels in the (unpadded) block
    out = ((iz + lo[0] - pad[0][0]) * (shape[1] * shape[2]) + (iy + lo[1] - pad[1][0]) * shape[2]
           + (ix + lo[2] - pad[2][0]))
    del iz, iy, ix

    f = phi.ravel()
    parts = [_voxel_curvature(xp, f, idx[i:i + _BATCH], sz, sy, vs, sig, band)
             for i in range(0, idx.size, _BATCH)]
    m0, g0, area = (xp.concatenate(p) for p in zip(*parts))
    keep = xp.nonzero(area > 0)[0]     # the voxels the band really covers
    return out[keep], m0[keep], g0[keep], area[keep]


def _voxel_curvature(xp, f, idx, sz, sy, vs, sig, band):
    """Corrected M0, G0 and area (weight × voxel volume) at the flat indices `idx` of
    the smoothed field `f` (raveled, strides `sz`, `sy`, 1)."""
    hz, hy, hx = vs
    f0 = f[idx]
    fzp, fzm = f[idx + sz], f[idx - sz]
    fyp, fym = f[idx + sy], f[idx - sy]
    fxp, fxm = f[idx + 1], f[idx - 1]
    gz = (fzp - fzm) / (2 * hz)
    gy = (fyp - fym) / (2 * hy)
    gx = (fxp - fxm) / (2 * hx)
    a = (fzp - 2 * f0 + fzm) / (hz * hz)     # H_zz
    b = (fyp - 2 * f0 + fym) / (hy * hy)     # H_yy
    c = (fxp - 2 * f0 + fxm) / (hx * hx)     # H_xx
    del fzp, fzm, fyp, fym, fxp, fxm
    d = (f[idx + sz + sy] - f[idx + sz - sy] - f[idx - sz + sy] + f[idx - sz - sy]) / (4 * hz * hy)
    e = (f[idx + sz + 1] - f[idx + sz - 1] - f[idx - sz + 1] + f[idx - sz - 1]) / (4 * hz * hx)
    g = (f[idx + sy + 1] - f[idx + sy - 1] - f[idx - sy + 1] + f[idx - sy - 1]) / (4 * hy * hx)

    g2 = gz * gz + gy * gy + gx * gx
    gn = xp.sqrt(g2)
    ok = gn > 1e-12
    g2 = xp.where(ok, g2, 1.0)
    gn = xp.where(ok, gn, 1.0)
    trace = a + b + c
    ghg = (a * gz * gz + b * gy * gy + c * gx * gx
           + 2 * (d * gz * gy + e * gz * gx + g * gy * gx))
    m = (g2 * trace - ghg) / (2 * g2 * gn)
    gadj = (gz * gz * (b * c - g * g) + gy * gy * (a * c - e * e) + gx * gx * (a * b - d * d)
            + 2 * gz * gy * (e * g - c * d) + 2 * gz * gx * (d * g - b * e)
            + 2 * gy * gx * (d * e - a * g))
    gk = gadj / (g2 * g2)

    # distance of the voxel's level set from the interface: smoothing moved it by ½σ²Δ_Tφ
    # (the Laplacian along the level set, |g|·2M; the normal part n·H·n is 0 for a
    # distance function and only picks up the kinks of φ at medial ridges)
    hnn = ghg / g2
    disc = xp.maximum(g2 - 2 * f0 * hnn, 0.0)
    t = 2 * f0 / (gn + xp.sqrt(disc))
    s = t - sig * sig * m
    fac = xp.clip(1 - 2 * s * m + s * s * gk, _MIN_AREA_FACTOR, 1 / _MIN_AREA_FACTOR)
    m0 = (m - s * gk) / fac
    g0 = gk / fac
    # band half-width: _BAND times the voxel size along the normal (h_i on faces normal
    # to axis i, where the cosine bump then sums to 1 exactly over the voxel layers)
    eps = xp.where(ok, _BAND * xp.sqrt((gz * hz) ** 2 + (gy * hy) ** 2 + (gx * hx) ** 2) / gn, band)
    delta = xp.where(xp.abs(f0) < eps, (1 + xp.cos(math.pi * f0 / eps)) / (2 * eps), 0.0)
    area = xp.where(ok, delta * gn * fac * (hz * hy * hx), 0.0)
    return m0, g0, area


def _hist2d(xp, g0, m0, area, g_edges, m_edges):
    ge = xp.asarray(g_edges, dtype=np.float64)
    me = xp.asarray(m_edges, dtype=np.float64)
    ng, nm = ge.size - 1, me.size - 1
    ig = xp.clip(xp.searchsorted(ge, g0, side="right") - 1, 0, ng - 1)
    im = xp.clip(xp.searchsorted(me, m0, side="right") - 1, 0, nm - 1)
    flat = xp.bincount(ig * nm + im, weights=area, minlength=ng * nm)
    return flat.reshape(ng, nm)


# --------------------------------------------------------------------------- kernel
def interface_curvature(solid, *, voxel_size=(1.0, 1.0, 1.0), sigma=None, edges=None, core=None,
                        offset=(0, 0, 0), volume_shape=None, truncate=4.0) -> dict:
    """Area-weighted partial sums of the interface's mean and Gaussian curvature in
    one block (or a whole volume).

    Parameters
    ----------
    solid : (P, M, N) ndarray of bool or integers (NumPy or CuPy)
        Nonzero = solid. The block: its core plus a :func:`curvature_depth` halo
        (clipped at the volume's outer faces, where the kernel continues φ itself).
        Not modified.
    voxel_size : 3 floats
        Size along (z, y, x), e.g. in µm.
    sigma : float, optional
        Gaussian smoothing of the signed distance, in the unit of `voxel_size`
        (default :func:`default_sigma`).
    edges : (g_edges, m_edges), optional
        Histogram edges (default :func:`curvature_edges` of `voxel_size`, `sigma`).
    core : 3 slices, optional
        The core in block coordinates; only its voxels are sampled (default: all).
    offset : 3 ints
        Volume index of ``block[0, 0, 0]``.
    volume_shape : 3 ints, optional
        Shape of the whole volume (default: the block's): sets the outer faces, past
        which φ is continued (see the module docstring).
    truncate : float
        Gaussian kernel radius in σ.

    Returns
    -------
    dict, mergeable by adding (:func:`merge_curvature`):
        ``area`` (µm², Σ weight × voxel volume), ``m_sum`` (∫M dA, µm), ``g_sum``
        (∫G dA, dimensionless), ``m2_sum`` (∫M² dA), ``g2_sum`` (∫G² dA), ``samples``
        (number of voxels sampled), ``hist`` ((len(g_edges)-1, len(m_edges)-1) float64
        NumPy array, the area in each (G, M) bin; values outside clipped into the edge
        bins), ``edges`` ((g_edges, m_edges)).
    """
    solid = _check_solid(solid)
    vs, sig, trunc, band, cap, depth = _params(voxel_size, sigma, truncate)
    if edges is None:
        edges = curvature_edges(vs, sig)
    g_edges, m_edges = (np.asarray(e, dtype=np.float64) for e in edges)
    if g_edges.ndim != 1 or m_edges.ndim != 1 or g_edges.size < 2 or m_edges.size < 2:
        raise InvalidVolumeError("edges must be (g_edges, m_edges), two increasing 1-D arrays of at "
                                 f"least 2 edges; got sizes {g_edges.shape}, {m_edges.shape}")
    core, offset, volume_shape = _check_geometry(solid.shape, core, offset, volume_shape)
    xp = get_array_module(solid)
    idx, m0, g0, area = _band_curvature(solid, vs, sig, trunc, band, cap, depth, core, offset,
                                        volume_shape)
    if idx.size == 0:
        hist = np.zeros((g_edges.size - 1, m_edges.size - 1))
        return {"area": 0.0, "m_sum": 0.0, "g_sum": 0.0, "m2_sum": 0.0, "g2_sum": 0.0,
                "samples": 0, "hist": hist, "edges": (g_edges, m_edges)}
    am, ag = area * m0, area * g0
    sums = xp.stack([area.sum(), am.sum(), ag.sum(), (am * m0).sum(), (ag * g0).sum()])
    hist = _hist2d(xp, g0, m0, area, g_edges, m_edges)
    sums = sums.get() if xp is not np else sums
    hist = hist.get() if xp is not np else hist
    return {"area": float(sums[0]), "m_sum": float(sums[1]), "g_sum": float(sums[2]),
            "m2_sum": float(sums[3]), "g2_sum": float(sums[4]), "samples": int(idx.size),
            "hist": np.asarray(hist, dtype=np.float64), "edges": (g_edges, m_edges)}


def merge_curvature(partials) -> dict:
    """Add the partial results of :func:`interface_curvature` (a list of dicts, or
    of ``(block, dict)`` pairs as :func:`porevox.engine.reduce_blocks` returns)."""
    parts = [p[1] if isinstance(p, tuple) else p for p in partials]
    if not parts:
        raise InvalidVolumeError("merge_curvature needs at least one partial result; got none")
    out = {k: 0.0 for k in ("area", "m_sum", "g_sum", "m2_sum", "g2_sum")}
    out["samples"] = 0
    out["hist"] = np.zeros_like(parts[0]["hist"], dtype=np.float64)
    out["edges"] = parts[0]["edges"]
    for p in parts:
        if p["hist"].shape != out["hist"].shape:
            raise InvalidVolumeError("merge_curvature: partial results were binned on different edges; "
                                     "pass the same edges= to every block")
        for k in ("area", "m_sum", "g_sum", "m2_sum", "g2_sum"):
            out[k] += p[k]
        out["samples"] += int(p["samples"])
        out["hist"] += p["hist"]
    return out


def curvature_summary(merged) -> dict:
    """Interface statistics from merged partial sums.

    Returns
    -------
    dict with ``mean_curvature_mean`` (area-weighted mean M, µm⁻¹),
    ``gaussian_curvature_mean`` (µm⁻²), ``mean_curvature_std``,
    ``gaussian_curvature_std`` (area-weighted), ``interface_area`` (µm²),
    ``integral_gaussian_curvature`` (∫G dA), ``gauss_bonnet_euler`` (∫G dA / 4π,
    comparable with the Euler characteristic of the solid), ``samples``, ``hist``
    (area per (G, M) bin, µm²), ``g_edges``, ``m_edges``. NaN statistics and a
    :class:`NoInterfaceWarning` where there is no interface.
    """
    area = float(merged["area"])
    g_edges, m_edges = merged["edges"]
    out = {"interface_area": area, "integral_gaussian_curvature": float(merged["g_sum"]),
           "gauss_bonnet_euler": float(merged["g_sum"]) / (4 * math.pi),
           "samples": int(merged["samples"]), "hist": merged["hist"],
           "g_edges": g_edges, "m_edges": m_edges}
    if not area > 0:
        warnings.warn("no solid–pore interface in the volume (all solid, all pore, or empty): "
                      "curvature statistics are NaN",
                      NoInterfaceWarning, stacklevel=2)
        nan = float("nan")
        out.update(mean_curvature_mean=nan, gaussian_curvature_mean=nan, mean_curvature_std=nan,
                   gaussian_curvature_std=nan)
        return out
    mm = merged["m_sum"] / area
    gm = merged["g_sum"] / area
    out.update(mean_curvature_mean=mm, gaussian_curvature_mean=gm,
               mean_curvature_std=math.sqrt(max(merged["m2_sum"] / area - mm * mm, 0.0)),
               gaussian_curvature_std=math.sqrt(max(merged["g2_sum"] / area - gm * gm, 0.0)))
    return out


def curvature_fields(solid, *, voxel_size=(1.0, 1.0, 1.0), sigma=None, truncate=4.0):
    """Whole-volume fields of the interface curvature (for figures and checks).

    Returns
    -------
    M, G, weight : (P, M, N) float32 arrays (same array library as `solid`)
        M and G at each band voxel, corrected to the interface (µm⁻¹, µm⁻²); `weight`
        is the interface area carried by the voxel (µm²; ``weight.sum()`` is the
        interface area). All three are 0 off the band.
    """
    solid = _check_solid(solid)
    vs, sig, trunc, band, cap, depth = _params(voxel_size, sigma, truncate)
    core, offset, volume_shape = _check_geometry(solid.shape, None, (0, 0, 0), None)
    xp = get_array_module(solid)
    idx, m0, g0, area = _band_curvature(solid, vs, sig, trunc, band, cap, depth, core, offset,
                                        volume_shape)
    out = []
    for values in (m0, g0, area):
        field = xp.zeros(solid.size, dtype=np.float32)
        field[idx] = values
        out.append(field.reshape(solid.shape))
    return tuple(out)


__all__ = ["NoInterfaceWarning", "curvature_depth", "curvature_edges", "curvature_fields",
           "curvature_summary", "default_sigma", "interface_curvature", "merge_curvature"]
