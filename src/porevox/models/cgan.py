"""A conditional DCGAN for segmented 2-D microstructure slices (PyTorch): the paper's
comparison model for the DDPM (Wijaya et al. 2024 used a Keras cGAN).

* Generator: noise z and the condition's embedding, concatenated, projected to a
  ``(4·base, s/8, s/8)`` map, then three ×2 transposed convolutions (BatchNorm,
  ReLU) to ``(1, s, s)`` with tanh (Radford et al. 2016).
* Discriminator: the image and the condition's embedding as an extra input channel
  (a learned ``s × s`` map per condition), strided convolutions with LeakyReLU (0.2)
  and BatchNorm, one logit.
* Loss: the non-saturating binary cross-entropy; Adam (lr 2e-4, β1 0.5).

Conditions are the DDPM's (:mod:`porevox.models.diffusion`): a class index and/or one
continuous value. Images are in {−1, +1} (1 = copper); generated ones are
thresholded at 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GANConfig:
    image_size: int = 64
    base: int = 32               # generator / discriminator width
    z_dim: int = 64
    emb: int = 32                # condition embedding
    n_classes: int = 0
    continuous: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class _Condition(nn.Module):
    """The condition's embedding: a class's and/or a value's, summed."""

    def __init__(self, config: GANConfig, out: int):
        super().__init__()
        self.config = config
        self.label = nn.Embedding(config.n_classes, out) if config.n_classes else None
        self.value = nn.Sequential(nn.Linear(1, out), nn.LeakyReLU(0.2), nn.Linear(out, out)) \
            if config.continuous else None
        if not (self.label or self.value):
            raise ValueError("a conditional GAN needs n_classes > 0 or continuous=True")

    def forward(self, labels=None, values=None) -> torch.Tensor:
        parts = []
        if self.label is not None:
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels")
            parts.append(self.label(labels))
        if self.value is not None:
            if values is None:
                raise ValueError("this model is conditioned on a value: pass values")
            parts.append(self.value(values.float().view(-1, 1)))
        return sum(parts)


class Generator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        if config.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8; got {config.image_size}")
        self.config = config
        c, s = config.base, config.image_size // 8
        self.cond = _Condition(config, config.emb)
        self.project = nn.Sequential(nn.Linear(config.z_dim + config.emb, 4 * c * s * s),
                                     nn.BatchNorm1d(4 * c * s * s), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z, labels=None, values=None):
        s = self.config.image_size // 8
        h = self.project(torch.cat([z, self.cond(labels, values)], dim=1))
        return self.net(h.view(-1, 4 * self.config.base, s, s))


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        c, size = config.base, config.image_size
        self.cond = _Condition(config, size * size)
        self.net = nn.Sequential(
            nn.Conv2d(2, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(4 * c * (size // 8) ** 2, 1))

    def forward(self, x, labels=None, values=None):
        size = self.config.image_size
        channel = self.cond(labels, values).view(-1, 1, size, size)
        return self.net(torch.cat([x, channel], dim=1)).squeeze(1)


def optimizers(gen: Generator, disc: Discriminator, lr: float = 2e-4):
    return (torch.optim.Adam(gen.parameters(), lr, betas=(0.5, 0.999)),
            torch.optim.Adam(disc.parameters(), lr, betas=(0.5, 0.999)))


def train_step(gen: Generator, disc: Discriminator, opt_g, opt_d, real: torch.Tensor, labels=None,
               values=None, generator: torch.Generator | None = None) -> tuple[float, float]:
    """One discriminator and one generator update (non-saturating BCE); returns
    (discriminator loss, generator loss)."""
    n = real.shape[0]
    z = torch.randn((n, gen.config.z_dim), generator=generator, device=real.device)
    fake = gen(z, labels, values)
    ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)
    d_loss = (F.binary_cross_entropy_with_logits(disc(real, labels, values), ones)
              + F.binary_cross_entropy_with_logits(disc(fake.detach(), labels, values), zeros))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = F.binary_cross_entropy_with_logits(disc(fake, labels, values), ones)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return float(d_loss.detach()), float(g_loss.detach())


@torch.no_grad()
def sample(gen: Generator, n: int, *, labels=None, values=None, seed: int = 0) -> torch.Tensor:
    """``n`` images ``(n, 1, s, s)`` in [−1, 1] for one condition; the same seed gives
    the same images."""
    gen.eval()
    device = next(gen.parameters()).device
    z = torch.randn((n, gen.config.z_dim), generator=torch.Generator().manual_seed(int(seed))).to(device)

    def as_tensor(v, dtype):
        return None if v is None else torch.as_tensor(v, dtype=dtype, device=device).expand(n)

    return gen(z, as_tensor(labels, torch.long), as_tensor(values, torch.float32))


__all__ = ["Discriminator", "GANConfig", "Generator", "optimizers", "sample", "train_step"]
