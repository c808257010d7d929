"""A FIB-SEM image model: what the detector sees on each milled face.

Slice z shows the cut face at z. Copper at the face is bright, brighter still near
its edges (secondary-electron edge effect). Through a pore the detector sees the
copper *behind* the face (z' > z), dimmer the deeper it lies — the shine-through
artifact. On top come curtaining stripes (along y, varying with x and slowly with
z), a shading / shadow gradient, in-plane blur and Poisson–Gaussian noise.

Every term is a function of global voxel coordinates and of the solid within a
fixed halo, and the noise comes from a counter-based generator keyed by the
voxel's global index, so a block rendered on its own equals the same box of a
whole-volume rendering.

Truth beside the image: ``truth`` (1 = copper) and ``truth_annotation`` with the
paper's classes — 0 copper, 1 pore, 2 pore that shines through: a pore voxel whose
noise-free signal lies above the global Otsu threshold of the sample's image
(:func:`image_threshold`), i.e. that a global threshold would call copper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np
from scipy import ndimage as ndi

from .microstructure import Microstructure


@dataclass(frozen=True)
class FibSemModel:
    """Imaging parameters; brightness in [0, 1] of full scale, lengths in µm."""

    copper: float = 0.62          # copper at the face
    background: float = 0.10      # a pore with nothing behind it
    edge_gain: float = 0.30       # extra brightness at copper edges
    edge_width: float = 0.025     # in-plane width of the edge effect
    shine: float = 0.80           # shine-through at zero depth, relative to copper
    attenuation: float = 0.30     # shine-through falls as exp(−depth / attenuation)
    look_ahead: float = 1.0       # deepest copper seen through a pore
    curtain: float = 0.05         # amplitude of the curtaining stripes
    shading: float = 0.18         # depth of the shading / shadow gradient
    blur: float = 0.015           # in-plane Gaussian blur σ
    gain: float = 0.004           # Poisson part: variance = gain · signal
    read_noise: float = 0.035     # Gaussian part: σ

    def as_dict(self) -> dict:
        return asdict(self)

    def halo(self, voxel_size) -> tuple[int, int, int]:
        """Voxels of solid around a block that its image depends on."""
        vz, vy, vx = voxel_size
        look = int(math.ceil(self.look_ahead / vz))
        ry = int(4 * max(self.blur, self.edge_width) / vy + 0.5) + 1
        rx = int(4 * max(self.blur, self.edge_width) / vx + 0.5) + 1
        return look, 2 * ry, 2 * rx


@numba.njit(cache=True, nogil=True)
def depth_behind(solid, look):
    """Voxels to the first solid voxel behind each voxel (+z), up to `look`; -1 if none."""
    nz, ny, nx = solid.shape
    out = np.full((nz, ny, nx), -1, dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            nearest = -1
            for iz in range(nz - 1, -1, -1):
                if solid[iz, iy, ix]:
                    nearest = iz
                    out[iz, iy, ix] = 0
                elif nearest >= 0 and nearest - iz <= look:
                    out[iz, iy, ix] = nearest - iz
    return out


@numba.njit(cache=True, nogil=True)
def _splitmix(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def counter_normal(origin, shape, full_shape, seed, stream):
    """Standard normal noise keyed by global voxel index: chunking-independent."""
    out = np.empty((shape[0], shape[1], shape[2]), dtype=np.float32)
    key = _splitmix(np.uint64(seed) * np.uint64(4) + np.uint64(stream))
    inv = 1.0 / 18446744073709551616.0
    for iz in range(shape[0]):
        for iy in range(shape[1]):
            for ix in range(shape[2]):
                idx = ((origin[0] + iz) * full_shape[1] + origin[1] + iy) * full_shape[2] + origin[2] + ix
                a = _splitmix(key ^ np.uint64(2 * idx))
                b = _splitmix(key ^ np.uint64(2 * idx + 1))
                u1 = (float(a >> np.uint64(11)) + 0.5) * inv * 2048.0
                u2 = float(b >> np.uint64(11)) * inv * 2048.0
                out[iz, iy, ix] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return out


def _curtain(model: FibSemModel, seed: int, z, x, voxel_size) -> np.ndarray:
    """Vertical stripes (constant along y), varying with x and slowly with z."""
    rng = np.random.default_rng([seed, 7])
    n = 6
    amps = rng.uniform(0.4, 1.0, n)
    periods = rng.uniform(0.08, 0.6, n)            # µm across x
    phases = rng.uniform(0, 2 * np.pi, n)
    drift = rng.uniform(-0.6, 0.6, n)              # rad per µm along z
    zz = (z * voxel_size[0])[:, None]
    xx = (x * voxel_size[2])[None, :]
    s = sum(a * np.sin(2 * np.pi * xx / p + ph + d * zz)
            for a, p, ph, d in zip(amps, periods, phases, drift))
    return (model.curtain * s / amps.sum() * 2).astype(np.float32)   # (z, x)


def _shading(model: FibSemModel, y, x, full_shape) -> np.ndarray:
    """Darker towards the substrate (y) and the far side (x): shading and shadowing."""
    fy = y / max(full_shape[1] - 1, 1)
    fx = x / max(full_shape[2] - 1, 1)
    return (1.0 - model.shading * (0.65 * fy[:, None] + 0.35 * fx[None, :] ** 2)).astype(np.float32)


def _outer(ms: Microstructure, model: FibSemModel, box) -> tuple[slice, ...]:
    """`box` grown by the model's halo: forward in z (copper behind), both ways in y, x."""
    halo = model.halo(ms.voxel_size)
    return tuple(slice(max(s.start - (0 if a == 0 else h), 0), min(s.stop + h, n))
                 for a, (s, h, n) in enumerate(zip(box, halo, ms.shape)))


def _clean(ms: Microstructure, model: FibSemModel, outer) -> tuple[np.ndarray, np.ndarray]:
    """Solid and noise-free face brightness (edge effect and shine-through) of `outer`."""
    solid = ms.render(outer).astype(bool)
    vz, vy, vx = ms.voxel_size
    depth = depth_behind(solid, model.halo(ms.voxel_size)[0]).astype(np.float32) * vz
    shine = model.copper * model.shine * np.exp(-depth / model.attenuation)
    seen = np.where(depth > 0, model.background + shine, model.background)
    pore = (~solid).astype(np.float32)
    edge = np.clip(2.0 * ndi.gaussian_filter(pore, (0, model.edge_width / vy, model.edge_width / vx),
                                             mode="nearest"), 0.0, 1.0)
    clean = np.where(solid, model.copper * (1.0 + model.edge_gain * edge), seen).astype(np.float32)
    return solid, clean


def _sample_boxes(shape, budget, rng, side=32):
    """The whole volume if it has at most `budget` voxels, else random cubes of it."""
    if math.prod(shape) <= budget:
        return [tuple(slice(0, n) for n in shape)]
    boxes = []
    for _ in range(max(budget // side**3, 1)):
        corner = [int(rng.integers(0, max(s - side, 0) + 1)) for s in shape]
        boxes.append(tuple(slice(c, min(c + side, s)) for c, s in zip(corner, shape)))
    return boxes


def image_threshold(ms: Microstructure, model: FibSemModel, seed: int, *,
                    budget: int = 2**22) -> float:
    """Global Otsu threshold (fraction of full scale) of the sample's image: on the
    whole volume up to `budget` voxels, else on seeded random sub-blocks of it."""
    from skimage.filters import threshold_otsu

    boxes = _sample_boxes(ms.shape, budget, np.random.default_rng(0))
    values = np.concatenate([render_box(ms, model, seed, box, 1.0, "uint16")[2].ravel()
                             for box in boxes])
    return float(threshold_otsu(values, nbins=4096)) / np.iinfo(np.uint16).max


def render_box(ms: Microstructure, model: FibSemModel, seed: int, box: tuple[slice, slice, slice],
               threshold: float, dtype="uint8") -> np.ndarray:
    """Truth, annotation and image of one box, stacked as ``(3, z, y, x)`` in `dtype`.

    `threshold` is :func:`image_threshold` of the sample. The result depends only on
    the particle list, the model, the seed and the box: the same box of any chunking
    gives the same values.
    """
    full = ms.shape
    outer = _outer(ms, model, box)
    core = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
    solid, clean = _clean(ms, model, outer)

    vz, vy, vx = ms.voxel_size
    z = np.arange(outer[0].start, outer[0].stop)
    y = np.arange(outer[1].start, outer[1].stop)
    x = np.arange(outer[2].start, outer[2].stop)
    signal = (clean * _shading(model, y, x, full)[None]
              + _curtain(model, seed, z, x, ms.voxel_size)[:, None, :])
    signal = ndi.gaussian_filter(signal, (0, model.blur / vy, model.blur / vx), mode="nearest")[core]
    solid = solid[core]
    annotation = np.where(solid, 0, np.where(signal > threshold, 2, 1))

    origin = np.array([s.start for s in box], dtype=np.int64)
    shape = np.array(signal.shape, dtype=np.int64)
    fshape = np.array(full, dtype=np.int64)
    poisson = counter_normal(origin, shape, fshape, seed, 0)
    gauss = counter_normal(origin, shape, fshape, seed, 1)
    noisy = (signal + np.sqrt(model.gain * np.clip(signal, 0, None)) * poisson
             + model.read_noise * gauss)
    top = np.iinfo(np.dtype(dtype)).max
    image = np.clip(np.rint(noisy * top), 0, top)
    return np.stack([solid, annotation, image]).astype(dtype)
