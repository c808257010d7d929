import json

import numpy as np
import pytest

from porevox.engine import open_volume
from porevox.models import unet
from porevox.pipelines import segment_volume, train_unet_volumes
from porevox.pipelines.segment import gray_stats
from tests.conftest import twin_volume

SMALL = unet.UNetConfig(widths=(8, 16))        # context 23 px


@pytest.fixture(scope="module")
def trained(tmp_path_factory, twin_arrays):
    """A U-Net trained briefly on the hybrid annotation of a small twin volume."""
    from distributed import Client, LocalCluster

    folder = tmp_path_factory.mktemp("unet")
    vol = twin_volume(folder / "train.zarr", twin_arrays, (8, 64, 80))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as lc, \
            Client(lc):
        segment_volume(vol.path, "hybrid")
        result = train_unet_volumes([vol.path], folder / "model.pt", every=2, epochs=8, patience=8,
                                    widths=SMALL.widths, progress=False)
    return vol.path, folder / "model.pt", result


def test_training_on_the_twin_reduces_loss_and_saves_everything(trained):
    _, model_path, result = trained
    history = json.loads(model_path.with_suffix(".json").read_text())["metadata"]["history"]
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert result["slices"] == 8 and result["val_accuracy"] > 0.8
    assert model_path.exists() and model_path.with_suffix(".png").stat().st_size > 1000
    model, meta = unet.load_model(model_path)
    assert model.config.widths == SMALL.widths and meta["labels"] == "hybrid_annotation"
    assert meta["classes"] == {"copper": 0, "pore": 1, "shine_through": 2}


def whole_slice_labels(predictor, image, stats):
    scale = 1.0 / (stats["hi"] - stats["lo"])
    return np.stack([predictor.predict_proba((s.astype(np.float32) - stats["lo"]) * scale)[0] > 0.5
                     for s in image]).astype(np.uint8)


def test_distributed_tiled_inference_equals_whole_slices(tmp_path, trained, twin_arrays, client):
    _, model_path, _ = trained
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (5, 37, 50))
    r = segment_volume(vol.path, "unet", model=model_path, tile=32, probabilities=True)
    assert r["written"] == ["probabilities/unet", "labels/unet"]
    vol = open_volume(vol.path, mode="r")
    got = vol.array("labels/unet")[:]
    predictor = unet.Predictor(*unet.load_model(model_path))
    expect = whole_slice_labels(predictor, twin_arrays["image"], gray_stats(twin_arrays["image"]))
    assert (got == expect).mean() >= 0.999
    probs = vol.array("probabilities/unet")
    assert probs.shape == (3, *twin_arrays["image"].shape) and probs.dtype == np.uint8
    assert np.abs(probs[:].astype(int).sum(axis=0) - 255).max() <= 2
    # the model was loaded once in each worker that ran blocks, and kept there
    key = str(model_path.resolve())

    def models_loaded():
        import importlib

        return sum(1 for k in importlib.import_module("porevox.pipelines.segment")._MODELS if k[0] == key)

    loaded = client.run(models_loaded)
    assert set(loaded.values()) <= {0, 1} and sum(loaded.values()) >= 1
    assert segment_volume(vol.path, "unet", model=model_path, tile=32, probabilities=True)["skipped"]


def test_a_model_file_with_code_is_refused(tmp_path, twin_arrays, client):
    import pickle

    from porevox.errors import PorevoxError

    bad = tmp_path / "bad.pt"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad.write_bytes(pickle.dumps({"state_dict": Payload()}))
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (8, 64, 80))
    with pytest.raises(PorevoxError, match="refuse"):
        segment_volume(vol.path, "unet", model=bad)
    assert not marker.exists() and "unet" not in open_volume(vol.path, mode="r").labels


def test_keras_model_segments_the_same_way(tmp_path, twin_arrays, client):
    keras = unet._keras()
    config = unet.UNetConfig(widths=(4, 8))
    model = unet.keras_unet(config)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    path = tmp_path / "model.keras"
    model.save(path)
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (5, 37, 50))
    r = segment_volume(vol.path, "unet", model=path, name="unet_keras", tile=32)
    assert r["written"] == ["labels/unet_keras"]
    predictor = unet.load_keras(path)
    expect = whole_slice_labels(predictor, twin_arrays["image"], gray_stats(twin_arrays["image"]))
    got = open_volume(vol.path, mode="r").array("labels/unet_keras")[:]
    assert (got == expect).mean() >= 0.999
    assert keras.backend.backend() in ("torch", "tensorflow", "jax")


def test_pore_classes_add_up():
    """Pore = class 1 ∪ class 2: (0.4, 0.3, 0.3) is pore, though copper is the argmax."""
    import dask.array as da

    from porevox.pipelines.segment import copper_from_probabilities

    p = np.array([[0.4, 0.6, 0.2], [0.3, 0.3, 0.1], [0.3, 0.1, 0.7]], np.float32).reshape(3, 1, 1, 3)
    assert copper_from_probabilities(da.from_array(p)).compute().ravel().tolist() == [0, 1, 0]
    q = np.rint(p * 255).astype(np.uint8)
    assert copper_from_probabilities(da.from_array(q), 255).compute().ravel().tolist() == [0, 1, 0]
