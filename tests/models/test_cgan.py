"""The conditional DCGAN: shapes, determinism, conditioning, bad configurations."""

import numpy as np
import pytest
import torch

from porevox.models import cgan
from porevox.models.diffusion import to_binary, to_signed
from tests.models.test_diffusion import blobs


def small(**kw):
    torch.manual_seed(0)
    cfg = cgan.GANConfig(image_size=16, base=16, z_dim=32, emb=16, **kw)
    gen, disc = cgan.Generator(cfg), cgan.Discriminator(cfg)
    return gen, disc, *cgan.optimizers(gen, disc)


def test_shapes_range_and_determinism():
    gen, disc, _, _ = small(n_classes=3)
    a = cgan.sample(gen, 6, labels=2, seed=3)
    assert a.shape == (6, 1, 16, 16) and float(a.abs().max()) <= 1
    torch.testing.assert_close(a, cgan.sample(gen, 6, labels=2, seed=3), rtol=0, atol=0)
    assert not torch.equal(a, cgan.sample(gen, 6, labels=2, seed=4))
    assert disc(a, torch.full((6,), 2)).shape == (6,)


def test_a_training_step_updates_both_networks():
    gen, disc, og, od = small(continuous=True)
    before = [p.clone() for p in (*gen.parameters(), *disc.parameters())]
    x = to_signed(blobs(0.5, 8))
    d_loss, g_loss = cgan.train_step(gen, disc, og, od, x, values=torch.linspace(0, 1, 8))
    assert np.isfinite(d_loss) and np.isfinite(g_loss)
    after = list((*gen.parameters(), *disc.parameters()))
    assert all(not torch.equal(b, a) for b, a in zip(before, after) if a.requires_grad)


def test_conditioning_changes_the_output():
    """Two classes with copper fraction 0.2 and 0.8: after a short training the
    generated images follow their class's density."""
    gen, disc, og, od = small(n_classes=2)
    x = to_signed(np.r_[blobs(0.2, 64, seed=1), blobs(0.8, 64, seed=2)])
    y = torch.as_tensor(np.r_[np.zeros(64, int), np.ones(64, int)])
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, 128, (32,), generator=g)
        cgan.train_step(gen, disc, og, od, x[idx], y[idx], generator=g)
    density = [to_binary(cgan.sample(gen, 64, labels=c, seed=1)).mean() for c in (0, 1)]
    assert density[1] - density[0] > 0.3, density


def test_bad_configurations():
    with pytest.raises(ValueError, match="needs n_classes > 0 or continuous"):
        cgan.Generator(cgan.GANConfig(image_size=16))
    with pytest.raises(ValueError, match="multiple of 8"):
        cgan.Generator(cgan.GANConfig(image_size=20, n_classes=2))
    gen, _, _, _ = small(n_classes=2)
    with pytest.raises(ValueError, match="pass labels"):
        gen(torch.zeros(2, 32))
