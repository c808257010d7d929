"""Kernels of curtaining removal and shading correction, against analytic references."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from porevox.kernels import preprocess as kp
from tests.conftest import porous

VS = (0.05, 0.04, 0.04)   # µm (z, y, x)


def rmse(a, b, mask=None):
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return float(np.sqrt(d[mask].mean() if mask is not None else d.mean()))


def stripe_pattern(shape, voxel_size=VS):
    """Curtains: constant along y, a few periods (0.1–0.45 µm) across x, drifting in z."""
    z = np.arange(shape[0])[:, None] * voxel_size[0]
    x = np.arange(shape[2])[None, :] * voxel_size[2]
    s = sum(a * np.sin(2 * np.pi * x / p + ph + 0.4 * z)
            for a, p, ph in [(6, 0.1, 0.3), (5, 0.23, 1.0), (4, 0.45, 2.0), (3, 0.17, 4.0)])
    return s[:, None, :]


def smooth_image(shape, rng):
    f = ndi.gaussian_filter(rng.standard_normal(shape), (2, 12, 12))
    return 100 + 40 * f / f.std()


def two_phase(shape, rng, pore=40.0, copper=170.0, noise=6.0):
    solid = porous(shape, rng, porosity=0.45, sigma=2.0)
    flat = np.where(solid, copper, pore) + noise * rng.standard_normal(shape)
    return solid, flat


def gain_field(shape, depth=0.2):
    fy = np.linspace(0, 1, shape[1])[:, None]
    fx = np.linspace(0, 1, shape[2])[None, :]
    return (1 - depth * (0.6 * fy + 0.4 * fx**2))[None]


# --------------------------------------------------------------------------- destriping
def test_destripe_removes_stripes_from_smooth_image(rng):
    clean = smooth_image((16, 96, 128), rng)
    raw = clean + stripe_pattern(clean.shape)
    out = kp.destripe(raw, voxel_size=VS)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert rmse(out, clean) < rmse(raw, clean) / 5          # measured: 6.56 -> 0.71 (9×)
    classic = kp.destripe(raw, voxel_size=VS, z_sigma=0.0, adaptive=False)   # one slice at a time
    assert rmse(classic, clean) < rmse(raw, clean) / 3


def test_destripe_leaves_stripe_free_image_nearly_unchanged(rng):
    clean = smooth_image((16, 96, 128), rng)
    out = kp.destripe(clean, voxel_size=VS)
    assert rmse(out, clean) < 0.03 * clean.std()           # measured: 1.2 %


def test_destripe_on_porous_structure_z_averaging_helps(rng):
    """A two-phase structure puts its own column means on the ky = 0 line; averaging
    the stripe estimate over slices tells them from curtains."""
    solid = porous((32, 96, 128), rng, porosity=0.4, sigma=1.5)
    clean = np.where(solid, 160.0, 50.0)
    raw = clean + stripe_pattern(clean.shape)
    single = rmse(kp.destripe(raw, voxel_size=VS, z_sigma=0.0), clean)
    averaged = rmse(kp.destripe(raw, voxel_size=VS, z_sigma=0.5), clean)
    assert averaged < rmse(raw, clean) / 2.5                # measured: 6.56 -> 2.1 (3.1×)
    assert averaged < 0.75 * single                         # measured: 4.3 -> 2.1


def test_destripe_keeps_long_periods_and_mean():
    """Brightness varying slowly across x (period ≫ max_period) is not curtaining."""
    x = np.arange(128) * VS[2]
    ramp = 100 + 30 * np.cos(2 * np.pi * x / 10.0)           # 10 µm period
    image = np.broadcast_to(ramp, (4, 64, 128)).astype(np.float64)
    out = kp.destripe(image, voxel_size=VS, max_period=1.0)
    assert np.abs(out - image).max() < 0.01 * 30             # < 1 % of the amplitude


def test_highpass_weights_match_documented_cutoffs():
    vx, p = 0.01, 0.5
    nx = 4000
    kx = np.arange(nx) / (2 * nx * vx)
    w = kp.highpass_weights(nx, vx, p)
    assert w[0] == 0
    assert np.all(w[kx >= 1 / p] >= 0.95 - 1e-9)
    assert np.all(w[(kx > 0) & (kx <= 0.5 / p)] <= 0.05 + 1e-9)
    assert np.all(np.diff(w) >= 0)


def test_notch_weights():
    assert kp.notch_weights(100, 0.04, 0.0).tolist() == [1.0]
    g = kp.notch_weights(100, 0.04, 0.5)
    ky = np.arange(g.size) / (2 * 100 * 0.04)
    assert np.allclose(g, np.exp(-0.5 * (ky / 0.5) ** 2)) and g[-1] >= 0.01 and g.size > 1


def test_destripe_blocks_of_slices_equal_whole(rng):
    image = (smooth_image((13, 40, 56), rng) + stripe_pattern((13, 40, 56))).astype(np.float32)
    whole = kp.destripe(image, voxel_size=VS, band=0.3)
    lines = np.concatenate([kp.stripe_lines(image[a:a + 5], voxel_size=VS, band=0.3)
                            for a in range(0, 13, 5)])
    assert np.array_equal(lines, kp.stripe_lines(image, voxel_size=VS, band=0.3))
    spectrum = kp.stripe_spectrum(lines, voxel_size=VS, ny=40, band=0.3)
    parts = [kp.remove_stripes(image[a:a + 5], spectrum[a:a + 5]) for a in range(0, 13, 5)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_stripe_rms_is_parseval(rng):
    image = smooth_image((8, 32, 48), rng) + stripe_pattern((8, 32, 48))
    lines = kp.stripe_lines(image, voxel_size=VS)
    spectrum = kp.stripe_spectrum(lines, voxel_size=VS, ny=32)
    removed = image - kp.remove_stripes(image, spectrum)
    assert kp.stripe_rms(spectrum, image.shape) == pytest.approx(np.sqrt(np.mean(removed**2)), rel=1e-4)


def test_destripe_input_not_modified_and_single_slice(rng):
    image = (smooth_image((1, 32, 48), rng) + stripe_pattern((1, 32, 48))).astype(np.uint8)
    copy = image.copy()
    out = kp.destripe(image, voxel_size=VS)
    assert np.array_equal(image, copy) and out.shape == image.shape


def test_destripe_wrong_ndim_and_bad_params_raise():
    with pytest.raises(ValueError, match="3-D"):
        kp.destripe(np.zeros((8, 8)), voxel_size=VS)
    for bad in ({"max_period": 0}, {"band": -1.0}, {"z_sigma": float("nan")}, {"n_reference": 0}):
        with pytest.raises(ValueError):
            kp.destripe(np.zeros((2, 8, 8)), voxel_size=VS, **bad)


# --------------------------------------------------------------------------- landmarks
def test_otsu_bin_equals_skimage(rng):
    for _ in range(5):
        values = np.concatenate([rng.normal(rng.uniform(20, 90), 10, 4000),
                                 rng.normal(rng.uniform(120, 200), 15, 6000)])
        image = np.clip(values, 0, 255).astype(np.uint8)
        assert kp.otsu_bin(np.bincount(image, minlength=256)) == threshold_otsu(image)


@pytest.mark.parametrize("smooth_bins", [0.0, 2.0, 4.0])
def test_landmarks_of_two_gaussians(rng, smooth_bins):
    values = np.concatenate([rng.normal(52.3, 8, 300_000), rng.normal(171.6, 12, 500_000)])
    counts = np.bincount(np.clip(np.rint(values), 0, 255).astype(int), minlength=256)
    m = kp.histogram_landmarks(counts, sigma=smooth_bins)
    assert m["valid"] and m["count"] == values.size
    assert abs(m["pore"] - 52.3) <= 1.5 and abs(m["copper"] - 171.6) <= 1.5
    assert 52.3 < m["threshold"] < 171.6
    assert m["fraction"] == pytest.approx(5 / 8, abs=0.01)


def test_copper_landmark_is_the_brightest_peak_not_the_tallest(rng):
    """A very porous region: the shine-through hump above the threshold outgrows the
    copper peak; copper is still the brightest prominent peak."""
    values = np.concatenate([rng.normal(30, 8, 500_000), rng.normal(95, 15, 350_000),
                             rng.normal(160, 10, 150_000)])
    counts = np.bincount(np.clip(np.rint(values), 0, 255).astype(int), minlength=256)
    m = kp.histogram_landmarks(counts, sigma=2.0)
    assert abs(m["copper"] - 160) <= 2 and abs(m["pore"] - 30) <= 2


def test_landmarks_respect_bins_and_pore_window(rng):
    lo, width = 1000.0, 16.0         # e.g. uint16 data binned 16 wide from 1000
    pore = np.concatenate([rng.normal(3, 1.0, 20_000), rng.normal(9, 1.5, 30_000)])   # two pore peaks
    values = np.concatenate([pore, rng.normal(30, 2, 80_000)])
    counts = np.bincount(np.clip(np.rint(values), 0, 63).astype(int), minlength=64)
    m = kp.histogram_landmarks(counts, lo=lo, width=width, sigma=1.0)
    assert abs(m["copper"] - (lo + 30 * width)) <= 1.5 * width
    assert abs(m["pore"] - (lo + 9 * width)) <= 1.5 * width     # the higher pore peak
    near = kp.histogram_landmarks(counts, lo=lo, width=width, sigma=1.0, pore_near=lo + 3 * width,
                                  window=2.5 * width)
    assert abs(near["pore"] - (lo + 3 * width)) <= 1.0 * width


def test_landmarks_validity_rules(rng):
    values = np.concatenate([rng.normal(50, 6, 200), rng.normal(160, 8, 9_800)])   # 2 % pores
    counts = np.bincount(np.clip(np.rint(values), 0, 255).astype(int), minlength=256)
    assert kp.histogram_landmarks(counts, sigma=2.0, min_fraction=0.01)["valid"]
    assert not kp.histogram_landmarks(counts, sigma=2.0, min_fraction=0.05)["valid"]
    assert not kp.histogram_landmarks(counts, sigma=2.0, min_count=20_000)["valid"]
    empty = kp.histogram_landmarks(np.zeros(256))
    assert not empty["valid"] and np.isnan(empty["copper"]) and empty["count"] == 0


def test_pooled_pore_line():
    copper = np.array([150.0, 140, 130, 120, 110, 145])
    pore = 0.3 * copper + 2.0
    pore[-1] = 90.0                                          # one outlier
    k, c = kp.pooled_pore_line(pore, copper, np.ones(6, bool))
    assert k == pytest.approx(0.3) and c == pytest.approx(2.0)
    k, _ = kp.pooled_pore_line(copper * 1.5, copper, np.ones(6, bool))
    assert k == 1.0                                          # clipped to [0, 1]
    k, c = kp.pooled_pore_line(pore[:2], copper[:2], np.ones(2, bool))
    assert k == 1.0 and c == pytest.approx(np.median(pore[:2] - copper[:2]))


# --------------------------------------------------------------------------- shading
def test_check_regions_forms():
    assert kp.check_regions(4, (10, 20, 20)) == (1, 4, 4)
    assert kp.check_regions((3, 5), (10, 20, 20)) == (1, 3, 5)
    assert kp.check_regions((10, 2, 2), (10, 20, 20)) == (10, 2, 2)     # one region per slice


def test_region_bounds_and_centres():
    assert kp.region_bounds(10, 3).tolist() == [0, 3, 6, 10]
    assert kp.region_centres(10, 3).tolist() == [1.0, 4.0, 7.5]


def test_region_histograms_blocks_sum_to_whole(rng):
    image = rng.integers(0, 256, (9, 31, 27), dtype=np.uint8)
    regions = (2, 3, 4)
    whole = kp.region_histograms(image, origin=(0, 0, 0), shape=image.shape, regions=regions,
                                 lo=0, width=1, nbins=256)
    assert whole.shape == (24, 256) and whole.sum() == image.size
    b = kp.region_bounds(31, 3)
    assert np.array_equal(whole[(1 * 3 + 2) * 4 + 0],
                          np.bincount(image[4:9, b[2]:b[3], 0:6].ravel(), minlength=256))
    total = sum(kp.region_histograms(image[z:z + 4, y:y + 10, x:x + 11], origin=(z, y, x), shape=image.shape,
                                     regions=regions, lo=0, width=1, nbins=256)
                for z in range(0, 9, 4) for y in range(0, 31, 10) for x in range(0, 27, 11))
    assert np.array_equal(total, whole)


def test_histogram_bins():
    assert kp.histogram_bins(np.uint8) == {"lo": 0.0, "width": 1.0, "nbins": 256}
    b = kp.histogram_bins(np.uint16, 1000, 9000)
    assert b["width"] == 4.0 and b["nbins"] == 2001 and b["lo"] == 1000.0
    assert kp.histogram_bins(np.uint16, 10, 500)["width"] == 1.0
    f = kp.histogram_bins(np.float32, -1.0, 1.0)
    assert f["nbins"] == kp.MAX_BINS and f["width"] == pytest.approx(2 / (kp.MAX_BINS - 1))
    with pytest.raises(ValueError, match="min and max"):
        kp.histogram_bins(np.uint16)


def test_linear_correction_recovers_multiplicative_shading(rng):
    solid, flat = two_phase((16, 96, 96), rng)
    gain = gain_field(flat.shape)
    raw = np.clip(np.rint(flat * gain), 0, 255).astype(np.uint8)
    out = kp.correct_shading(raw, regions=6, method="linear")
    assert out.dtype == np.uint8
    assert rmse(out, flat) < 0.25 * rmse(raw, flat)
    assert rmse(out, flat, solid) < 3.5 and rmse(out, flat, ~solid) < 3.5   # measured ~1.9 / ~2.0
    shifted = kp.correct_shading(raw, regions=6, method="shift")
    # the shift moves pores as far as copper: right for copper, too bright for pores
    assert rmse(shifted, flat, solid) < 3.5
    assert rmse(shifted, flat, ~solid) > 2 * rmse(out, flat, ~solid)


def test_shift_and_linear_recover_additive_shading(rng):
    solid, flat = two_phase((16, 96, 96), rng)
    offset = -30 * (1 - gain_field(flat.shape, 1.0))                      # 0 .. -30 gray values
    raw = np.clip(np.rint(flat + offset), 0, 255).astype(np.uint8)
    for method in ("shift", "linear"):
        out = kp.correct_shading(raw, regions=6, method=method)
        assert rmse(out, flat) < 0.25 * rmse(raw, flat)
        assert rmse(out, flat, solid) < 3.0 and rmse(out, flat, ~solid) < 3.0


def test_correction_is_identity_without_shading(rng):
    solid, flat = two_phase((8, 64, 64), rng)
    raw = np.clip(np.rint(flat), 0, 255).astype(np.uint8)
    out = kp.correct_shading(raw, regions=4)
    assert rmse(out, raw) < 3.0


def test_reference_is_brightest_copper_and_invalid_regions_filled():
    copper = np.array([[[150.0, 160.0], [140.0, 999.0]]])
    pore = np.array([[[30.0, 32.0], [28.0, 10.0]]])
    valid = np.array([[[True, True], [True, False]]])
    c = kp.shading_corrections(pore, copper, valid, "shift")
    assert c["reference"] == (0, 0, 1) and c["reference_copper"] == 160.0 and c["filled"] == 1
    assert np.allclose(c["offset"], [[[10.0, 0.0], [20.0, c["offset"][0, 1, 0]]]])
    assert c["offset"][0, 1, 1] in (c["offset"][0, 0, 1], c["offset"][0, 1, 0])   # nearest valid
    assert np.all(c["gain"] == 1)
    lin = kp.shading_corrections(pore, copper, valid, "linear")
    mapped = lin["gain"] * lin["copper_used"] + lin["offset"]
    assert np.allclose(mapped[valid], 160.0)
    with pytest.raises(ValueError, match="no region"):
        kp.shading_corrections(pore, copper, np.zeros_like(valid), "linear")


def test_maps_interpolate_between_centres_and_are_flat_at_edges():
    gain = np.array([[[1.0, 2.0]]])            # 1 × 1 × 2 regions
    offset = np.zeros_like(gain)
    maps = list(kp.correction_maps((0, 0, 0), (1, 2, 10), (1, 2, 10), (1, 1, 2), gain, offset))
    g = maps[0][0][0]                          # centres at x = 2 and 7
    assert np.allclose(g[:3], 1.0) and np.allclose(g[7:], 2.0)
    assert np.allclose(g[2:8], 1 + np.arange(6) / 5)


def test_apply_shading_blocks_equal_whole(rng):
    image = rng.integers(0, 256, (9, 31, 27), dtype=np.uint8)
    regions = (3, 4, 3)
    gain = rng.uniform(0.8, 1.2, regions)
    offset = rng.uniform(-10, 10, regions)
    whole = kp.apply_shading(image, origin=(0, 0, 0), shape=image.shape, regions=regions, gain=gain,
                             offset=offset)
    out = np.empty_like(whole)
    for z in range(0, 9, 4):
        for y in range(0, 31, 10):
            for x in range(0, 27, 11):
                box = np.s_[z:z + 4, y:y + 10, x:x + 11]
                out[box] = kp.apply_shading(image[box], origin=(z, y, x), shape=image.shape,
                                            regions=regions, gain=gain, offset=offset)
    assert np.array_equal(out, whole)


def test_to_dtype_rounds_and_clips():
    v = np.array([-3.0, 0.5, 1.5, 254.6, 300.0])
    assert kp.to_dtype(v, np.uint8).tolist() == [0, 0, 2, 255, 255]
    assert kp.to_dtype(v, np.float32).dtype == np.float32


def test_correct_shading_uint16_and_per_slice(rng):
    solid, flat = two_phase((6, 64, 64), rng, pore=4000.0, copper=20000.0, noise=500.0)
    raw = np.rint(flat * gain_field(flat.shape)).astype(np.uint16)
    out = kp.correct_shading(raw, regions=4)
    assert out.dtype == np.uint16 and rmse(out, flat) < 0.3 * rmse(raw, flat)
    per_slice = kp.correct_shading(raw * np.linspace(0.8, 1.0, 6)[:, None, None], regions=(6, 1, 1),
                                   dtype=np.uint16)
    means = np.array([per_slice[z][solid[z]].mean() for z in range(6)])
    assert np.ptp(means) < 0.03 * means.mean()


def test_shading_bad_params_raise():
    image = np.zeros((4, 16, 16), np.uint8)
    for bad, match in (({"regions": (1, 32, 2)}, "exceed"), ({"regions": (0, 2, 2)}, "positive"),
                       ({"regions": "a"}, "regions"), ({"method": "gamma"}, "method"),
                       ({"smooth": 0.7}, "smooth"), ({"min_fraction": -0.1}, "min_fraction"),
                       ({"min_count": 0}, "min_count")):
        with pytest.raises(ValueError, match=match):
            kp.correct_shading(image, **bad)
