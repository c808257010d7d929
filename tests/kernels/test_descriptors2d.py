"""2-D slice descriptors: analytic disks and squares (the 4-direction Crofton
quadrature's own prediction for straight edges), the plain skimage.feature.shape_index
call on whole slices, and chunked == whole."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import shape_index

from porevox.engine import reduce_blocks
from porevox.kernels.descriptors2d import (
    NoInterfaceWarning,
    descriptors_2d,
    merge_slices,
    slice_counts,
    slice_depth,
    slice_descriptors,
)


def disk(shape, centre, r, pixel=(1.0, 1.0)):
    y, x = np.ogrid[:shape[0], :shape[1]]
    return ((y * pixel[0] - centre[0]) ** 2 + (x * pixel[1] - centre[1]) ** 2) <= r * r


def square(n, side, angle_deg):
    """A square of `side` pixels, rotated by `angle_deg`, centred in an n x n image."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2 + np.array([0.23, -0.17])[:, None, None]
    a = np.deg2rad(angle_deg)
    u, v = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    return (np.abs(u) <= side / 2) & (np.abs(v) <= side / 2)


def band(plane):
    b = np.zeros(plane.shape, bool)
    dy, dx = plane[1:] != plane[:-1], plane[:, 1:] != plane[:, :-1]
    b[1:] |= dy
    b[:-1] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


def structure(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.standard_normal(shape), sigma) > 0.1).astype(np.uint8)


# --------------------------------------------------------------------------- perimeter
@pytest.mark.parametrize("r", [10, 15, 20])
def test_disk_perimeter(r):
    n = 2 * r + 8
    d = descriptors_2d(disk((n, n), (n / 2 - 0.3, n / 2 + 0.17), r))
    assert d["specific_perimeter"] == pytest.approx(2 * np.pi * r / (n * n), rel=0.02)
    assert d["relative_density"] == pytest.approx(np.pi * r * r / (n * n), rel=0.02)


def test_disk_anisotropic_pixels():
    """A disk of 0.3 µm sampled at (0.025, 0.0186) µm pixels and at square ones."""
    r = 0.3
    for pixel in ((0.025, 0.0186), (0.0186, 0.0186)):
        shape = tuple(int(round(0.8 / p)) for p in pixel)
        img = disk(shape, (0.4 - 0.007, 0.4 + 0.005), r, pixel)
        d = descriptors_2d(img, pixel_size=pixel)
        area = shape[0] * pixel[0] * shape[1] * pixel[1]
        assert d["specific_perimeter"] == pytest.approx(2 * np.pi * r / area, rel=0.02)


@pytest.mark.parametrize("angle", [0.0, 22.5, 45.0, 30.0])
def test_square_perimeter_matches_quadrature(angle):
    """Straight edges are where 4 directions are weakest: the estimate is the perimeter
    times (π/8) Σ_i |n · u_i| averaged over the 4 edge normals (0.948 axis-aligned, 1.026
    at 22.5°)."""
    n, side = 80, 40
    img = square(n, side, angle)
    u = np.deg2rad([0.0, 45.0, 90.0, 135.0])
    normals = np.deg2rad(angle + np.array([0.0, 90.0]))
    factor = np.mean([np.pi / 8 * np.sum(np.abs(np.cos(u - a))) for a in normals])
    d = descriptors_2d(img)
    assert d["specific_perimeter"] == pytest.approx(factor * 4 * side / (n * n), rel=0.015)


def test_one_phase_slices_have_zero_perimeter_and_nan_shape_index():
    vol = np.zeros((3, 30, 30), np.uint8)
    vol[1] = 1
    vol[2] = disk((30, 30), (15, 15), 10)
    merged = slice_counts(vol)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoInterfaceWarning)  # slice 2 has a band: no warning
        d = slice_descriptors(merged, (1.0, 1.0, 1.0), 1.0)
    np.testing.assert_array_equal(d["specific_perimeter"][:2], [0.0, 0.0])
    np.testing.assert_array_equal(d["relative_density"][:2], [0.0, 1.0])
    assert np.isnan(d["shape_index_mean_per_slice"][:2]).all()
    assert np.isfinite(d["shape_index_mean_per_slice"][2])
    assert d["specific_perimeter_2d"] == pytest.approx(d["specific_perimeter"][2] / 3)


@pytest.mark.parametrize("fill", [0, 1])
def test_no_interface_warns(fill):
    vol = np.full((2, 12, 13), fill, np.uint8)
    with pytest.warns(NoInterfaceWarning):
        d = slice_descriptors(slice_counts(vol), (1.0, 1.0, 1.0), 1.0)
    assert math.isnan(d["shape_index_mean"]) and d["specific_perimeter_2d"] == 0.0
    with pytest.warns(NoInterfaceWarning):
        assert math.isnan(descriptors_2d(vol[0])["shape_index_mean"])


def test_slice_edges_are_not_interface():
    """A half plane touching the slice's edges: its straight edge has shape index ±1/2
    everywhere, also in the first and last rows (mode="nearest"), and the perimeter is
    the one edge's length (the slice's outer edges are not counted)."""
    img = np.zeros((40, 50), np.uint8)
    img[:, :20] = 1
    si = shape_index(img.astype(float), sigma=1.0, mode="nearest")[band(img)]
    np.testing.assert_allclose(np.abs(si), 0.5, atol=1e-6)
    d = descriptors_2d(img)
    assert d["shape_index_std"] == pytest.approx(0.5, abs=1e-6)  # +1/2 on one side, -1/2 on the other
    assert d["specific_perimeter"] == pytest.approx(np.pi / 8 * (1 + math.sqrt(2)) * 40 / (40 * 50))


# --------------------------------------------------------------------------- shape index
@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_shape_index_equals_plain_skimage(sigma):
    vol = structure((4, 45, 52), seed=1)
    d = slice_descriptors(slice_counts(vol, sigma=sigma), (1.0, 1.0, 1.0), sigma)
    values = []
    for z, plane in enumerate(vol):
        v = shape_index(plane.astype(float), sigma=sigma, mode="nearest")[band(plane)]
        values.append(v)
        assert d["shape_index_mean_per_slice"][z] == pytest.approx(np.nanmean(v), rel=1e-12, abs=1e-15)
        assert d["shape_index_std_per_slice"][z] == pytest.approx(np.nanstd(v), rel=1e-9)
    v = np.concatenate(values)
    assert d["shape_index_mean"] == pytest.approx(np.nanmean(v), rel=1e-12)
    assert d["shape_index_std"] == pytest.approx(np.nanstd(v), rel=1e-9)
    assert d["shape_index_sigma"] == sigma


# --------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("sigma", [1.0, 1.6])
def test_chunked_equals_whole(sigma):
    vol = structure((7, 50, 60), seed=2)
    vol[3] = 0
    whole = slice_counts(vol, sigma=sigma)
    parts = reduce_blocks(slice_counts, vol, slice_depth(sigma), chunks=(3, 17, 23), sigma=sigma)
    merged = merge_slices(parts)
    for key, value in whole.items():
        if key.startswith("si_sum"):
            np.testing.assert_allclose(merged[key], value, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(merged[key], value)
    a = slice_descriptors(merged, (0.025, 0.0186, 0.0186), sigma)
    b = slice_descriptors(whole, (0.025, 0.0186, 0.0186), sigma)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
    assert slice_depth(sigma) == (0, int(4 * sigma + 0.5) + 2, int(4 * sigma + 0.5) + 2)


def test_merge_keeps_z_order():
    vol = structure((5, 20, 20), seed=3)
    parts = [slice_counts(vol[3:], offset=(3, 0, 0), volume_shape=vol.shape),
             slice_counts(vol[:3], volume_shape=vol.shape)]
    merged = merge_slices(parts)
    whole = slice_counts(vol)
    for key in whole:
        np.testing.assert_array_equal(merged[key], whole[key])


def test_descriptors_2d_equals_slice_descriptors():
    vol = structure((1, 40, 44), seed=4)
    d = descriptors_2d(vol[0], pixel_size=(0.02, 0.03), sigma=1.5)
    s = slice_descriptors(slice_counts(vol, sigma=1.5), (1.0, 0.02, 0.03), 1.5)
    assert d["specific_perimeter"] == s["specific_perimeter_2d"]
    assert d["shape_index_mean"] == s["shape_index_mean"]
    assert d["relative_density"] == pytest.approx(vol.mean())
    assert d["shape_index_sigma"] == 1.5


# --------------------------------------------------------------------------- contract
def test_input_not_modified():
    vol = structure((3, 30, 31), seed=5)
    before = vol.copy()
    slice_counts(vol)
    descriptors_2d(vol[0])
    np.testing.assert_array_equal(vol, before)


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match=r"solid must be 3-D \(z, y, x\); got 2-D"):
        slice_counts(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"image must be 2-D \(y, x\); got 3-D .*volume\[z\]"):
        descriptors_2d(np.zeros((2, 5, 5), np.uint8))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        slice_depth(0.0)
    with pytest.raises(ValueError, match="pixel_size must be 2 positive numbers"):
        descriptors_2d(np.zeros((5, 5), np.uint8), pixel_size=(1.0,))
    vol = structure((2, 30, 30))
    with pytest.raises(ValueError, match="halo"):
        slice_counts(vol[:, :15], core=(slice(0, 2), slice(0, 15), slice(0, 30)), volume_shape=vol.shape)
