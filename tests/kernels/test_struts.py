"""Strut diameters: analytic cylinders and plates, scikit-image's skeleton and SciPy's
log-normal fit as references, chunked == whole on odd chunks."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from porevox.engine import gpu_available, reduce_blocks
from porevox.engine.blockwise import block_slices
from porevox.errors import InvalidVolumeError
from porevox.kernels._boxes import grow, within
from porevox.kernels.edt import feature_distance, feature_transform
from porevox.kernels.struts import (
    SAFETY,
    UNBOUNDED,
    NoStrutWarning,
    lognormal_fit,
    merge_log_stats,
    ray_depth,
    skeleton,
    strut_depth,
    strut_diameters,
)

PAPER_VOXEL = (0.025, 0.0186, 0.0186)


def cylinder(shape, diameter, direction, voxel_size=(1.0, 1.0, 1.0), center=None):
    """Solid where the voxel centre lies within diameter/2 of the axis (physical units)."""
    vs = np.asarray(voxel_size, float)
    c = (np.asarray(shape) - 1) / 2 * vs if center is None else np.asarray(center, float)
    a = np.asarray(direction, float)
    a /= np.linalg.norm(a)
    g = np.stack(np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, vs)], indexing="ij"), -1) - c
    perp = g - (g @ a)[..., None] * a
    return np.linalg.norm(perp, axis=-1) <= diameter / 2


def porous(shape, seed, porosity=0.5, sigma=2.5):
    """A twin-like porous solid: Gaussian-smoothed noise thresholded (bool, True = solid)."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field > np.quantile(field, porosity)


def merged(results):
    return np.sort(np.concatenate([r["diameters"] for _, r in results]))


def too_small(result):
    return any(n > g for n, g in zip(result["depth_needed"], result["depth_given"]))


# --------------------------------------------------------------------------- accuracy
DIRECTIONS = {"z": (1, 0, 0), "y": (0, 1, 0), "x": (0, 0, 1), "diag111": (1, 1, 1), "diag011": (0, 1, 1)}


@pytest.mark.parametrize("diameter", [8, 9, 12, 16])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_cylinder_diameter_within_5_percent(diameter, direction):
    # The natural digitisation: an even diameter centred between voxels, an odd one on
    # a voxel centre, so the digitised width along the axes is the diameter.
    n = 40 if diameter <= 12 else 48
    n += diameter % 2
    solid = cylinder((n, n, n), diameter, DIRECTIONS[direction])
    res = strut_diameters(solid)
    fit = lognormal_fit(res["diameters"])
    assert res["skeleton_voxels"] > 0
    assert fit["mean"] == pytest.approx(diameter, rel=0.05)
    assert fit["ci95"][0] <= fit["mean"] <= fit["ci95"][1]
    if direction in ("z", "y", "x"):
        # the largest radius, the distance to the nearest pore centre: about D/2 (an
        # oblique cylinder leaves through the corners, where the outer faces hide the pore)
        assert diameter / 2 - 1 <= res["max_radius"] <= diameter / 2 + 1


@pytest.mark.parametrize("direction", ["z", "y", "x", "diag111"])
def test_anisotropic_voxels_same_physical_diameter(direction):
    diameter = 0.3  # µm: 12 voxels along z, 16 along y and x
    solid = cylinder((36, 48, 48), diameter, DIRECTIONS[direction], voxel_size=PAPER_VOXEL)
    res = strut_diameters(solid, voxel_size=PAPER_VOXEL)
    assert lognormal_fit(res["diameters"])["mean"] == pytest.approx(diameter, rel=0.05)


def test_plate_thickness_exact_half_voxel_correction():
    # An axis-aligned plate: the interface lies exactly half a voxel before the nearest
    # pore centre; twice the distance would read T + 1.
    for t in (3, 5, 6, 8):
        solid = np.zeros((30, 30, 30), bool)
        solid[:, 5:5 + t, :] = True
        d = strut_diameters(solid)["diameters"]
        assert d.size > 0
        np.testing.assert_allclose(d, t, rtol=1e-3)


@pytest.mark.parametrize("case", ["bar", "plate", "cylinder"])
def test_guard_gives_empty_skeleton_a_diameter(case):
    """scikit-image #3757: even-width objects thin to nothing."""
    solid = np.zeros((30, 30, 30), bool)
    if case == "bar":
        solid[4:26, 10:14, 10:14] = True            # 4 x 4 bar, width 4
        width = 4.0
    elif case == "plate":
        solid[13:17, 7:23, 7:23] = True             # 4-voxel plate
        width = 4.0
    else:
        solid = cylinder((40, 40, 40), 8, (1, 0, 0))  # centred between voxels
        width = 8.0
    assert not skeletonize(solid).any()             # the bug is there: the test means something
    res = strut_diameters(solid)
    assert res["guarded"] == 1
    assert res["skeleton_voxels"] > 0
    assert lognormal_fit(res["diameters"])["mean"] == pytest.approx(width, rel=0.05)


def test_every_component_keeps_a_skeleton():
    solid = porous((40, 40, 40), 3, porosity=0.7, sigma=1.5)   # many small components
    sk, _ = skeleton(solid)
    labels, n = ndi.label(solid, structure=np.ones((3, 3, 3)))
    assert n > 5
    assert set(np.unique(labels[sk])) == set(range(1, n + 1))
    assert not (sk & ~solid).any()


def test_skeleton_map_matches_kernel():
    solid = porous((32, 36, 40), 4)
    sk, phi = skeleton(solid, voxel_size=PAPER_VOXEL)
    res = strut_diameters(solid, voxel_size=PAPER_VOXEL)
    assert sk.dtype == bool and phi.shape == solid.shape
    assert np.array_equal(np.isfinite(phi), sk)
    np.testing.assert_array_equal(phi[sk], res["diameters"])  # both in C order
    # skeleton = scikit-image's plus the guard's voxels
    assert not (skeletonize(solid) & ~sk).any()


# --------------------------------------------------------------------------- fit
def test_lognormal_fit_matches_scipy(rng):
    x = rng.lognormal(mean=np.log(0.2), sigma=0.35, size=500)
    fit = lognormal_fit(x)
    s, loc, scale = scipy.stats.lognorm.fit(x, floc=0)
    assert fit["sigma"] == pytest.approx(s, rel=1e-4)
    assert fit["median"] == pytest.approx(scale, rel=1e-4)
    assert fit["mu"] == pytest.approx(np.log(scale), abs=1e-4)
    mean = scipy.stats.lognorm(s, loc=0, scale=scale).mean()
    assert fit["mean"] == pytest.approx(mean, rel=1e-4)
    # Cox's interval, written out
    mu, sg, n = np.log(x).mean(), np.log(x).std(), len(x)
    half = 1.96 * math.sqrt(sg**2 / n + sg**4 / (2 * (n - 1)))
    np.testing.assert_allclose(fit["ci95"], np.exp(mu + sg**2 / 2 + np.array([-half, half])))
    assert fit["n"] == 500
    # the interval covers the true mean of the distribution
    assert fit["ci95"][0] < 0.2 * np.exp(0.35**2 / 2) < fit["ci95"][1]


def test_lognormal_fit_empty_warns_nan():
    with pytest.warns(NoStrutWarning):
        fit = lognormal_fit(np.empty(0))
    assert math.isnan(fit["mean"]) and all(math.isnan(v) for v in fit["ci95"]) and fit["n"] == 0
    one = lognormal_fit([2.0])
    assert one["mean"] == pytest.approx(2.0) and math.isnan(one["ci95"][0])


# --------------------------------------------------------------------------- edge cases
def test_all_pore_empty_result():
    res = strut_diameters(np.zeros((10, 11, 12), np.uint8))
    assert res["diameters"].size == 0 and res["max_radius"] == 0.0 and res["skeleton_voxels"] == 0
    with pytest.warns(NoStrutWarning):
        assert math.isnan(lognormal_fit(res["diameters"])["mean"])


def test_all_solid_volume_warns_nan():
    with pytest.warns(NoStrutWarning):
        res = strut_diameters(np.ones((10, 11, 12), np.uint8))
    assert res["diameters"].size == 0 and math.isnan(res["max_radius"])
    with pytest.warns(NoStrutWarning):
        sk, phi = skeleton(np.ones((5, 5, 5), bool))
    assert not sk.any() and np.isnan(phi).all()


def test_block_without_pore_needs_the_volumes_transform():
    block = np.ones((10, 10, 10), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = strut_diameters(block, core=(slice(2, 8),) * 3, offset=(5, 5, 5), volume_shape=(40, 40, 40))
    assert res["max_radius"] == math.inf
    assert res["depth_needed"] == (UNBOUNDED,) * 3 and res["depth_given"] == (2, 2, 2)
    # with the whole volume's transform the same block knows its distances
    volume = np.ones((40, 40, 40), bool)
    volume[:, :, 0] = False
    feats = feature_transform(volume)
    box = (slice(5, 15),) * 3
    res = strut_diameters(volume[box], core=(slice(2, 8),) * 3, offset=(5, 5, 5), volume_shape=(40, 40, 40),
                          features=feats[(slice(None),) + box])
    assert res["max_radius"] == 12.0                       # x = 12 in the core, the pore at x = 0


def test_depth_given_per_axis():
    block = porous((20, 20, 20), 0)
    # z: reaches both outer faces; y: low face is the outer face, 3 voxels above;
    # x: 4 below, 6 above
    res = strut_diameters(block, core=(slice(0, 20), slice(0, 17), slice(4, 14)),
                          offset=(0, 0, 10), volume_shape=(20, 40, 40))
    assert res["depth_given"] == (UNBOUNDED, 3, 4)


def test_strut_depth():
    assert strut_depth((1, 1, 1), 0.0) == strut_depth((1, 1, 1), 0.0)
    d = strut_depth(PAPER_VOXEL, 0.2)
    assert all(di >= SAFETY * 0.2 / v for di, v in zip(d, PAPER_VOXEL))
    assert d[0] < d[1] == d[2]                   # fewer, larger voxels along z
    assert strut_depth((1, 1, 1), 10) > strut_depth((1, 1, 1), 5)
    assert strut_depth((1, 1, 1), math.inf) == (UNBOUNDED,) * 3
    with pytest.raises(ValueError, match="max_radius"):
        strut_depth((1, 1, 1), -1)


def test_input_not_modified():
    solid = porous((24, 26, 28), 1).astype(np.uint8)
    copy = solid.copy()
    strut_diameters(solid, voxel_size=PAPER_VOXEL)
    skeleton(solid, voxel_size=PAPER_VOXEL)
    assert np.array_equal(solid, copy)


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match=r"solid must be 3-D .* got 2-D .* solid\[None\]"):
        strut_diameters(np.ones((5, 5), np.uint8))
    with pytest.raises(ValueError, match="voxel_size must be 3 positive numbers"):
        strut_diameters(np.ones((5, 5, 5), np.uint8), voxel_size=(1, 1))
    with pytest.raises(TypeError, match="segmentation"):
        strut_diameters(np.ones((5, 5, 5), np.float32))


# --------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("seed,porosity", [(0, 0.5), (1, 0.3)])
def test_chunked_equals_whole(seed, porosity):
    solid = porous((48, 56, 64), seed, porosity=porosity, sigma=2.5 if porosity == 0.5 else 3.0)
    whole = strut_diameters(solid)
    depth = strut_depth((1, 1, 1), whole["max_radius"])
    res = reduce_blocks(strut_diameters, solid, depth, chunks=(17, 23, 31), voxel_size=(1, 1, 1))
    assert len(res) == 3 * 3 * 3
    assert not any(too_small(r) for _, r in res)
    # the multiset of φ is identical, bit for bit, and so is the fit
    np.testing.assert_array_equal(merged(res), np.sort(whole["diameters"]))
    assert lognormal_fit(merged(res)) == lognormal_fit(whole["diameters"])
    assert sum(r["skeleton_voxels"] for _, r in res) == whole["skeleton_voxels"]
    assert sum(r["guarded"] for _, r in res) == whole["guarded"]
    assert max(r["max_radius"] for _, r in res) == whole["max_radius"]


def test_chunked_anisotropic_equals_whole():
    solid = porous((40, 48, 52), 5)
    whole = strut_diameters(solid, voxel_size=PAPER_VOXEL)
    depth = strut_depth(PAPER_VOXEL, whole["max_radius"])
    res = reduce_blocks(strut_diameters, solid, depth, chunks=(19, 25, 27), voxel_size=PAPER_VOXEL)
    assert not any(too_small(r) for _, r in res)
    np.testing.assert_array_equal(merged(res), np.sort(whole["diameters"]))


def blocks_with_features(solid, vs, chunks):
    """Every block with the halo its own largest radius asks for, read with the whole
    volume's feature transform where its chords reach: the pipeline's plan, no reruns."""
    feats = feature_transform(solid, voxel_size=vs)
    dist = feature_distance(feats, voxel_size=vs)
    out = []
    for core in block_slices(solid.shape, chunks):
        r = float(np.where(solid[core], dist[core], 0).max())
        outer, reach = grow(core, strut_depth(vs, r), solid.shape), grow(core, ray_depth(vs, r), solid.shape)
        assert all(a.stop - a.start < b.stop - b.start or b.stop - b.start == n
                   for a, b, n in zip(reach, outer, solid.shape))      # less than the block
        out.append(strut_diameters(solid[outer], voxel_size=vs, core=within(core, outer),
                                   offset=[o.start for o in outer], volume_shape=solid.shape,
                                   features=feats[(slice(None),) + reach], features_box=within(reach, outer)))
    return out


def test_features_box_must_hold_the_core():
    solid = porous((24, 24, 24), 2)
    feats = feature_transform(solid)
    with pytest.raises(InvalidVolumeError, match="must hold the core"):
        strut_diameters(solid, core=(slice(4, 20),) * 3, features=feats[:, 6:20, 4:20, 4:20],
                        features_box=(slice(6, 20), slice(4, 20), slice(4, 20)))


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), PAPER_VOXEL])
def test_halo_from_the_volumes_transform_equals_whole(vs):
    solid = porous((48, 56, 64), 1, porosity=0.3, sigma=3.0)
    whole = strut_diameters(solid, voxel_size=vs)
    res = blocks_with_features(solid, vs, (17, 23, 31))
    assert not any(too_small(r) for r in res)
    np.testing.assert_array_equal(np.sort(np.concatenate([r["diameters"] for r in res])),
                                  np.sort(whole["diameters"]))
    stats = merge_log_stats([r["stats"] for r in res])
    fit, ref = lognormal_fit(stats=stats), lognormal_fit(whole["diameters"])
    for key in ("mean", "median", "sigma"):
        assert fit[key] == pytest.approx(ref[key], rel=1e-12)
    assert fit["n"] == ref["n"] == whole["skeleton_voxels"]
    np.testing.assert_array_equal(sum(r["hist"] for r in res), whole["hist"])


def test_limit_leaves_out_thick_solid_and_counts_it():
    solid = np.zeros((40, 40, 40), bool)
    solid[4:36, 4:36, 4:36] = True                  # a 32-voxel cube: radius 16
    solid[:, 18:22, 18:22] = True                   # a 4-voxel bar through it
    whole = strut_diameters(solid)
    cut = strut_diameters(solid, limit=5.0)
    assert cut["skeleton_voxels"] < whole["skeleton_voxels"]
    assert cut["unmeasured_solid"] == int((feature_distance(feature_transform(solid))[solid] > 5.0).sum())
    assert cut["solid_voxels"] == int(solid.sum()) and whole["unmeasured_solid"] == 0
    assert np.all(cut["diameters"] <= 2 * 5.0 + 2)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_cupy_block_same_as_numpy():
    cupy = pytest.importorskip("cupy")
    solid = porous((32, 40, 44), 2)
    ref = strut_diameters(solid, voxel_size=PAPER_VOXEL)
    got = strut_diameters(cupy.asarray(solid), voxel_size=PAPER_VOXEL)
    assert got["skeleton_voxels"] == ref["skeleton_voxels"]
    assert got["max_radius"] == pytest.approx(ref["max_radius"], rel=1e-12)
    np.testing.assert_allclose(np.sort(got["diameters"]), np.sort(ref["diameters"]), rtol=1e-5)
