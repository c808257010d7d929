"""Training of the generative models: checkpoints resume exactly, the loop stops on
its time budget, loss curves are written."""

import numpy as np
import pytest
import torch

from porevox.models import cgan, diffusion, generative
from porevox.models.diffusion import to_signed
from tests.models.test_diffusion import blobs

DDPM = diffusion.DiffusionConfig(image_size=16, base=8, mults=(1, 2), n_classes=2, continuous=True,
                                 timesteps=100)
GAN = cgan.GANConfig(image_size=16, base=8, z_dim=16, emb=8, n_classes=2, continuous=True)


def data():
    x = to_signed(np.r_[blobs(0.3, 16, seed=1), blobs(0.7, 16, seed=2)])
    return x, np.r_[np.zeros(16, int), np.ones(16, int)], np.r_[np.full(16, 0.1), np.full(16, 0.9)]


def weights(run):
    nets = dict(run.nets)
    if run.ema is not None:
        nets["ema"] = run.ema.model
    return {f"{k}.{n}": t.clone() for k, net in nets.items() for n, t in net.state_dict().items()}


@pytest.mark.parametrize("kind, config", [("ddpm", DDPM), ("cgan", GAN)])
def test_a_resumed_training_equals_an_uninterrupted_one(tmp_path, kind, config):
    x, y, v = data()
    straight = generative.fit(generative.new_run(kind, config, generative.TrainConfig(steps=12, batch=8)),
                              x, y, v)
    first = generative.fit(generative.new_run(kind, config, generative.TrainConfig(
        steps=5, batch=8, checkpoint_every=5)), x, y, v, checkpoint=tmp_path / "c.pt")
    resumed = generative.load_checkpoint(tmp_path / "c.pt", generative.TrainConfig(steps=12, batch=8))
    assert resumed.step == 5 and resumed.history == first.history
    generative.fit(resumed, x, y, v, checkpoint=tmp_path / "c.pt")
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert straight.history == resumed.history
    again = generative.load_checkpoint(tmp_path / "c.pt")
    assert again.step == 12 and again.train.steps == 12
    png = generative.plot_history(again, tmp_path / "loss.png")
    assert png.stat().st_size > 5000


def test_the_time_budget_stops_with_a_checkpoint(tmp_path):
    x, y, v = data()
    run = generative.new_run("ddpm", DDPM, generative.TrainConfig(steps=10_000, batch=4,
                                                                  max_minutes=0.02))
    generative.fit(run, x, y, v, checkpoint=tmp_path / "c.pt")
    assert 0 < run.step < 10_000
    assert generative.load_checkpoint(tmp_path / "c.pt").step == run.step


def test_unknown_kind():
    with pytest.raises(ValueError, match="model must be one of ddpm, cgan"):
        generative.new_run("vae", DDPM, generative.TrainConfig())
