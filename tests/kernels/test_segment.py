import numpy as np
import pytest
from skimage.filters import threshold_otsu

from porevox.kernels import segment as ks


def mixture(n, weights, means, sds, rng, top=255):
    parts = [rng.normal(m, s, int(n * w)) for w, m, s in zip(weights, means, sds)]
    return np.clip(np.rint(np.concatenate(parts)), 0, top).astype(np.uint8 if top == 255 else np.uint16)


def counts_edges(values, top):
    counts = np.bincount(values, minlength=top + 1)
    return counts, np.arange(top + 2, dtype=np.float64)


@pytest.mark.parametrize("dtype_top", [255, 65535])
def test_otsu_from_histogram_equals_skimage(rng, dtype_top):
    scale = dtype_top / 255
    values = mixture(200_000, (0.4, 0.6), (40 * scale, 160 * scale), (12 * scale, 15 * scale), rng,
                     dtype_top)
    counts, edges = counts_edges(values, dtype_top)
    assert ks.otsu_threshold(counts, edges) == threshold_otsu(values)


def test_otsu_float_histogram_matches_skimage(rng):
    values = rng.normal(0, 1, 50_000)
    values[:20_000] += 4
    counts, edges = np.histogram(values, bins=256)
    assert ks.otsu_threshold(counts, edges) == pytest.approx(threshold_otsu(values, nbins=256), abs=1e-12)


@pytest.mark.parametrize("mu, sd", [(160, 12), (170, 8), (150, 16)])
def test_hybrid_threshold_sits_at_the_foot_of_the_copper_peak(rng, mu, sd):
    """For a Gaussian copper peak of width σ (histogram smoothed by σs), the second
    derivative peaks at μ − √3·sqrt(σ² + σs²): the rule's documented answer."""
    values = mixture(2_000_000, (0.4, 0.6), (40, mu), (10, sd), rng)
    counts, edges = counts_edges(values, 255)
    r = ks.hybrid_threshold(counts, edges)
    expect = mu - np.sqrt(3) * np.hypot(sd, r["sigma"])
    assert not r["fallback"]
    assert abs(r["threshold"] - expect) <= 1.5
    assert r["otsu"] < r["threshold"] < r["copper_mode"]
    assert abs(r["copper_mode"] - mu) <= 1 and abs(r["pore_mode"] - 40) <= 1


def test_hybrid_threshold_puts_a_shine_through_shoulder_on_the_pore_side(rng):
    """Three populations: pore (dark), shine-through (grey, between), copper (bright):
    the threshold lies between the grey shoulder and copper, above Otsu's."""
    values = mixture(2_000_000, (0.3, 0.15, 0.55), (30, 110, 170), (10, 12, 10), rng)
    counts, edges = counts_edges(values, 255)
    r = ks.hybrid_threshold(counts, edges)
    assert 130 < r["threshold"] < 160
    assert r["threshold"] > r["otsu"]
    classes = ks.classify(np.array([30, 110, 170]), r["otsu"], r["threshold"])
    assert classes.tolist() == [ks.PORE, ks.SHINE, ks.COPPER] or classes.tolist() == [
        ks.PORE, ks.PORE, ks.COPPER]


def test_hybrid_threshold_falls_back_to_otsu_without_a_copper_foot():
    counts = np.zeros(256)
    counts[20:41] = 1000
    counts[100:] = np.linspace(0, 3000, 156)   # copper saturating at the top: no peak, no foot
    r = ks.hybrid_threshold(counts, np.arange(257.0))
    assert r["fallback"] and r["threshold"] == r["otsu"]


def test_hybrid_threshold_bad_smooth():
    with pytest.raises(ValueError, match="smooth"):
        ks.hybrid_threshold(np.ones(10), np.arange(11.0), smooth=0)


def test_classify_rule():
    out = ks.classify(np.array([10, 100, 101, 150, 151]), otsu=100, hybrid=150)
    assert out.tolist() == [ks.PORE, ks.PORE, ks.SHINE, ks.SHINE, ks.COPPER]


def test_percentile_matches_numpy(rng):
    values = rng.integers(0, 256, 100_000).astype(np.uint8)
    counts, edges = counts_edges(values, 255)
    for q in (0.1, 50, 99.9):
        assert ks.percentile(counts, edges, q) == np.percentile(values, q, method="inverted_cdf")


def test_annotate_superpixels_carry_their_mean_class(rng):
    """A slice of three flat regions plus noise: each region is annotated with the
    class of its gray level, slices independently."""
    img = np.zeros((2, 60, 90))
    img[:, :, :30], img[:, :, 30:60], img[:, :, 60:] = 30, 110, 170
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    out = ks.annotate(img, otsu=70, hybrid=140, step=(5, 5), compactness=0.3)
    expect = np.zeros(img.shape, np.uint8)
    expect[:, :, :30], expect[:, :, 30:60], expect[:, :, 60:] = ks.PORE, ks.SHINE, ks.COPPER
    assert (out == expect).mean() > 0.99
    assert np.array_equal(ks.annotate(img[1:], otsu=70, hybrid=140, step=(5, 5), compactness=0.3),
                          out[1:])
    ref = ks.annotate(img, otsu=70, hybrid=140, step=(5, 5), compactness=0.3, method="skimage")
    assert np.array_equal(ref, out)   # the numba SLIC reproduces scikit-image's labels
