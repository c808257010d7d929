import dask.array as da
import numpy as np
import pytest

from porevox.engine import count_equal, histogram, summary_stats
from porevox.engine.reductions import bincount

ODD = (17, 23, 64)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_histogram_integer_equals_numpy(rng, dtype):
    info = np.iinfo(dtype)
    img = rng.integers(0, info.max, (40, 50, 70), dtype=dtype, endpoint=True)
    counts, edges = histogram(da.from_array(img, chunks=ODD))
    ref, ref_edges = np.histogram(img, bins=info.max + 1, range=(0, info.max + 1))
    np.testing.assert_array_equal(counts, ref)
    np.testing.assert_array_equal(edges, ref_edges)
    assert counts.sum() == img.size


def test_histogram_float_equals_numpy(rng):
    img = rng.normal(size=(30, 40, 50)).astype(np.float32)
    counts, edges = histogram(da.from_array(img, chunks=ODD), bins=100)
    ref, ref_edges = np.histogram(img, bins=100)
    np.testing.assert_array_equal(counts, ref)
    np.testing.assert_array_equal(edges, ref_edges)


def test_histogram_binned_integer_with_range(rng):
    img = rng.integers(0, 4096, (20, 30, 40), dtype=np.uint16)
    counts, _ = histogram(da.from_array(img, chunks=ODD), bins=64, range=(0, 4096))
    np.testing.assert_array_equal(counts, np.histogram(img, bins=64, range=(0, 4096))[0])


def test_histogram_on_cluster(rng, client):
    img = rng.integers(0, 255, (40, 50, 70), dtype=np.uint8)
    counts, _ = histogram(da.from_array(img, chunks=ODD))
    np.testing.assert_array_equal(counts, np.bincount(img.ravel(), minlength=256))


def test_bincount_kernel(rng):
    img = rng.integers(0, 300, (5, 6, 7), dtype=np.uint16)
    np.testing.assert_array_equal(bincount(img, 300), np.bincount(img.ravel(), minlength=300))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        bincount(img.astype(np.int32))
    with pytest.raises(ValueError, match="too small"):
        bincount(img, 10)


def test_summary_stats_and_count(rng):
    img = rng.integers(0, 3, (30, 31, 32), dtype=np.uint8)
    s = summary_stats(da.from_array(img, chunks=ODD))
    assert s["min"] == img.min() and s["max"] == img.max() and s["count"] == img.size
    assert s["mean"] == pytest.approx(img.mean()) and s["std"] == pytest.approx(img.std())
    assert count_equal(da.from_array(img, chunks=ODD), 1) == int((img == 1).sum())
