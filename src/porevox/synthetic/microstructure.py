"""Sintered porous-copper microstructures from particle packings.

A sample is a list of spherical particles in physical units (µm) — micro (≈ 1 µm)
and nano (≈ 150 nm) copper for the hybrid pastes HPA and HPB, nano only for NPC —
and a sintering state. The solid is the sub-level set of a *smooth union* of the
particles' signed distances,

    φ(x) = −k · ln Σᵢ exp(−(|x − cᵢ| − rᵢ) / k),      solid = {φ < level},

where the neck radius k grows with temperature (necks between touching particles
fill in, as in sintering), nano particles coarsen (fewer, larger) and the level is
calibrated so that the relative density hits the paper's Fig. 2b at that
temperature. Every voxel depends only on the particle list, so any block of a
volume of any size is generated on its own, in parallel, and equals the same box
of a whole-volume generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

TEMPERATURES = (175, 200, 225, 250, 350, 400)
PASTES = ("HPA", "HPB", "NPC")


@dataclass(frozen=True)
class Paste:
    """A copper paste: its particles and its calibration targets (Fig. 2b)."""

    name: str
    porosity_175: float          # porosity at 175 °C
    densification: float         # D(400 °C) − D(175 °C), absolute
    micro_share: float           # share of the particle volume in micro particles
    micro_diameter: float = 1.0  # µm, median of a log-normal
    nano_diameter: float = 0.15  # µm, median of a log-normal
    micro_spread: float = 0.25   # σ of ln(diameter)
    nano_spread: float = 0.20


# Porosity at 175 °C and densification 175 → 400 °C from the paper (Fig. 2b and text:
# HPA 42.4 %, HPB 61.7 %, NPC 45.2 %; +18.5, +7.3, +20.8 points of relative density).
# "Change of relative density" is read as absolute percentage points.
PASTE_TABLE = {
    "HPA": Paste("HPA", 0.424, 0.185, micro_share=0.6),
    "HPB": Paste("HPB", 0.617, 0.073, micro_share=0.5),
    "NPC": Paste("NPC", 0.452, 0.208, micro_share=0.0),
}


def sinter_progress(temperature_c: float) -> float:
    """Sintering progress u ∈ [0, 1] from 175 to 400 °C: a smooth, monotone
    (logistic) curve, steepest around 260 °C, exactly 0 at 175 and 1 at 400 °C."""
    t = float(temperature_c)
    if not 100.0 <= t <= 500.0:
        raise ValueError(f"temperature_c must be within 100–500 °C; got {temperature_c!r}")

    def g(x):
        return 1.0 / (1.0 + math.exp(-(x - 260.0) / 45.0))

    return (g(t) - g(175.0)) / (g(400.0) - g(175.0))


def target_density(paste: str, temperature_c: float) -> float:
    """Calibration target: relative density D of `paste` sintered at `temperature_c`."""
    p = get_paste(paste)
    return (1.0 - p.porosity_175) + p.densification * sinter_progress(temperature_c)


def get_paste(paste: str) -> Paste:
    try:
        return PASTE_TABLE[paste]
    except KeyError:
        raise ValueError(f"paste must be one of {', '.join(PASTES)}; got {paste!r}") from None


@dataclass(frozen=True)
class Microstructure:
    """A sample's particles and sintering state; renders any box of its volume."""

    paste: str
    temperature_c: float
    shape: tuple[int, int, int]            # voxels (z, y, x)
    voxel_size: tuple[float, float, float]  # µm (z, y, x)
    centers: np.ndarray                    # (N, 3) µm, voxel (0, 0, 0) centred at 0
    radii: np.ndarray                      # (N,) µm
    neck: float                            # k, µm
    threshold: float                       # solid where Σ exp(−(d − r)/k) > threshold
    density: float                         # the calibration target

    @property
    def reach(self) -> float:
        """Distance past a particle's surface beyond which its term is dropped: 10 k,
        where exp(−10) ≈ 5e−5 of a surface term (the level stays within 2 k)."""
        return 10.0 * self.neck

    def accumulate(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Σᵢ exp(−(|x − cᵢ| − rᵢ)/k) over the voxels of `box` (float64)."""
        starts = np.array([s.start for s in box], dtype=np.float64)
        stops = np.array([s.stop for s in box], dtype=np.float64)
        vs = np.asarray(self.voxel_size)
        lo, hi = starts * vs, (stops - 1) * vs
        r = self.radii + self.reach
        near = np.all((self.centers + r[:, None] >= lo) & (self.centers - r[:, None] <= hi), axis=1)
        acc = np.zeros(tuple(int(b - a) for a, b in zip(starts, stops)), dtype=np.float64)
        _accumulate(acc, starts * vs, vs, self.centers[near], self.radii[near], self.neck,
                    self.reach)
        return acc

    def accumulate_at(self, voxels: np.ndarray) -> np.ndarray:
        """The same sum at the voxels with integer indices ``voxels`` (M, 3), through
        a cell list of the particles (small and large particles apart), so that a
        random sample of a volume of any size costs only its own points."""
        points = np.asarray(voxels, dtype=np.float64) * np.asarray(self.voxel_size)
        acc = np.zeros(len(points), dtype=np.float64)
        split = 3.0 * float(np.median(self.radii)) if self.radii.size else 0.0
        for group in (self.radii <= split, self.radii > split):
            if not group.any():
                continue
            centers, radii = self.centers[group], self.radii[group]
            cell = float(radii.max()) + self.reach
            lo = centers.min(axis=0)
            ids = np.floor((centers - lo) / cell).astype(np.int64)
            dims = ids.max(axis=0) + 1
            lin = (ids[:, 0] * dims[1] + ids[:, 1]) * dims[2] + ids[:, 2]
            order = np.argsort(lin, kind="stable")
            starts = np.concatenate([[0], np.cumsum(np.bincount(lin, minlength=int(np.prod(dims))))])
            _accumulate_points(acc, points, centers[order], radii[order], starts, lo, cell, dims,
                               self.neck, self.reach)
        return acc

    def render(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """The solid (uint8, 1 = copper) in `box` (default: the whole volume)."""
        box = box or tuple(slice(0, n) for n in self.shape)
        return (self.accumulate(box) > self.threshold).astype(np.uint8)


@numba.njit(cache=True, nogil=True)
def _accumulate(acc, origin, vs, centers, radii, k, reach):
    nz, ny, nx = acc.shape
    for p in range(radii.shape[0]):
        cz, cy, cx, r = centers[p, 0], centers[p, 1], centers[p, 2], radii[p]
        big = r + reach
        z0 = max(0, int(math.ceil((cz - big - origin[0]) / vs[0])))
        z1 = min(nz, int(math.floor((cz + big - origin[0]) / vs[0])) + 1)
        y0 = max(0, int(math.ceil((cy - big - origin[1]) / vs[1])))
        y1 = min(ny, int(math.floor((cy + big - origin[1]) / vs[1])) + 1)
        x0 = max(0, int(math.ceil((cx - big - origin[2]) / vs[2])))
        x1 = min(nx, int(math.floor((cx + big - origin[2]) / vs[2])) + 1)
        for iz in range(z0, z1):
            dz = origin[0] + iz * vs[0] - cz
            for iy in range(y0, y1):
                dy = origin[1] + iy * vs[1] - cy
                dzy = dz * dz + dy * dy
                for ix in range(x0, x1):
                    dx = origin[2] + ix * vs[2] - cx
                    s = math.sqrt(dzy + dx * dx) - r
                    if s < reach:
                        acc[iz, iy, ix] += math.exp(-s / k)


@numba.njit(cache=True, nogil=True)
def _accumulate_points(acc, points, centers, radii, starts, lo, cell, dims, k, reach):
    for m in range(points.shape[0]):
        pz, py, px = points[m, 0], points[m, 1], points[m, 2]
        cz = int(math.floor((pz - lo[0]) / cell))
        cy = int(math.floor((py - lo[1]) / cell))
        cx = int(math.floor((px - lo[2]) / cell))
        total = 0.0
        for iz in range(max(cz - 1, 0), min(cz + 2, dims[0])):
            for iy in range(max(cy - 1, 0), min(cy + 2, dims[1])):
                for ix in range(max(cx - 1, 0), min(cx + 2, dims[2])):
                    c = (iz * dims[1] + iy) * dims[2] + ix
                    for p in range(starts[c], starts[c + 1]):
                        dz, dy, dx = pz - centers[p, 0], py - centers[p, 1], px - centers[p, 2]
                        s = math.sqrt(dz * dz + dy * dy + dx * dx) - radii[p]
                        if s < reach:
                            total += math.exp(-s / k)
        acc[m] += total


def _lognormal(rng, median, spread, volume):
    """Diameters (µm) from a log-normal until their spheres hold `volume` µm³."""
    mean_v = math.pi / 6 * median**3 * math.exp(4.5 * spread**2)
    n = max(int(round(volume / mean_v)), 0)
    return median * np.exp(spread * rng.standard_normal(n))


def make_microstructure(
    paste: str,
    temperature_c: float,
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    rng=None,
    *,
    calibration_voxels: int = 2**20,
) -> Microstructure:
    """Particles of `paste` in a box of `shape` voxels, sintered at `temperature_c`.

    The particles fill the box as a Boolean model (uniform centres, overlaps
    allowed) whose volume gives the target density; nano particles coarsen with
    sintering progress u (radius × (1 + 0.5u), count ÷ (1 + 0.5u)³) and the neck
    radius is k = 0.12 · r_nano · (1 + 2u). The threshold is the quantile of the
    field that makes the solid fraction the target: computed on the whole volume
    up to `calibration_voxels`, else on that many random voxels of it (standard
    error of the density about 0.0005).
    """
    p = get_paste(paste)
    rng = np.random.default_rng(rng)
    shape = tuple(int(s) for s in shape)
    vs = np.asarray(voxel_size, dtype=np.float64)
    u = sinter_progress(temperature_c)
    density = target_density(paste, temperature_c)
    coarsen = 1.0 + 0.5 * u
    neck = 0.12 * (p.nano_diameter / 2) * coarsen * (1.0 + 2.0 * u)

    extent = (np.asarray(shape) - 1) * vs
    margin = p.micro_diameter if p.micro_share > 0 else p.nano_diameter
    lo, hi = -margin, extent + margin
    box_volume = float(np.prod(hi - lo))
    solid_volume = -math.log(1.0 - density) * box_volume     # Boolean model
    diameters = np.concatenate([
        _lognormal(rng, p.micro_diameter, p.micro_spread, solid_volume * p.micro_share),
        _lognormal(rng, p.nano_diameter * coarsen, p.nano_spread,
                   solid_volume * (1 - p.micro_share)),
    ])
    centers = lo + rng.random((diameters.size, 3)) * (hi - lo)
    radii = diameters / 2

    draft = Microstructure(paste, float(temperature_c), shape, tuple(vs), centers, radii,
                           neck, threshold=1.0, density=density)
    if math.prod(shape) <= calibration_voxels:
        samples = draft.accumulate(tuple(slice(0, n) for n in shape)).ravel()
    else:
        voxels = np.stack([rng.integers(0, n, calibration_voxels) for n in shape], axis=1)
        samples = draft.accumulate_at(voxels)
    threshold = float(np.quantile(samples, 1.0 - density))
    return Microstructure(paste, float(temperature_c), shape, tuple(vs), centers, radii,
                          neck, threshold=max(threshold, 1e-300), density=density)
