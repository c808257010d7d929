import dask.array as da
import numpy as np
import pytest

from porevox.errors import InvalidVolumeError
from porevox.pipelines.score import confusion, metrics, score, score_volume


def test_metrics_from_a_hand_computed_confusion_matrix():
    # truth pore: 6 voxels, 4 called pore, 2 called copper; truth copper: 10, 1 called pore
    cm = np.array([[4, 2], [1, 9]])
    m = metrics(cm)
    assert m["jaccard_pore"] == pytest.approx(4 / (4 + 1 + 2))
    assert m["precision_pore"] == pytest.approx(4 / 5)
    assert m["recall_pore"] == pytest.approx(4 / 6)
    assert m["jaccard_cu"] == pytest.approx(9 / (9 + 2 + 1))
    assert m["precision_cu"] == pytest.approx(9 / 11)
    assert m["recall_cu"] == pytest.approx(9 / 10)
    assert m["accuracy"] == pytest.approx(13 / 16)


def test_metrics_undefined_ratio_is_nan():
    m = metrics(np.array([[0, 0], [0, 5]]))   # no pore anywhere
    assert np.isnan(m["jaccard_pore"]) and np.isnan(m["precision_pore"])
    assert m["accuracy"] == 1.0


def test_confusion_on_odd_chunks_equals_whole(rng, tmp_path):
    truth = (rng.random((13, 29, 31)) < 0.6).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.1, 1 - truth, truth).astype(np.uint8)
    expect = np.array([[np.sum((truth == t) & (pred == p)) for p in (0, 1)] for t in (0, 1)])
    got = confusion(da.from_array(pred, chunks=(5, 7, 11)), da.from_array(truth, chunks=(4, 29, 6)))
    assert np.array_equal(got, expect)
    # stored label images (a volume's), each in its own chunks, read box by box
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    stored = []
    for name, data, chunks in (("pred", pred, (1, 29, 31)), ("truth", truth, (4, 8, 6))):
        arr = group.create_array(name, shape=data.shape, dtype=np.uint8, chunks=chunks)
        arr[...] = data
        stored.append(arr)
    assert np.array_equal(confusion(*stored), expect)
    from sklearn.metrics import jaccard_score, precision_score, recall_score

    s = score(pred, truth)
    assert s["jaccard_pore"] == pytest.approx(jaccard_score(truth.ravel(), pred.ravel(), pos_label=0))
    assert s["precision_cu"] == pytest.approx(precision_score(truth.ravel(), pred.ravel()))
    assert s["recall_pore"] == pytest.approx(recall_score(truth.ravel(), pred.ravel(), pos_label=0))


def test_score_refuses_non_binary_and_mismatched(rng):
    with pytest.raises(InvalidVolumeError, match="binary"):
        score(np.full((2, 3, 4), 2, np.uint8), np.ones((2, 3, 4), np.uint8))
    with pytest.raises(InvalidVolumeError, match="shape"):
        score(np.ones((2, 3, 4), np.uint8), np.ones((2, 3, 5), np.uint8))


def test_score_volume_names_missing_labels(tmp_path, client):
    from porevox.engine import create_volume

    vol = create_volume(tmp_path / "v.zarr", (4, 8, 8), "uint8", (1, 1, 1))
    with pytest.raises(InvalidVolumeError, match="no label image 'otsu'"):
        score_volume(vol.path, labels="otsu")
