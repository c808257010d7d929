import numpy as np
import pytest
from skimage.filters import threshold_otsu

from porevox.engine import open_volume
from porevox.errors import InvalidVolumeError
from porevox.kernels import segment as ks
from porevox.pipelines import segment_volume
from porevox.pipelines.score import score_volume
from porevox.pipelines.segment import gray_stats, segment, superpixel_step
from tests.conftest import twin_volume

ODD = (5, 37, 50)


def whole_stats(image):
    counts = np.bincount(image.ravel(), minlength=256)
    edges = np.arange(257.0)
    stats = ks.hybrid_threshold(counts, edges)
    stats["lo"], stats["hi"] = ks.percentile(counts, edges, 0.1), ks.percentile(counts, edges, 99.9)
    return stats


def test_gray_stats_equal_whole_volume(twin_arrays, client):
    import dask.array as da

    image = twin_arrays["image"]
    got = gray_stats(da.from_array(image, chunks=ODD))
    assert got == whole_stats(image)
    assert got["otsu"] == threshold_otsu(image)


def test_otsu_stage_chunked_equals_skimage_on_whole(tmp_path, twin_arrays, client):
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, ODD)
    r = segment_volume(vol.path, "otsu")
    assert r["written"] == ["labels/otsu"] and r["source"] == "image"
    image = twin_arrays["image"]
    out = open_volume(vol.path, mode="r").array("labels/otsu")
    assert out.dtype == np.uint8 and out.chunks == ODD
    assert np.array_equal(out[:], (image > threshold_otsu(image)).astype(np.uint8))
    assert segment_volume(vol.path, "otsu")["skipped"]


def test_fixed_threshold_stage_equals_the_plain_comparison(tmp_path, twin_arrays, client):
    """``threshold``: 1 where gray >= the value the user gives, chunked == the plain
    comparison on the whole image; the value recorded; the API gives the same."""
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, ODD)
    image = twin_arrays["image"]
    t = int(np.median(image))
    r = segment_volume(vol.path, "threshold", threshold=t)
    assert r["written"] == ["labels/threshold"] and r["thresholds"]["fixed"] == t
    out = open_volume(vol.path, mode="r").array("labels/threshold")
    assert np.array_equal(out[:], (image >= t).astype(np.uint8))
    assert open_volume(vol.path, mode="r").provenance["segment:threshold"]["params"]["fixed_threshold"] == t
    assert np.array_equal(segment(vol.path, "threshold", threshold=t).compute(), out[:])
    with pytest.raises(ValueError, match="needs --threshold"):
        segment(image, "threshold")


def test_hybrid_stage_chunked_equals_whole(tmp_path, twin_arrays, client):
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, ODD)
    r = segment_volume(vol.path, "hybrid")
    assert r["written"] == ["labels/hybrid_annotation", "labels/hybrid"]
    image = twin_arrays["image"]
    stats = whole_stats(image)
    expect = ks.annotate(image, otsu=stats["otsu"], hybrid=stats["threshold"],
                         step=superpixel_step(twin_arrays["voxel_size"], 0.1), compactness=0.2)
    vol = open_volume(vol.path, mode="r")
    assert np.array_equal(vol.array("labels/hybrid_annotation")[:], expect)
    assert np.array_equal(vol.array("labels/hybrid")[:], (expect == 0).astype(np.uint8))
    assert set(np.unique(expect)) == {0, 1, 2}
    # the hybrid rule moves shine-through to the pore side: fewer pore voxels called
    # copper than Otsu, and the thresholds are recorded
    record = vol.provenance["segment:hybrid"]
    assert record["params"]["threshold"] > record["params"]["otsu"]
    truth = twin_arrays["truth"]
    hybrid, otsu = expect == 0, image > stats["otsu"]
    assert (hybrid & (truth == 0)).sum() < (otsu & (truth == 0)).sum()


def test_hybrid_scores_above_otsu_on_the_twin(tmp_path, twin_arrays, client):
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (16, 64, 80))
    segment_volume(vol.path, "otsu")
    segment_volume(vol.path, "hybrid")
    cta = score_volume(vol.path, labels="otsu")
    hyb = score_volume(vol.path, labels="hybrid")
    assert hyb["recall_pore"] > cta["recall_pore"] + 0.05
    assert hyb["accuracy"] > cta["accuracy"]


def test_python_api_segment_equals_stage(tmp_path, twin_arrays, client):
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, ODD)
    seg = segment(vol.path, method="otsu").compute()
    segment_volume(vol.path, "otsu")
    assert np.array_equal(seg, open_volume(vol.path, mode="r").array("labels/otsu")[:])
    with pytest.raises(ValueError, match="method must be one of"):
        segment(twin_arrays["image"], method="watershed")
    with pytest.raises(ValueError, match="needs model"):
        segment(twin_arrays["image"], method="unet")


def test_segment_volume_bad_source(tmp_path, twin_arrays, client):
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, ODD)
    with pytest.raises(InvalidVolumeError, match="no array 'nope'"):
        segment_volume(vol.path, "otsu", src="nope")
