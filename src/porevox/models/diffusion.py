"""A conditional denoising diffusion probabilistic model (DDPM) for segmented 2-D
microstructure slices (PyTorch).

As in Wijaya et al. (2024), after Ho et al. (2020):

* a linear β schedule over ``timesteps`` (1000) steps, ᾱ_t = Π_{s ≤ t} (1 − β_s);
* the forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I);
* a U-Net ε_θ(x_t, t, c) predicting the noise, trained on ‖ε − ε_θ‖².

Beyond the paper: an exponential moving average of the weights (:class:`EMA`),
DDIM sampling in a few steps (Song et al. 2021; η = 0 deterministic, η = 1 with
fresh noise at each step as the ancestral sampler) and
classifier-free guidance (Ho & Salimans 2022): during training the condition is
replaced by a learned null condition with probability ``p_uncond``, and sampling
mixes the conditional and unconditional predictions, ε = ε_∅ + w (ε_c − ε_∅).

For a small CPU budget, four options of the network and the loss (all off by
default, on in the ``cpu`` preset of :mod:`porevox.pipelines.generate`):

* ``patch``: the image is pixel-unshuffled (space-to-depth) by this factor before
  the first block and shuffled back after the last, so the U-Net runs at 1/patch²
  of the pixels (as in Hoogeboom et al. 2023); the output keeps every pixel;
* ``precondition``: ε_θ = √(1 − ᾱ_t)·x_t + √ᾱ_t·F(x_t, t, c), the best linear guess
  of ε plus a learned rest (Karras et al. 2022). At high noise ε ≈ x_t, which an
  unconditioned network must learn to copy through every block before its x_0
  estimate stops amplifying its errors by 1/√ᾱ_t; here it is built in;
* ``loss_scales``: the ε-MSE also at coarser resolutions (:func:`multiscale_mse`);
* ``refine``: with patches, the features are shuffled back to full resolution as
  ``refine`` channels and one residual block there, which sees x_t and the embeddings,
  makes the per-pixel output.

The loss is the paper's ‖ε − ε_θ‖² in every case.

Conditions are a class index (e.g. a (paste, temperature) pair) and/or one continuous
value (e.g. a conductivity, scaled to about unit range by the caller). Images are
single-channel, segmented (1 = copper, 0 = pore), mapped to {−1, +1}; generated
images are thresholded back at 0.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DiffusionConfig:
    """The network and the noise schedule."""

    image_size: int = 64
    base: int = 32                      # channels at full resolution
    mults: tuple[int, ...] = (1, 2, 2)  # channel multipliers per resolution (÷2 each)
    n_classes: int = 0                  # class conditions; 0: none
    continuous: bool = False            # one continuous condition
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    p_uncond: float = 0.1               # training: probability of the null condition
    patch: int = 1                      # pixel-unshuffle the image by this factor first
    precondition: bool = False          # ε_θ = √(1−ᾱ_t)·x_t + √ᾱ_t·F (the identity built in)
    loss_scales: int = 1                # ε-MSE at this many resolutions (1: the paper's)
    refine: int = 0                     # channels of a full-resolution output block (0: none)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        return cls(**{**d, "mults": tuple(d["mults"])})


# --------------------------------------------------------------------------- schedule
class Schedule:
    """The linear β schedule and its closed forms (float64, returned as float32)."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1; got {beta_start}, {beta_end}")
        self.timesteps = int(timesteps)
        self.betas = np.linspace(beta_start, beta_end, self.timesteps, dtype=np.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = np.cumprod(self.alphas)

    def _at(self, values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(values, dtype=like.dtype, device=like.device)[t]
        return out.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0): √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        return (self._at(np.sqrt(self.alpha_bar), t, x0) * x0
                + self._at(np.sqrt(1.0 - self.alpha_bar), t, x0) * noise)


# --------------------------------------------------------------------------- network
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al.), ``(n, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.e(F.silu(emb))[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """ε_θ(x_t, t, class, value): a small U-Net with residual blocks; the timestep,
    class and continuous-value embeddings are summed and added in every block.

    Each condition has its own null (a learned embedding): a condition that is not
    given (None), or whose ``keep`` flag is False, is the null one. Trained with both
    dropped independently, one model samples by class, by value, by both or by
    neither."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        c, emb = config.base, 4 * config.base
        self.time = nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(config.n_classes + 1, emb) if config.n_classes else None
        if config.continuous:
            self.value = nn.Sequential(nn.Linear(1, emb), nn.SiLU(), nn.Linear(emb, emb))
            self.null_value = nn.Parameter(torch.zeros(emb))
        p = config.patch
        self.stem = nn.Sequential(nn.PixelUnshuffle(p), nn.Conv2d(p * p, c, 3, padding=1))
        widths = [c * m for m in config.mults]
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        prev = c
        for i, w in enumerate(widths):
            self.down.append(_ResBlock(prev, w, emb))
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1
                             else nn.Identity())
            prev = w
        self.mid = _ResBlock(prev, prev, emb)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(_ResBlock(prev + w, w, emb))
            prev = w
        # the head sees the (unshuffled) input beside the features: at high noise ε ≈ x_t,
        # which is then one linear map, not a copy through every block
        self.head = nn.Sequential(_norm(prev), nn.SiLU())
        k = config.refine or 1
        self.out = nn.Sequential(nn.Conv2d(prev + p * p, p * p * k, 3, padding=1), nn.PixelShuffle(p))
        last = self.out[0]
        if config.refine:
            # per-pixel decisions (the sign of a nearly clean x_t) at full resolution,
            # which a linear map from patch features draws as speckle and blocks
            self.refine = nn.Conv2d(k + 1, k, 3, padding=1)
            self.refine_block = _ResBlock(k, k, emb)
            self.final = nn.Sequential(_norm(k), nn.SiLU(), nn.Conv2d(k, 1, 3, padding=1))
            last = self.final[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if config.precondition:
            abar = Schedule(config.timesteps, config.beta_start, config.beta_end).alpha_bar
            self.register_buffer("abar", torch.as_tensor(abar, dtype=torch.float32), persistent=False)

    @property
    def stride(self) -> int:
        return self.config.patch * 2 ** (len(self.config.mults) - 1)

    def embed(self, t, labels=None, values=None, keep_label=None, keep_value=None) -> torch.Tensor:
        e = self.time(timestep_embedding(t, self.config.base))
        n = t.shape[0]
        if self.label is not None:
            null = torch.full((n,), self.config.n_classes, dtype=torch.long, device=t.device)
            labels = null if labels is None else labels
            if keep_label is not None:
                labels = torch.where(keep_label, labels, null)
            e = e + self.label(labels)
        if self.config.continuous:
            null = self.null_value.expand(n, -1)
            if values is None:
                e = e + null
            else:
                v = self.value(values.float().view(n, 1))
                e = e + (v if keep_value is None else torch.where(keep_value[:, None], v, null))
        return e

    def forward(self, x, t, labels=None, values=None, keep_label=None, keep_value=None):
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}×{w} must be a multiple of {self.stride}")
        emb = self.embed(t, labels, values, keep_label, keep_value)
        h = self.stem(x)
        skips = []
        for block, pool in zip(self.down, self.pool):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for block in self.up:
            s = skips.pop()
            if h.shape[-1] != s.shape[-1]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), emb)
        out = self.out(torch.cat([self.head(h), self.stem[0](x)], dim=1))
        if self.config.refine:
            out = self.final(self.refine_block(self.refine(torch.cat([out, x], dim=1)), emb))
        if not self.config.precondition:
            return out
        # x_t = √ᾱ x_0 + √(1−ᾱ) ε with unit-variance x_0 ({−1, +1}) has unit variance,
        # and √(1−ᾱ)·x_t is the best linear guess of ε: the network learns the rest
        # (the preconditioning of Karras et al. 2022; for these images F is the
        # v-prediction of Salimans & Ho 2022). The loss stays the paper's ‖ε − ε_θ‖².
        a = self.abar[t].view(-1, 1, 1, 1)
        return torch.sqrt(1 - a) * x + torch.sqrt(a) * out


# --------------------------------------------------------------------------- training
def to_signed(images) -> torch.Tensor:
    """Segmented images (1 = copper, 0 = pore; ``(n, h, w)``) as ``(n, 1, h, w)`` in {−1, +1}."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return (2.0 * x - 1.0).unsqueeze(1)


def to_binary(x: torch.Tensor) -> np.ndarray:
    """Generated ``(n, 1, h, w)`` in [−1, 1] as uint8 images (1 = copper)."""
    return (x[:, 0] > 0).to(torch.uint8).cpu().numpy()


def multiscale_mse(pred: torch.Tensor, target: torch.Tensor, scales: int = 1) -> torch.Tensor:
    """The mean of the MSEs of ``k · avgpool_k(pred − target)`` for k = 1, 2, 4, …,
    2^(scales−1): with ``scales=1`` the plain MSE. The factor k keeps white noise at
    unit variance at every scale, so each resolution weighs the same: the coarse
    components (a crop's mean density among them) are one pixel in thousands of the
    plain MSE, and learnt far faster when weighed as much as the fine ones (the
    multiscale loss of Hoogeboom et al. 2023, "simple diffusion")."""
    diff = pred - target
    terms = []
    for i in range(max(int(scales), 1)):
        k = 2 ** i
        if k > min(diff.shape[-2:]):
            break
        d = diff if k == 1 else k * F.avg_pool2d(diff, k)
        terms.append(d.pow(2).mean())
    return torch.stack(terms).mean()


def loss(model: ConditionalUNet, schedule: Schedule, x0: torch.Tensor, labels=None, values=None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's ‖ε − ε_θ(x_t, t, c)‖² at uniformly drawn t (at ``loss_scales``
    resolutions, :func:`multiscale_mse`), each condition dropped (null) with
    probability ``p_uncond``, independently."""
    n = x0.shape[0]
    t = torch.randint(0, schedule.timesteps, (n,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    keep = torch.rand((2, n), generator=generator, device=x0.device) >= model.config.p_uncond
    pred = model(schedule.q_sample(x0, t, noise), t, labels, values, keep[0], keep[1])
    return multiscale_mse(pred, noise, model.config.loss_scales)


class EMA:
    """An exponential moving average of a model's weights (``decay`` per update)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            else:
                e.copy_(p)


# --------------------------------------------------------------------------- sampling
def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update from ᾱ = `a_t` to `a_prev` (Song et al. 2021, Eq. 12): the x_0
    estimate, clipped to [−1, 1], and the noise it implies, recombined at `a_prev`
    with the share σ² = η² (1 − ᾱ_prev)/(1 − ᾱ_t) (1 − ᾱ_t/ᾱ_prev) of fresh `noise`.
    For η = 1 and consecutive steps this is the ancestral step of Ho et al. (2020)."""
    x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
    eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    var = eta ** 2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - var, 0.0)) * eps
    return x if noise is None or var == 0 else x + math.sqrt(var) * noise


@torch.no_grad()
def ddim_sample(model: ConditionalUNet, schedule: Schedule, n: int, *, labels=None, values=None,
                steps: int = 50, guidance: float = 1.0, eta: float = 0.0, seed: int = 0,
                size: int | None = None, device=None) -> torch.Tensor:
    """``n`` images by DDIM over `steps` of the schedule's timesteps (Song et al. 2021),
    with classifier-free guidance weight `guidance` (1: the conditional model alone;
    > 1: stronger conditioning). `eta` = 0 is the deterministic sampler; `eta` = 1
    draws fresh noise at each step as the ancestral DDPM sampler does, which corrects
    the errors a deterministic path carries on (on binary microstructures they show
    as speckle). Returns ``(n, 1, size, size)`` in [−1, 1]; the same seed gives the
    same images."""
    model.eval()
    size = size or model.config.image_size
    device = device or next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn((n, 1, size, size), generator=g).to(device)
    ts = np.unique(np.linspace(0, schedule.timesteps - 1, max(int(steps), 1)).round().astype(int))[::-1]
    ab = schedule.alpha_bar

    def as_tensor(v, dtype):
        return None if v is None else torch.as_tensor(v, dtype=dtype, device=device).expand(n)

    labels, values = as_tensor(labels, torch.long), as_tensor(values, torch.float32)
    conditional = labels is not None or values is not None
    for i, t in enumerate(ts):
        tt = torch.full((n,), int(t), dtype=torch.long, device=device)
        eps = model(x, tt, labels, values)
        if conditional and guidance != 1.0:
            uncond = model(x, tt)
            eps = uncond + guidance * (eps - uncond)
        a_prev = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        noise = torch.randn(x.shape, generator=g).to(device) if eta > 0 and a_prev < 1 else None
        x = ddim_step(x, eps, float(ab[t]), a_prev, eta, noise)
    return x.clamp(-1, 1)


__all__ = ["ConditionalUNet", "DiffusionConfig", "EMA", "Schedule", "ddim_sample", "ddim_step", "loss",
           "multiscale_mse", "timestep_embedding", "to_binary", "to_signed"]
