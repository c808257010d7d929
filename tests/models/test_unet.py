import json
import os
import pickle

import numpy as np
import pytest
import torch

from porevox.errors import InvalidVolumeError, PorevoxError
from porevox.models.unet import (
    Predictor,
    UNet,
    UNetConfig,
    _evaluate,
    context,
    keras_unet,
    load_keras,
    load_model,
    measure_context,
    predict_batch,
    predict_proba,
    predict_tiled,
    save_model,
    train_unet,
)

TINY = UNetConfig(widths=(4, 8, 16, 32))        # the default depth (stride 16), few channels
SHALLOW = UNetConfig(widths=(8, 16))            # stride 4: learns the toy task in seconds


def disks(n, size=48, seed=0):
    """Slices of bright disks (class 0) and dark disks (class 1) on mid-grey (class 2),
    with noise; the labels are the truth the images were drawn from."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    per_area = size * size / (48 * 48)
    for _ in range(n):
        lab = np.full((size, size), 2, np.uint8)
        for cls, k in ((0, 4), (1, 3)):
            for _ in range(max(1, round(k * per_area))):
                cy, cx = rng.integers(0, size, 2)
                r = rng.integers(4, 10)
                lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = cls
        noise = rng.normal(0, 0.08, (size, size))
        images.append((np.choose(lab, [0.9, 0.1, 0.5]) + noise).astype(np.float32))
        labels.append(lab)
    return images, labels


@pytest.fixture(scope="module")
def trained():
    images, labels = disks(6)
    model, history = train_unet(images, labels, SHALLOW, epochs=40, patience=40, progress=False)
    return model, history, images, labels


# --------------------------------------------------------------------------- network
def test_odd_sizes_give_same_size_outputs():
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 37, 50)).shape == (2, 3, 37, 50)
        assert model(torch.rand(1, 1, 5, 1)).shape == (1, 3, 5, 1)   # pads beyond one reflection
    p = predict_proba(model, np.random.default_rng(0).random((37, 50), dtype=np.float32))
    assert p.shape == (3, 37, 50) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


def test_output_does_not_depend_on_padding_phase():
    """Cropping a slice at its bottom/right leaves the outputs far from the cut unchanged."""
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    image = np.random.default_rng(1).random((400, 400), dtype=np.float32)
    whole = predict_proba(model, image)
    part = predict_proba(model, image[:397, :389])
    c = context(TINY)
    np.testing.assert_array_equal(part[:, :389 - c - 1, :389 - c - 1], whole[:, :389 - c - 1, :389 - c - 1])


def test_config_roundtrip_and_validation():
    cfg = UNetConfig(in_channels=1, n_classes=2, widths=(8, 16, 32))
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg
    assert cfg.stride == 8 and UNetConfig().widths == (16, 32, 64, 128)
    with pytest.raises(ValueError, match="widths"):
        UNetConfig(widths=())
    with pytest.raises(ValueError, match="n_classes"):
        UNetConfig(n_classes=1)
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"widths": [8], "dropout": 0.5})


@pytest.mark.parametrize("widths", [(4,), (4, 8), (4, 8, 16), (4, 8, 16, 32)])
def test_context_is_the_measured_receptive_field(widths):
    """The analytic context equals the farthest output that an impulse changes at all."""
    cfg = UNetConfig(widths=widths)
    torch.manual_seed(0)
    assert measure_context(UNet(cfg).eval()) == context(cfg) == cfg.context
    assert context(UNetConfig()) == 119


def test_pixels_beyond_context_do_not_matter():
    cfg = UNetConfig(widths=(4, 8, 16))
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    c = context(cfg)
    image = np.random.default_rng(2).random((256, 256), dtype=np.float32)
    base = predict_proba(model, image)
    y, x = 128, 128
    far = image.copy()
    far[y, x + c + 1] += 50.0
    far[y - c - 1, x] -= 50.0
    assert (predict_proba(model, far)[:, y, x] == base[:, y, x]).all()
    near = image.copy()
    near[y, x + 3] += 50.0
    assert not np.allclose(predict_proba(model, near)[:, y, x], base[:, y, x])


# --------------------------------------------------------------------------- training
def test_training_learns_the_toy_task(trained, tmp_path):
    model, history, images, labels = trained
    assert history["train_loss"][-1] < 0.3 * history["train_loss"][0]
    best = history["best_epoch"]
    assert history["val_loss"][best] == min(history["val_loss"])
    assert history["val_accuracy"][best] > 0.9
    assert history["epochs_run"] == 40 and history["seconds"] > 0
    assert len(history["val_slices"]) == 1 and len(history["train_slices"]) == 5   # 20 % of 6
    # the returned model is the best epoch's: its validation numbers are the history's
    i = history["val_slices"][0]
    pred = predict_proba(model, images[i]).argmax(0)
    assert np.mean(pred == labels[i]) == pytest.approx(history["val_accuracy"][best])
    # fresh slices drawn the same way
    test_images, test_labels = disks(2, seed=7)
    acc = np.mean([np.mean(predict_proba(model, im).argmax(0) == lab)
                   for im, lab in zip(test_images, test_labels)])
    assert acc > 0.85


def test_loss_png_and_log(tmp_path):
    images, labels = disks(3)
    seen = []
    png = tmp_path / "loss.png"
    _, history = train_unet(images, labels, SHALLOW, epochs=3, progress=False, loss_png=png,
                            log=seen.append)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert [r["epoch"] for r in seen] == [0, 1, 2]
    assert [r["val_loss"] for r in seen] == history["val_loss"]
    jsonl = tmp_path / "log.jsonl"
    train_unet(images, labels, SHALLOW, epochs=2, progress=False, log=jsonl)
    assert len(jsonl.read_text().splitlines()) == 2


def test_seeded_training_is_deterministic():
    images, labels = disks(4, size=64)
    kw = dict(config=SHALLOW, epochs=3, patience=3, patch=32, batch_size=2, progress=False)
    a, ha = train_unet(images, labels, seed=3, **kw)
    b, hb = train_unet(images, labels, seed=3, **kw)
    c, _ = train_unet(images, labels, seed=4, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ha["train_loss"] == hb["train_loss"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_trainings_at_once_equal_trainings_alone():
    """The weights depend on torch's thread count, which is process-wide: two
    trainings started at once in one process (on 1 and 2 threads) give each the
    weights it gives alone."""
    import threading

    images, labels = disks(4, size=64)
    kw = dict(config=SHALLOW, epochs=6, patience=6, patch=32, batch_size=2, progress=False, seed=3)
    alone = {t: train_unet(images, labels, threads=t, **kw)[0].state_dict() for t in (1, 2)}
    assert not all(torch.equal(alone[1][k], alone[2][k]) for k in alone[1])   # the premise
    got = {}

    def train(t):
        got[t] = train_unet(images, labels, threads=t, **kw)

    runs = [threading.Thread(target=train, args=(t,)) for t in (1, 2)]
    for r in runs:
        r.start()
    for r in runs:
        r.join()
    for t in (1, 2):
        model, history = got[t]
        assert history["threads"] == t      # recorded with the weights
        assert all(torch.equal(v, alone[t][k]) for k, v in model.state_dict().items())


def test_early_stopping_restores_the_best_epoch():
    """Validation labels contradict the training labels on the same images: training
    makes the validation loss worse, so it stops `patience` epochs after the best."""
    images, _ = disks(3)
    zeros = [np.zeros(im.shape, np.uint8) for im in images]
    ones = [np.ones(im.shape, np.uint8) for im in images]
    kw = dict(config=SHALLOW, val_images=images, val_labels=ones, augment=False, progress=False, seed=1)
    model, history = train_unet(images, zeros, epochs=30, patience=1, **kw)
    best = history["best_epoch"]
    assert history["epochs_run"] < 30
    assert history["epochs_run"] == best + 2
    assert history["val_loss"][best] == min(history["val_loss"])
    x = [im[None] for im in images]
    y = [o.astype(np.int64) for o in ones]
    assert _evaluate(model, x, y, "cpu")[0] == pytest.approx(history["val_loss"][best], rel=1e-6)
    # the same seed, stopped by `epochs` at the best epoch, gives the same weights
    ref, _ = train_unet(images, zeros, epochs=best + 1, patience=1, **kw)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())


def test_progress_bar_and_threads(capsys):
    images, labels = disks(2)
    before = torch.get_num_threads()
    train_unet(images, labels, SHALLOW, epochs=2, progress=True, threads=1)
    assert torch.get_num_threads() == before
    err = capsys.readouterr().err
    assert "U-Net" in err and "2/2" in err


def test_one_slice_validates_on_itself(caplog):
    images, labels = disks(1)
    _, history = train_unet(images, labels, SHALLOW, epochs=1, progress=False)
    assert history["train_slices"] == history["val_slices"] == [0]
    assert "validating on the training slices" in caplog.text


def test_bad_training_input_raises():
    images, labels = disks(2)
    with pytest.raises(InvalidVolumeError, match="classes"):
        train_unet(images, [lab + 1 for lab in labels], SHALLOW, epochs=1, progress=False)
    with pytest.raises(InvalidVolumeError, match="shape"):
        train_unet(images, [lab[:-1] for lab in labels], SHALLOW, epochs=1, progress=False)
    with pytest.raises(InvalidVolumeError, match="patch="):
        train_unet([images[0], images[1][:40], images[0]], [labels[0], labels[1][:40], labels[0]],
                   SHALLOW, epochs=1, batch_size=2, val_fraction=0.3, progress=False)
    with pytest.raises(InvalidVolumeError, match="NaN"):
        train_unet([images[0], np.full_like(images[1], np.nan)], labels, SHALLOW, epochs=1, progress=False)
    with pytest.raises(TypeError, match="integers"):
        train_unet(images, [lab.astype(np.float32) for lab in labels], SHALLOW, epochs=1, progress=False)


def test_inputs_not_modified(trained):
    images, labels = disks(2)
    copies = [im.copy() for im in images], [lab.copy() for lab in labels]
    train_unet(images, labels, SHALLOW, epochs=1, progress=False)
    predict_tiled(trained[0], images[0], tile=16)
    assert all((a == b).all() for a, b in zip(images + labels, copies[0] + copies[1]))


# --------------------------------------------------------------------------- prediction
def test_predict_batch_equals_per_slice(trained):
    model, _, images, _ = trained
    stack = np.stack(images[:3])
    batch = predict_batch(model, stack, batch_size=2)
    assert batch.shape == (3, 3, 48, 48)
    for b, im in zip(batch, stack):
        np.testing.assert_allclose(b, predict_proba(model, im), atol=1e-6)


def test_tiled_equals_whole_trained(trained):
    model = trained[0]
    image = disks(1, size=300, seed=5)[0][0]
    whole = predict_proba(model, image)
    tiled = predict_tiled(model, image, tile=64)
    assert tiled.shape == whole.shape and tiled.dtype == np.float32
    assert np.mean(tiled.argmax(0) == whole.argmax(0)) >= 0.999
    # float32 throughout, and oneDNN picks convolution algorithms by input size: the
    # trained net's tiles differ from the whole slice by up to 1.1e-4 on torch 2.13's
    # CPU build (a tiling error would show as differences of order 1e-2 and more)
    np.testing.assert_allclose(tiled, whole, atol=2e-4)
    # tiles that are no multiple of the stride, and a halo below the context, still blend well
    assert np.mean(predict_tiled(model, image, tile=50, halo=8).argmax(0) == whole.argmax(0)) >= 0.99


def test_tiled_equals_whole_default_depth():
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    image = disks(1, size=300, seed=6)[0][0]
    whole = predict_proba(model, image)
    tiled = predict_tiled(Predictor(model), image, tile=64)      # halo = context = 119
    assert np.mean(tiled.argmax(0) == whole.argmax(0)) >= 0.999
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


# --------------------------------------------------------------------------- files
def test_save_load_roundtrip(trained, tmp_path):
    model = trained[0]
    path = save_model(model, tmp_path / "unet.pt", metadata={"labels": "hybrid", "slices": [0, 5]})
    loaded, metadata = load_model(path)
    assert metadata == {"labels": "hybrid", "slices": [0, 5]}
    assert loaded.config == model.config and not loaded.training
    image = disks(1, size=70, seed=9)[0][0]
    np.testing.assert_array_equal(predict_proba(loaded, image), predict_proba(model, image))
    sidecar = json.loads((tmp_path / "unet.json").read_text())
    assert sidecar["config"] == model.config.as_dict()
    assert sidecar["metadata"]["labels"] == "hybrid" and sidecar["context"] == context(model.config)
    predictor = Predictor(*load_model(path))
    assert predictor.n_classes == 3 and predictor.context == context(SHALLOW)
    with pytest.raises(TypeError, match="JSON"):
        save_model(model, tmp_path / "bad.pt", metadata={"f": object()})


class Opaque:
    """A plain object: picklable, but not weights."""

    def __init__(self):
        self.value = 1


class Payload:
    """Unpickling this calls open(path, "w"): creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": "porevox-unet", "version": 1, "config": "{}", "state_dict": {"x": Opaque()}}, path)
    with pytest.raises(PorevoxError, match="not a plain weights file") as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_code_in_a_model_file_does_not_run(tmp_path):
    # the payload is live: plain pickle runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control))).close()
    assert control.exists()
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"format": "porevox-unet", "state_dict": Payload(sentinel)}, path)
    with pytest.raises(PorevoxError, match="refused"):
        load_model(path)
    assert not sentinel.exists()


def test_wrong_or_missing_files_raise(tmp_path):
    with pytest.raises(PorevoxError, match="not found"):
        load_model(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, other)
    with pytest.raises(PorevoxError, match="not a porevox U-Net"):
        load_model(other)
    text = tmp_path / "text.pt"
    text.write_text("not a torch file")
    with pytest.raises(PorevoxError, match="refused"):
        load_model(text)


# --------------------------------------------------------------------------- Keras
def keras_or_skip():
    os.environ.setdefault("KERAS_BACKEND", "torch")     # as porevox does; keras' default needs TF
    return pytest.importorskip("keras")


KERAS_WARNINGS = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@KERAS_WARNINGS
def test_keras_model_predicts_like_keras(tmp_path):
    keras_or_skip()
    cfg = UNetConfig(widths=(4, 8))
    model = keras_unet(cfg)
    path = tmp_path / "unet.keras"
    model.save(path)
    wrapper = load_keras(path)
    assert wrapper.stride == 4 and wrapper.n_classes == 3
    image = np.random.default_rng(3).random((32, 48), dtype=np.float32)
    reference = np.asarray(model.predict(image[None, :, :, None], verbose=0))[0].transpose(2, 0, 1)
    np.testing.assert_allclose(wrapper.predict_proba(image), reference, atol=1e-6)
    odd = wrapper.predict_proba(image[:30, :45])
    assert odd.shape == (3, 30, 45)
    # measured on the Keras network: the torch one's, though "same" padding centres it differently
    assert wrapper.context == context(cfg)
    big = np.random.default_rng(4).random((100, 90), dtype=np.float32)
    tiled = predict_tiled(wrapper, big, tile=32)
    np.testing.assert_allclose(tiled, wrapper.predict_proba(big), atol=1e-3)
    assert np.mean(tiled.argmax(0) == wrapper.predict_proba(big).argmax(0)) >= 0.999


@KERAS_WARNINGS
def test_keras_model_built_for_one_size(tmp_path):
    """Chollet's example fixes the input size; the wrapper rebuilds it for any size."""
    keras = keras_or_skip()
    inputs = keras.Input(shape=(64, 64, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.UpSampling2D(2)(x)
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "fixed.keras"
    model.save(path)
    wrapper = load_keras(path)
    image = np.random.default_rng(6).random((64, 64), dtype=np.float32)
    reference = np.asarray(model.predict(image[None, :, :, None], verbose=0))[0].transpose(2, 0, 1)
    np.testing.assert_allclose(wrapper.predict_proba(image), reference, atol=1e-6)
    assert wrapper.stride == 2 and wrapper.predict_proba(image[:30, :50]).shape == (3, 30, 50)


@KERAS_WARNINGS
def test_keras_logits_model(tmp_path):
    keras = keras_or_skip()
    inputs = keras.Input(shape=(None, None, 1))
    outputs = keras.layers.Conv2D(2, 3, padding="same")(inputs)        # logits, no softmax
    model = keras.Model(inputs, outputs)
    path = tmp_path / "logits.keras"
    model.save(path)
    wrapper = load_keras(path, logits=True, context=1)
    image = np.random.default_rng(5).random((9, 7), dtype=np.float32)
    logits = np.asarray(model.predict(image[None, :, :, None], verbose=0))[0].transpose(2, 0, 1)
    expected = np.exp(logits) / np.exp(logits).sum(axis=0)
    assert wrapper.stride == 1 and wrapper.context == 1
    np.testing.assert_allclose(wrapper.predict_proba(image), expected, atol=1e-6)
    np.testing.assert_allclose(predict_batch(wrapper, image[None]), expected[None], atol=1e-6)


@KERAS_WARNINGS
def test_keras_code_is_refused(tmp_path):
    keras = keras_or_skip()
    inputs = keras.Input(shape=(None, None, 1))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(PorevoxError, match="safe mode"):
        load_keras(path)
