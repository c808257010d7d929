"""S2 and chord lengths of 2-D images against brute force and hand-counted cases."""

import numpy as np
import pytest

from porevox.kernels.statistics2d import chord_lengths, two_point_correlation


def brute_s2(img, lags):
    """S2 at each (dy, dx) lag by direct counting over the pairs inside the image."""
    ny, nx = img.shape
    out = {}
    for dy, dx in lags:
        a = img[max(0, -dy):ny - max(0, dy), max(0, -dx):nx - max(0, dx)]
        b = img[max(0, dy):ny + min(0, dy), max(0, dx):nx + min(0, dx)]
        out[(dy, dx)] = (np.sum(a & b), a.size)
    return out


def test_s2_equals_brute_force_radial_average():
    rng = np.random.default_rng(0)
    img = rng.random((23, 31)) > 0.6
    r, s2 = two_point_correlation(img, max_distance=6)
    lags = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7) if np.hypot(dy, dx) <= 6.5]
    counts = brute_s2(img, lags)
    for k, rk in enumerate(r):
        sel = [lag for lag in lags if round(np.hypot(*lag)) == rk]
        num = sum(counts[lag][0] for lag in sel)
        den = sum(counts[lag][1] for lag in sel)
        assert s2[k] == pytest.approx(num / den, rel=1e-9), rk
    assert r[0] == 0 and s2[0] == pytest.approx(img.mean())


def test_s2_of_uncorrelated_noise_tends_to_d_squared():
    img = np.random.default_rng(1).random((200, 200)) > 0.7
    r, s2 = two_point_correlation(img, pixel_size=(0.5, 0.5), max_distance=10)
    assert r[1] == 0.5 and s2[0] == pytest.approx(img.mean())
    np.testing.assert_allclose(s2[4:], img.mean() ** 2, atol=0.005)


def test_chord_lengths_hand_counted():
    img = np.array([[0, 1, 1, 0, 1, 0, 0],
                    [1, 1, 0, 0, 1, 1, 1],
                    [0, 0, 0, 1, 1, 1, 0]], dtype=np.uint8)
    solid = chord_lengths(img, pixel_size=(2.0, 0.5))
    # rows: [1,1] inside -> 2 and [1] -> 1; row 1: both runs touch an edge; row 2: [1,1,1] -> 3
    np.testing.assert_array_equal(np.sort(solid["x"]), np.array([1, 2, 3]) * 0.5)
    # columns (length 3): cols 0 and 6 [0,1,0] -> 1 each; col 1 [1,1,0] and col 2 [1,0,0]
    # touch the top; cols 3 and 5 touch the bottom; col 4 [1,1,1] touches both
    np.testing.assert_array_equal(np.sort(solid["y"]), np.array([1, 1]) * 2.0)
    pore = chord_lengths(img, phase=0)
    np.testing.assert_array_equal(np.sort(pore["x"]), [1, 2])
    with pytest.raises(ValueError, match="phase must be 1"):
        chord_lengths(img, phase=2)
