"""Training, resuming and sampling the generative models on a small study."""

import json

import numpy as np
import pytest
import zarr
from PIL import Image

from porevox.errors import PorevoxError
from porevox.pipelines.generate import Generator, train_generator, write_samples
from tests.pipelines.test_crops import study  # noqa: F401  (the fixture)


@pytest.mark.parametrize("kind", ["ddpm", "cgan"])
def test_train_resume_and_sample(study, kind):  # noqa: F811
    folder, _ = study
    first = train_generator(folder, kind=kind, size=16, steps=6)
    out = folder / "models" / kind
    assert first["steps"] == 6 and first["trained_steps"] == 6 and first["classes"] == 2
    assert (out / "checkpoint.pt").is_file() and (out / "loss.png").stat().st_size > 5000
    meta = json.loads((out / "model.json").read_text())
    assert meta["pixel_size"] == [0.04, 0.04] and meta["value_scale"] == 200.0
    assert [c["paste"] for c in meta["classes"]] == ["HPA", "NPC"]
    assert train_generator(folder, kind=kind, size=16, steps=6)["trained_steps"] == 0   # done: resumed
    assert train_generator(folder, kind=kind, size=16, steps=9)["trained_steps"] == 3
    gen = Generator(out)
    assert gen.steps_trained == 9
    a = gen.sample(4, paste="NPC", temperature_c=400, seed=1, steps=5)
    assert a.shape == (4, 16, 16) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    np.testing.assert_array_equal(a, gen.sample(4, paste="NPC", temperature_c=400, seed=1, steps=5))
    with pytest.raises(PorevoxError, match="no class HPB 250 °C in this model; it knows HPA 175, NPC 400"):
        gen.sample(2, paste="HPB", temperature_c=250)
    with pytest.raises(PorevoxError, match="--paste and --temperature together"):
        gen.sample(2, paste="HPA")
    if kind == "ddpm":
        assert gen.sample(3, conductivity=150.0, steps=5).shape == (3, 16, 16)
    else:
        with pytest.raises(PorevoxError, match="conditioned on the class only"):
            gen.sample(3, conductivity=150.0)


def test_streaming_from_zarr_trains_exactly_as_in_memory(study, tmp_path):  # noqa: F811
    """Crops that exceed the memory allowed are read from Zarr per batch: the same
    batches, so the same weights, bit for bit."""
    import torch

    from porevox.models.generative import load_checkpoint

    folder, _ = study
    held = train_generator(folder, kind="ddpm", size=16, steps=5, out=tmp_path / "m")
    streamed = train_generator(folder, kind="ddpm", size=16, steps=5, out=tmp_path / "s", memory_mb=0)
    assert not held["streamed"] and streamed["streamed"]
    a, b = (load_checkpoint(tmp_path / k / "checkpoint.pt") for k in ("m", "s"))
    assert a.history == b.history
    for (k, x), y in zip(a.ema.model.state_dict().items(), b.ema.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)


def test_write_samples(tmp_path):
    images = (np.random.default_rng(0).random((3, 16, 16)) > 0.5).astype(np.uint8)
    files = write_samples(images, tmp_path / "s", {"paste": "NPC"})
    assert len(files["pngs"]) == 3
    np.testing.assert_array_equal(np.asarray(Image.open(files["pngs"][2])) // 255, images[2])
    arr = zarr.open_array(files["zarr"])
    np.testing.assert_array_equal(arr[:], images)
    assert arr.attrs["porevox"] == {"paste": "NPC"}


def test_no_model_here(tmp_path):
    with pytest.raises(PorevoxError, match="no trained model in"):
        Generator(tmp_path)


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_the_presets_build_networks_of_their_crop_size(preset):
    """Each preset's DDPM and cGAN map crops of the preset's size to images of that size."""
    import torch

    from porevox.models import cgan, diffusion
    from porevox.pipelines.generate import PRESETS

    p = PRESETS[preset]
    size = p["size"]
    ddpm = diffusion.ConditionalUNet(diffusion.DiffusionConfig(**p["ddpm"]["net"], image_size=size,
                                                               n_classes=18, continuous=True))
    gen = cgan.Generator(cgan.GANConfig(**p["cgan"]["net"], image_size=size, n_classes=18))
    with torch.no_grad():
        eps = ddpm(torch.zeros(1, 1, size, size), torch.tensor([500]), torch.tensor([3]), torch.tensor([0.5]))
        fake = cgan.sample(gen, 1, labels=3)
    assert eps.shape == fake.shape == (1, 1, size, size)
