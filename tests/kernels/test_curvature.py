"""Interface curvature: analytic shapes (spheres, cylinders, tori, a spherical shell,
a half-space), the Schwarz P nodal surface (analytic derivatives of its implicit
function as the reference), Gauss–Bonnet against scikit-image's Euler number, shapes
near and cut by the volume's outer faces, and the whole-volume call as the reference
of the chunked one."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import euler_number

from porevox.engine import gpu_available, reduce_blocks
from porevox.errors import InvalidVolumeError
from porevox.kernels.curvature import (
    NoInterfaceWarning,
    curvature_depth,
    curvature_edges,
    curvature_fields,
    curvature_summary,
    default_sigma,
    interface_curvature,
    merge_curvature,
)
from tests.conftest import porous

FIB = (0.025, 0.0186, 0.0186)   # the paper's FIB-SEM voxel (µm)


# --------------------------------------------------------------------------- shapes
def _frame(extent, voxel_size, rng):
    """Shape holding a centred object of physical half-extent `extent` plus the outer-face
    margin, and the physical coordinates (sparse) relative to a centre jittered by up
    to half a voxel."""
    vs = np.asarray(voxel_size, float)
    depth = curvature_depth(voxel_size)
    shape = tuple(int(2 * extent / h) + 2 * d + 4 for h, d in zip(vs, depth))
    centre = np.array([(n - 1) * h / 2 for n, h in zip(shape, vs)]) + rng.uniform(-0.5, 0.5, 3) * vs
    z, y, x = np.meshgrid(*(np.arange(n) * h - c for n, h, c in zip(shape, vs, centre)),
                          indexing="ij", sparse=True)
    return z, y, x


def ball(r, voxel_size=(1, 1, 1), rng=None):
    z, y, x = _frame(r, voxel_size, rng or np.random.default_rng(0))
    return z * z + y * y + x * x <= r * r


def cylinder(r, axis, voxel_size=(1, 1, 1), rng=None):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    z, y, x = _frame(2 * r, voxel_size, rng or np.random.default_rng(0))
    t = a[0] * z + a[1] * y + a[2] * x
    return z * z + y * y + x * x - t * t <= r * r


def torus(big, r, voxel_size=(1, 1, 1), rng=None):
    z, y, x = _frame(big + r, voxel_size, rng or np.random.default_rng(0))
    q = np.sqrt(y * y + x * x) - big
    return q * q + z * z <= r * r


def summary(solid, voxel_size=(1, 1, 1), **kw):
    return curvature_summary(interface_curvature(solid, voxel_size=voxel_size, **kw))


def interior(shape, voxel_size=(1, 1, 1)):
    """The core that leaves a :func:`curvature_depth` halo inside the volume on every
    side: what an unbounded shape (a cylinder, a periodic surface) reads away from the
    outer faces."""
    return tuple(slice(d, n - d) for n, d in zip(shape, curvature_depth(voxel_size)))


# --------------------------------------------------------------------------- analytic shapes
@pytest.mark.parametrize("r", [10, 15, 20])
def test_sphere(r):
    solid = ball(r, rng=np.random.default_rng(r))
    s = summary(solid)
    assert s["mean_curvature_mean"] == pytest.approx(1 / r, rel=0.03)
    assert s["gaussian_curvature_mean"] == pytest.approx(1 / r**2, rel=0.05)
    assert s["interface_area"] == pytest.approx(4 * math.pi * r * r, rel=0.03)
    # Gauss–Bonnet: ∫G dA / 4π against the Euler characteristic of the voxels
    assert euler_number(solid, connectivity=1) == 1
    assert s["gauss_bonnet_euler"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 1, 2)])
def test_cylinder(axis):
    r = 10
    solid = cylinder(r, axis, rng=np.random.default_rng(sum(axis)))
    s = summary(solid, core=interior(solid.shape))      # the infinite cylinder, away from the faces
    assert s["mean_curvature_mean"] == pytest.approx(1 / (2 * r), rel=0.03)
    assert abs(s["gaussian_curvature_mean"]) < 0.02 / r**2
    assert s["gaussian_curvature_std"] < 0.2 / r**2


@pytest.mark.parametrize("r", [3, 4])
def test_thin_strut(r):
    """Struts a few voxels across (radius 2σ-3σ) keep M within 4 % (the digitised
    cross-section of so thin a strut itself varies by a few % with its position)."""
    s = summary(cylinder(r, (0, 1, 2), rng=np.random.default_rng(r)))
    assert s["mean_curvature_mean"] == pytest.approx(1 / (2 * r), rel=0.04)
    assert abs(s["gaussian_curvature_mean"]) < 0.05 / r**2


def test_torus():
    big, r = 20, 8
    solid = torus(big, r, rng=np.random.default_rng(7))
    s = summary(solid)
    assert s["mean_curvature_mean"] == pytest.approx(1 / (2 * r), rel=0.03)   # ∫M dA = 2π²R
    assert s["interface_area"] == pytest.approx(4 * math.pi**2 * big * r, rel=0.03)
    assert euler_number(solid, connectivity=1) == 0
    assert abs(s["gauss_bonnet_euler"]) < 0.05                                # ∫G dA = 0
    assert s["gaussian_curvature_std"] > 0.5 / (big * r)                      # G has both signs


def test_two_spheres_gauss_bonnet():
    rng = np.random.default_rng(3)
    one = ball(10, rng=rng)
    solid = np.concatenate([one, one[:, :, ::-1]], axis=2)
    assert euler_number(solid, connectivity=1) == 2
    s = summary(solid)
    assert s["gauss_bonnet_euler"] == pytest.approx(2.0, abs=0.1)
    assert s["mean_curvature_mean"] == pytest.approx(1 / 10, rel=0.03)


def test_spherical_shell_signs():
    """A hollow ball: the cavity's surface is concave seen from the solid (M = −1/r_in)
    while G stays +1/r_in²; ∫G dA = 8π and the shell's Euler characteristic is 2."""
    r_out, r_in = 20, 10    # a shell ≥ 6σ thick (see the module docstring on thin sheets)
    z, y, x = _frame(r_out, (1, 1, 1), np.random.default_rng(5))
    d2 = z * z + y * y + x * x
    solid = (d2 <= r_out**2) & (d2 > r_in**2)
    s = summary(solid)
    a_out, a_in = 4 * math.pi * r_out**2, 4 * math.pi * r_in**2
    assert s["mean_curvature_mean"] == pytest.approx((a_out / r_out - a_in / r_in) / (a_out + a_in), rel=0.05)
    assert s["gaussian_curvature_mean"] == pytest.approx(8 * math.pi / (a_out + a_in), rel=0.05)
    assert euler_number(solid, connectivity=1) == 2
    assert s["gauss_bonnet_euler"] == pytest.approx(2.0, abs=0.1)


def test_pore_inversion_flips_mean_curvature():
    """Swapping solid and pore reverses the normal: M changes sign, G and the area do not."""
    solid = porous((44, 46, 48), np.random.default_rng(11), porosity=0.5, sigma=3.0)
    a = interface_curvature(solid)
    b = interface_curvature(~solid)
    assert a["area"] > 0
    assert b["area"] == pytest.approx(a["area"], rel=1e-12)
    assert b["m_sum"] == pytest.approx(-a["m_sum"], rel=1e-9, abs=1e-9 * a["area"])
    assert b["g_sum"] == pytest.approx(a["g_sum"], rel=1e-9, abs=1e-12)


def _plane_area(n, box):
    """Area of the plane n·(z+0.3, y+0.3, x+0.3) = 0 inside the centred box `box` (a fine
    2-D grid over the box's (y, x) projection; the plane is a graph z(y, x))."""
    lz, ly, lx = box
    if n[1] == 0 and n[2] == 0:
        return ly * lx
    yy, xx = np.meshgrid((np.arange(2000) + 0.5) / 2000 * ly - ly / 2,
                         (np.arange(2000) + 0.5) / 2000 * lx - lx / 2, indexing="ij")
    zz = -(n[1] * (yy + 0.3) + n[2] * (xx + 0.3)) / n[0] - 0.3
    return np.mean(np.abs(zz) < lz / 2) * ly * lx / n[0]


@pytest.mark.parametrize("tilt", [(1.0, 0.0, 0.0), (1.0, 0.3, 0.2)])
def test_half_space(tilt):
    """A plane crossing the volume: M = G = 0; its area is the plane's area inside the
    volume (the outer faces cut it and add none), or inside the core's box of voxel
    centres where only a core is sampled."""
    shape = (50, 54, 58)
    n = np.asarray(tilt) / np.linalg.norm(tilt)
    z, y, x = np.meshgrid(*(np.arange(k) - (k - 1) / 2 + 0.3 for k in shape), indexing="ij", sparse=True)
    solid = n[0] * z + n[1] * y + n[2] * x < 0
    core = interior(shape)
    s = summary(solid, core=core)
    assert abs(s["mean_curvature_mean"]) < 1e-3
    assert abs(s["gaussian_curvature_mean"]) < 1e-5
    assert s["interface_area"] == pytest.approx(_plane_area(n, [c.stop - c.start for c in core]), rel=0.03)
    # up to the faces: cut obliquely, the continued φ leaves G ~ 4e-5 at the faces' edges
    s = summary(solid)
    assert abs(s["mean_curvature_mean"]) < 1e-3
    assert abs(s["gaussian_curvature_mean"]) < 1e-4
    assert s["interface_area"] == pytest.approx(_plane_area(n, shape), rel=0.03)


def test_schwarz_p_saddles():
    """The nodal P surface cos x + cos y + cos z = 0: saddles everywhere. Reference:
    its area-weighted mean G from analytic derivatives of the implicit function, on a
    fine grid (co-area weights); M averages to 0 by the solid/pore symmetry."""
    n = 120
    t = (np.arange(n) + 0.5) * 2 * np.pi / n
    x, y, z = np.meshgrid(t, t, t, indexing="ij", sparse=True)
    f = np.cos(x) + np.cos(y) + np.cos(z)
    gx, gy, gz = -np.sin(x), -np.sin(y), -np.sin(z)
    hx, hy, hz = -np.cos(x), -np.cos(y), -np.cos(z)
    g2 = gx**2 + gy**2 + gz**2
    gauss = (gx**2 * hy * hz + gy**2 * hx * hz + gz**2 * hx * hy) / g2**2
    eps = 3 * 2 * np.pi / n
    band = eps * np.sqrt(g2)
    w = np.where(np.abs(f) < band, (1 + np.cos(np.pi * f / band)) / 2, 0.0)
    ref = float((w * gauss).sum() / w.sum())          # about -0.2705 (period 2π)

    period = 28
    k = 2 * np.pi / period
    off = np.random.default_rng(2).uniform(0, period, 3)
    shape = tuple(2 * d + 2 * period for d in curvature_depth())
    zz, yy, xx = np.meshgrid(*(np.arange(m) + o for m, o in zip(shape, off)), indexing="ij", sparse=True)
    solid = np.cos(k * xx) + np.cos(k * yy) + np.cos(k * zz) > 0
    s = summary(solid, core=interior(shape))      # 2 whole periods, away from the faces
    assert ref < -0.25
    assert s["gaussian_curvature_mean"] < 0
    assert s["gaussian_curvature_mean"] == pytest.approx(ref * k * k, rel=0.05)
    assert abs(s["mean_curvature_mean"]) < 0.02 * k


# --------------------------------------------------------------------------- outer faces
def _near_faces(extent, margin, rng):
    """Coordinates (sparse) of a volume holding a centred object of half-extents
    `extent` (z, y, x) with `margin` voxels to every face; centre jittered by up to
    half a voxel."""
    shape = tuple(int(math.ceil(2 * e)) + 2 * margin + 1 for e in extent)
    centre = [(n - 1) / 2 + u for n, u in zip(shape, rng.uniform(-0.5, 0.5, 3))]
    return np.meshgrid(*(np.arange(n) - c for n, c in zip(shape, centre)), indexing="ij", sparse=True)


def _near_sphere(margin, seed, r=12):
    z, y, x = _near_faces((r, r, r), margin, np.random.default_rng(seed))
    return z * z + y * y + x * x <= r * r


def _near_torus(margin, seed, big=20, r=8):
    z, y, x = _near_faces((r, big + r, big + r), margin, np.random.default_rng(seed))
    q = np.sqrt(y * y + x * x) - big
    return q * q + z * z <= r * r


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_shapes_near_the_faces(seed):
    """A sphere (r = 12) and a torus (R = 20, r = 8) 8 voxels from every face: analytic
    M, Gauss–Bonnet, and the very values of the same shapes padded far from the faces
    (the continued φ past a face meets no image of the shape). Where the old kernel
    left a margin at the faces, they read no interface at all (the sphere) or a torus
    M 43 % low and ∫G dA/4π = -0.16."""
    sphere, torus = _near_sphere(8, seed), _near_torus(8, seed)
    s, t = summary(sphere), summary(torus)
    assert s["mean_curvature_mean"] == pytest.approx(1 / 12, rel=0.03)
    assert s["gauss_bonnet_euler"] == pytest.approx(1.0, abs=0.015)
    assert t["mean_curvature_mean"] == pytest.approx(1 / 16, rel=0.03)     # ∫M dA = 2π²R
    assert abs(t["gauss_bonnet_euler"]) < 0.015                           # ∫G dA = 0
    assert t["interface_area"] == pytest.approx(4 * math.pi**2 * 20 * 8, rel=0.03)
    for solid, near in ((sphere, s), (torus, t)):
        far = summary(np.pad(solid, 16))
        for key in ("interface_area", "mean_curvature_mean", "gaussian_curvature_mean"):
            assert near[key] == pytest.approx(far[key], rel=1e-9), key
    # 2 voxels from the faces: still as in the middle
    s2 = summary(_near_sphere(2, seed))
    assert s2["mean_curvature_mean"] == pytest.approx(s["mean_curvature_mean"], rel=0.005)
    assert s2["gauss_bonnet_euler"] == pytest.approx(1.0, abs=0.015)


@pytest.mark.parametrize("axis", [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0)])
def test_cylinder_cut_by_the_faces(axis):
    """A cylinder (r = 10) through two opposite faces: M = 1/(2r), ∫G dA = 0, and the
    area is its lateral area inside the volume (the cut faces are no interface), cut
    at a right angle and at 27° (which leaves ∫G dA/4π ≈ -0.01 per cut)."""
    r, nz = 10, 31
    a = np.asarray(axis) / np.linalg.norm(axis)
    ny = int(2 * (r + a[1] * nz / 2) / a[0]) + 13          # 6 voxels clear of the y and x faces
    _, y, x = _near_faces((0, ny / 2 - 6.5, r), 6, np.random.default_rng(4))
    z = np.arange(nz)[:, None, None] - (nz - 1) / 2         # the z faces cut the cylinder
    t = a[0] * z + a[1] * y + a[2] * x
    solid = z * z + y * y + x * x - t * t <= r * r
    assert solid[0].any() and solid[-1].any()
    s = summary(solid)
    assert s["mean_curvature_mean"] == pytest.approx(1 / (2 * r), rel=0.03)
    assert abs(s["gaussian_curvature_mean"]) < 0.02 / r**2
    assert abs(s["gauss_bonnet_euler"]) < 0.05
    assert s["interface_area"] == pytest.approx(2 * math.pi * r * nz / a[0], rel=0.03)
    if axis == (1.0, 0.0, 0.0):     # φ is the same on every slice: exactly the middle's values
        assert s["gaussian_curvature_std"] < 1e-12
        middle = summary(np.concatenate([solid] * 3), core=(slice(nz, 2 * nz), slice(None), slice(None)))
        assert s["mean_curvature_mean"] == pytest.approx(middle["mean_curvature_mean"], rel=1e-9)


# --------------------------------------------------------------------------- anisotropic voxels
def test_anisotropic_sphere():
    r = 0.3   # µm: 12 voxels along z, 16 along y and x
    solid = ball(r, FIB, rng=np.random.default_rng(8))
    s = summary(solid, FIB)
    assert s["mean_curvature_mean"] == pytest.approx(1 / r, rel=0.03)
    assert s["gaussian_curvature_mean"] == pytest.approx(1 / r**2, rel=0.05)
    assert s["interface_area"] == pytest.approx(4 * math.pi * r * r, rel=0.03)
    assert s["gauss_bonnet_euler"] == pytest.approx(euler_number(solid, connectivity=1), abs=0.05)


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 0, 1), (1, 1, 1)])
def test_anisotropic_cylinder(axis):
    r = 0.2
    solid = cylinder(r, axis, FIB, rng=np.random.default_rng(9))
    s = summary(solid, FIB, core=interior(solid.shape, FIB))
    assert s["mean_curvature_mean"] == pytest.approx(1 / (2 * r), rel=0.03)
    assert abs(s["gaussian_curvature_mean"]) < 0.02 / r**2


def blob(voxel_size, rng):
    """A union of overlapping balls (µm), placed in physical coordinates."""
    centres = [(0.0, 0.0, 0.0), (0.18, 0.1, -0.05), (-0.1, 0.2, 0.15), (0.05, -0.2, 0.2)]
    radii = [0.25, 0.18, 0.2, 0.15]
    z, y, x = _frame(0.5, voxel_size, rng)
    return np.any([(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
                   for c, r in zip(centres, radii)], axis=0)


def test_anisotropic_same_physical_answer():
    """One physical shape (overlapping balls, necks included) sampled on cubic and on
    FIB-SEM voxels, with the same physical σ, gives the same physical answer."""
    sigma = default_sigma(FIB)
    iso = (0.0186,) * 3
    a = summary(blob(iso, np.random.default_rng(1)), iso, sigma=sigma)
    b = summary(blob(FIB, np.random.default_rng(1)), FIB, sigma=sigma)
    assert b["mean_curvature_mean"] == pytest.approx(a["mean_curvature_mean"], rel=0.03)
    assert b["gaussian_curvature_mean"] == pytest.approx(a["gaussian_curvature_mean"], rel=0.05)
    assert b["interface_area"] == pytest.approx(a["interface_area"], rel=0.03)
    assert a["gauss_bonnet_euler"] == pytest.approx(1.0, abs=0.05)
    assert b["gauss_bonnet_euler"] == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------- chunked == whole
@pytest.mark.parametrize("voxel_size, shape, chunks", [
    ((1.0, 1.0, 1.0), (58, 62, 66), (17, 23, 29)),
    (FIB, (58, 62, 66), (17, 23, 29)),
    ((1.0, 1.0, 1.0), (12, 50, 47), (5, 23, 29)),     # thinner than the halo along z
])
def test_chunked_equals_whole(voxel_size, shape, chunks):
    """Blocks (odd cores; at the outer faces the kernel continues φ itself) merge to the
    whole-volume call, which samples up to the faces."""
    solid = porous(shape, np.random.default_rng(21), porosity=0.45, sigma=2.5).astype(np.uint8)
    edges = curvature_edges(voxel_size)
    whole = interface_curvature(solid, voxel_size=voxel_size, edges=edges)
    parts = reduce_blocks(interface_curvature, solid, curvature_depth(voxel_size), chunks=chunks,
                          voxel_size=voxel_size, edges=edges)
    assert any(b.outer[0].start == 0 and b.core[0].start == 0 for b, _ in parts)
    merged = merge_curvature(parts)
    assert whole["samples"] > 1000
    assert merged["samples"] == whole["samples"]
    for key in ("area", "m_sum", "g_sum", "m2_sum", "g2_sum"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12 * whole["area"]), key
    np.testing.assert_allclose(merged["hist"], whole["hist"], rtol=1e-9, atol=1e-12 * whole["area"])
    sw, sm = curvature_summary(whole), curvature_summary(merged)
    for key in ("mean_curvature_mean", "gaussian_curvature_mean", "mean_curvature_std",
                "gaussian_curvature_std"):
        assert sm[key] == pytest.approx(sw[key], rel=1e-9), key
    # the interface is sampled up to every face
    w = curvature_fields(solid, voxel_size=voxel_size)[2]
    for axis in range(3):
        for end in (0, -1):
            assert np.take(w, end, axis=axis).sum() > 0


def test_too_small_halo_differs():
    """The halo matters: with a much smaller one the blocks disagree with the whole."""
    solid = porous((40, 44, 48), np.random.default_rng(22), porosity=0.45, sigma=2.5)
    whole = interface_curvature(solid)
    parts = reduce_blocks(interface_curvature, solid, 3, chunks=(13, 15, 17))
    assert merge_curvature(parts)["m_sum"] != pytest.approx(whole["m_sum"], rel=1e-6)


# --------------------------------------------------------------------------- histogram, fields
def test_histogram_and_fields():
    r = 12
    solid = ball(r, rng=np.random.default_rng(1))
    res = interface_curvature(solid)
    g_edges, m_edges = res["edges"]
    e2 = curvature_edges((1, 1, 1))
    np.testing.assert_array_equal(g_edges, e2[0])
    np.testing.assert_array_equal(m_edges, e2[1])
    assert np.all(np.diff(g_edges) > 0) and np.all(np.diff(m_edges) > 0)
    assert res["hist"].shape == (len(g_edges) - 1, len(m_edges) - 1)
    assert res["hist"].sum() == pytest.approx(res["area"], rel=1e-12)
    ig = np.searchsorted(g_edges, 1 / r**2) - 1
    im = np.searchsorted(m_edges, 1 / r) - 1
    window = res["hist"][max(ig - 1, 0):ig + 2, max(im - 2, 0):im + 3].sum()
    assert window > 0.9 * res["area"]

    # values beyond the edges are clipped into the edge bins, none lost
    tight = interface_curvature(solid, edges=(np.array([-1e-4, 0.0, 1e-4]), np.array([-1e-3, 1e-3])))
    assert tight["hist"].sum() == pytest.approx(res["area"], rel=1e-12)
    assert tight["hist"][-1, -1] == pytest.approx(res["area"], rel=1e-12)

    m, g, w = curvature_fields(solid, voxel_size=(1, 1, 1))
    assert m.dtype == g.dtype == w.dtype == np.float32 and m.shape == solid.shape
    assert float(w.sum(dtype=np.float64)) == pytest.approx(res["area"], rel=1e-5)
    assert int(np.count_nonzero(w)) == res["samples"]
    assert float((w * m).sum(dtype=np.float64)) == pytest.approx(res["m_sum"], rel=1e-5)
    assert np.all(w[np.abs(ndi.distance_transform_edt(solid) - ndi.distance_transform_edt(~solid)) > 4] == 0)


def test_edges_depend_on_sigma_only():
    g1, m1 = curvature_edges(FIB)
    g2, m2 = curvature_edges(FIB, sigma=default_sigma(FIB), bins=64)
    np.testing.assert_array_equal(g1, g2)
    g3, m3 = curvature_edges(FIB, sigma=0.1, bins=(10, 20))
    assert len(g3) == 11 and len(m3) == 21
    assert m3[-1] < m1[-1]
    assert default_sigma(FIB) == pytest.approx(1.5 * 0.025)
    assert curvature_depth(FIB)[0] < curvature_depth(FIB)[1] == curvature_depth(FIB)[2]


# --------------------------------------------------------------------------- degenerate input
@pytest.mark.parametrize("make", [lambda: np.zeros((30, 30, 30), np.uint8),
                                  lambda: np.ones((30, 30, 30), np.uint8),
                                  lambda: np.zeros((0, 0, 0), np.uint8)])
def test_no_interface_is_nan(make):
    res = interface_curvature(make())
    assert res["area"] == 0 and res["samples"] == 0 and res["hist"].sum() == 0
    with pytest.warns(NoInterfaceWarning):
        s = curvature_summary(res)
    assert math.isnan(s["mean_curvature_mean"]) and math.isnan(s["gaussian_curvature_mean"])
    assert math.isnan(s["mean_curvature_std"]) and s["interface_area"] == 0


def test_slab_on_an_outer_face():
    """A slab 3 voxels thick on an outer face: its free surface is measured (flat, the
    face's area); the face the slab lies on is not interface."""
    solid = np.zeros((30, 34, 38), bool)
    solid[:3] = True
    s = summary(solid)
    assert s["interface_area"] == pytest.approx(34 * 38, rel=0.01)
    assert abs(s["mean_curvature_mean"]) < 1e-6 and abs(s["gaussian_curvature_mean"]) < 1e-9


def test_input_not_modified():
    solid = porous((30, 32, 34), np.random.default_rng(3)).astype(np.uint8)
    before = solid.copy()
    interface_curvature(solid, voxel_size=FIB)
    curvature_fields(solid, voxel_size=FIB)
    np.testing.assert_array_equal(solid, before)


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match=r"solid must be 3-D.*got 2-D"):
        interface_curvature(np.zeros((5, 5), np.uint8))
    with pytest.raises(InvalidVolumeError, match="voxel_size"):
        interface_curvature(np.zeros((5, 5, 5), np.uint8), voxel_size=(1, 1))
    with pytest.raises(InvalidVolumeError, match="sigma"):
        curvature_depth((1, 1, 1), sigma=-1)
    with pytest.raises(TypeError, match="bool or integer"):
        interface_curvature(np.zeros((5, 5, 5), np.float32))
    with pytest.raises(InvalidVolumeError, match="different edges"):
        merge_curvature([interface_curvature(np.zeros((5, 5, 5), bool)),
                         interface_curvature(np.zeros((5, 5, 5), bool), edges=curvature_edges(bins=8))])


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cupy_matches_numpy():
    if not gpu_available():
        pytest.skip("no CuPy / CUDA device")
    cupy = pytest.importorskip("cupy")
    solid = porous((40, 44, 48), np.random.default_rng(6), porosity=0.45, sigma=2.5).astype(np.uint8)
    cpu = interface_curvature(solid, voxel_size=FIB)
    gpu = interface_curvature(cupy.asarray(solid), voxel_size=FIB)
    assert gpu["samples"] == cpu["samples"]
    for key in ("area", "m_sum", "g_sum"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-6), key
    m, g, w = curvature_fields(cupy.asarray(solid), voxel_size=FIB)
    assert isinstance(w, cupy.ndarray)
    assert float(w.sum()) == pytest.approx(cpu["area"], rel=1e-5)


def test_warning_class():
    assert issubclass(NoInterfaceWarning, RuntimeWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary(ball(10))      # an interface: no warning
