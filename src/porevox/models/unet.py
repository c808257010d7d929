"""A 2-D U-Net for per-pixel classification of FIB-SEM slices (PyTorch, optional Keras).

The architecture is the one Wijaya et al. (2024) used: François Chollet's Keras example
"Image segmentation with a U-Net-like architecture"
(keras.io/examples/vision/oxford_pets_image_segmentation), written in torch:

* entry: Conv 3×3 stride 2 → BatchNorm → ReLU;
* ``len(widths) - 1`` down blocks: [ReLU, SeparableConv 3×3, BN] × 2 → MaxPool 3 stride 2,
  plus a residual 1×1 stride-2 convolution of the block's input;
* ``len(widths)`` up blocks: [ReLU, ConvTranspose 3×3, BN] × 2 → nearest Upsample ×2,
  plus a residual nearest Upsample ×2 → 1×1 convolution of the block's input;
* head: Conv 3×3 to ``n_classes`` logits (Chollet's has a softmax there; here the
  softmax is applied by the prediction functions and by the loss).

Chollet's network has no encoder–decoder skip concatenations: its "U" is carried
by the residual projections only. porevox adds them by default (``skips=True``): each
up block after the first reads the encoder features of its resolution beside its
input, and the head reads a full-resolution stem convolution (3×3, BN, ReLU) of the
input beside the last up block. Without them, the stride-2 entry and the stride-16
bottleneck lose the 2–4 px struts and shine-through rims of FIB-SEM copper: on the
demo twin a skip-less network trained on the hybrid annotation scored 0.805 against
the truth, one with skips 0.902, the annotation 0.910 (docs/models.md). ``skips=False`` is
Chollet's network exactly. A separable convolution is a depthwise 3×3 convolution
(``groups = in``, no bias) followed by a pointwise 1×1 one.

Differences from the Keras original, all deliberate:

* default widths ``(16, 32, 64, 128)`` instead of ``(32, 64, 128, 256)``: the CPU
  default is ~4× cheaper per step; pass ``widths=(32, 64, 128, 256)`` for the paper's;
* stride-2 layers pad symmetrically (torch ``padding=1``), where Keras' ``"same"``
  pads only after: the same receptive field size, centred one pixel differently;
* BatchNorm: Keras' ``epsilon=1e-3``, but torch's momentum 0.1 (Keras 0.99, i.e.
  torch 0.01), because short trainings on few slices need the running statistics
  to settle within a few epochs;
* RMSprop with Keras' defaults (``rho=0.9``, ``eps=1e-7``, lr ``1e-3``).

Any slice size goes through: the network pads the input at the bottom and right by
reflection to a multiple of its total stride ``2 ** len(widths)`` and crops the
output back, so the pixel grid keeps its phase with respect to the slice origin
(what makes tiled inference equal whole-slice inference).

Models are saved as plain weights (``torch.save`` of a dict of tensors, strings and
numbers) and loaded with ``weights_only=True``: porevox never unpickles code, and a
file that would need it is refused. Keras models (``.keras``, Keras 3) load through
``keras.saving.load_model(safe_mode=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidVolumeError, PorevoxError, StageError
from .progress import bar as progress_bar

logger = logging.getLogger(__name__)

FORMAT = "porevox-unet"
VERSION = 1
#: Label value of pixels left out of the loss (not labelled).
IGNORE = 255

#: Held by each training in this process: torch's thread count is process-wide and the
#: weights depend on it (other threads sum in another order), so a second training
#: started meanwhile (a run's U-Net CTA beside its U-Net Hybrid) would change the first's.
_TRAINING = threading.Lock()


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for a gray-value slice).
    n_classes : int
        Output classes (labels ``0 .. n_classes - 1``).
    widths : tuple of int
        Feature widths: the entry convolution has ``widths[0]``, down block *i* has
        ``widths[i]``, the up blocks have ``widths`` reversed. The total stride is
        ``2 ** len(widths)``. Chollet's (and the paper's) are ``(32, 64, 128, 256)``;
        the default ``(16, 32, 64, 128)`` is the CPU-friendly one (~4× fewer FLOPs).
    skips : bool
        Encoder–decoder skip concatenations (a U-Net proper): each up block's output
        is concatenated with the encoder features of the same resolution, and the
        head sees a full-resolution stem convolution of the input beside the last
        up block. Chollet's network has none (``skips=False``); without them the
        stride-2 entry and the stride-16 bottleneck lose the 2–4 px struts and
        shine-through rims of FIB-SEM copper (measured on the twin: see docs/models.md).
    """

    in_channels: int = 1
    n_classes: int = 3
    widths: tuple[int, ...] = field(default=(16, 32, 64, 128))
    skips: bool = True

    def __post_init__(self):
        widths = tuple(self.widths)
        if not widths or any(int(w) != w or w < 1 for w in widths):
            raise ValueError(f"widths must be one or more positive integers; got {self.widths!r}")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        if int(self.in_channels) != self.in_channels or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer; got {self.in_channels!r}")
        if int(self.n_classes) != self.n_classes or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2; got {self.n_classes!r}")
        object.__setattr__(self, "skips", bool(self.skips))

    @property
    def stride(self) -> int:
        """Total down-sampling factor; inputs are padded to a multiple of it."""
        return 2 ** len(self.widths)

    @property
    def context(self) -> int:
        """Half-width in pixels of the receptive field (see :func:`context`)."""
        return context(self)

    def as_dict(self) -> dict:
        """Plain-JSON form (``widths`` as a list)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`as_dict`; unknown keys are an error."""
        known = {"in_channels", "n_classes", "widths", "skips"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown U-Net config keys {sorted(extra)}; expected some of {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


def _receptive_interval(config: UNetConfig, o: int) -> tuple[int, int]:
    """Input pixels [lo, hi] (one axis) that output pixel `o` of :class:`UNet` depends on,
    on an unbounded axis: exact interval arithmetic through every layer, branches
    (residuals, skip concatenations) joined as hulls (each layer maps an output
    interval [a, b] to the input interval it reads; all maps are monotone)."""

    def conv(iv, k=3, s=1, p=1):  # also ConvTranspose 3x3 stride 1 padding 1, MaxPool 3/2/1
        return s * iv[0] - p, s * iv[1] - p + k - 1

    def hull(a, b):
        return min(a[0], b[0]), max(a[1], b[1])

    n = len(config.widths)

    def encoder(i, iv):  # input interval read by encoder feature i (0: entry; i: down block i)
        for _ in range(i):  # down blocks: x = pool(main(prev)) + conv1x1_s2(prev)
            iv = hull(conv(conv(conv(iv, 3, 2, 1))), conv(iv, 1, 2, 0))
        return conv(iv, 3, 2, 1)  # entry conv 3x3 stride 2

    def decoder(k, iv):  # input interval read by the output of up block k (1 .. n)
        up = (iv[0] // 2, iv[1] // 2)
        iv = hull(conv(conv(up)), up)  # x = up(main(prev)) + conv1x1(up(prev))
        if k == 1:
            return encoder(n - 1, iv)
        if config.skips:  # the block's input: up block k-1 concatenated with encoder n-k
            return hull(decoder(k - 1, iv), encoder(n - k, iv))
        return decoder(k - 1, iv)

    iv = conv((o, o))  # head 3x3
    return hull(decoder(n, iv), conv(iv)) if config.skips else decoder(n, iv)


def context(config: UNetConfig) -> int:
    """Half-width in pixels of the receptive field of :class:`UNet` with `config`.

    Computed analytically: for every output position in one period of the network's
    stride, the exact interval of input pixels it depends on (:func:`_receptive_interval`),
    and the largest distance from the output pixel to either end. A pixel farther than
    this from an output pixel cannot change it (given eval-mode BatchNorm), so a tile
    halo of at least ``context`` makes tiled inference equal whole-slice inference.
    This is the *theoretical* receptive field, an upper bound: the effective one (where
    the gradient is not negligible) is several times smaller in a trained network.
    For the default ``len(widths) == 4`` it is 119 px (the interval is
    asymmetric and varies with the pixel's phase); it depends on the depth only.
    """
    s = config.stride
    worst = 0
    for o in range(2 * s, 4 * s):
        lo, hi = _receptive_interval(config, o)
        worst = max(worst, o - lo, hi - o)
    return worst


# --------------------------------------------------------------------------- the network
def _pad_end(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad the last two axes at their ends by reflection (repeated when the pad is as
    large as the axis; replicated for an axis of length 1)."""
    while ph > 0 or pw > 0:
        h, w = x.shape[-2:]
        sh, sw = min(ph, h - 1), min(pw, w - 1)
        if (ph > 0 and sh == 0) or (pw > 0 and sw == 0):
            x = F.pad(x, (0, pw if sw == 0 else 0, 0, ph if sh == 0 else 0), mode="replicate")
            ph, pw = (0 if sh == 0 else ph), (0 if sw == 0 else pw)
            continue
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


class _SeparableConv2d(nn.Sequential):
    """Keras' SeparableConv2D(k=3, "same"): depthwise 3×3 (no bias) → pointwise 1×1."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class _DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(nn.ReLU(), _SeparableConv2d(cin, cout), _bn(cout),
                                  nn.ReLU(), _SeparableConv2d(cout, cout), _bn(cout),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.residual = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x):
        return self.main(x) + self.residual(x)


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, cout, 3, padding=1), _bn(cout),
                                  nn.ReLU(), nn.ConvTranspose2d(cout, cout, 3, padding=1), _bn(cout),
                                  nn.Upsample(scale_factor=2, mode="nearest"))
        self.residual = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        return self.main(x) + self.residual(x)


class UNet(nn.Module):
    """Chollet's U-Net-like network (see the module docstring) from a :class:`UNetConfig`.

    ``forward(x)``: ``x`` (N, in_channels, H, W) float of any H, W → logits
    (N, n_classes, H, W). The input is padded at the bottom/right by reflection to a
    multiple of ``config.stride`` and the output cropped back.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig; got {type(config).__name__}")
        self.config = config
        w = config.widths
        self.entry = nn.Sequential(nn.Conv2d(config.in_channels, w[0], 3, stride=2, padding=1),
                                   _bn(w[0]), nn.ReLU())
        self.down = nn.ModuleList(_DownBlock(a, b) for a, b in zip(w[:-1], w[1:]))
        ups = w[::-1]
        # with skips, up block k > 1 also reads the encoder features of its input's
        # resolution (widths[n - k]); the head also reads a full-resolution stem
        extra = ((0,) + tuple(w[::-1][1:])) if config.skips else (0,) * len(w)
        self.up = nn.ModuleList(_UpBlock(a + e, b) for a, e, b in zip((w[-1], *ups[:-1]), extra, ups))
        if config.skips:
            self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w[0], 3, padding=1), _bn(w[0]),
                                      nn.ReLU())
        self.head = nn.Conv2d(2 * w[0] if config.skips else w[0], config.n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"input must be (N, {self.config.in_channels}, H, W); got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.config.stride
        x = _pad_end(x, -h % s, -w % s)
        features = [self.entry(x)]
        for block in self.down:
            features.append(block(features[-1]))
        y = features.pop()
        for k, block in enumerate(self.up):
            if k and self.config.skips:
                y = torch.cat([y, features.pop()], dim=1)
            y = block(y)
        if self.config.skips:
            y = torch.cat([y, self.stem(x)], dim=1)
        return self.head(y)[..., :h, :w]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# --------------------------------------------------------------------------- predictors
@runtime_checkable
class ProbabilityModel(Protocol):
    """What :func:`predict_tiled` needs: per-slice class probabilities, the context
    (receptive-field half-width, px), the stride the input grid is aligned to."""

    n_classes: int
    context: int
    stride: int

    def predict_proba(self, image: np.ndarray) -> np.ndarray: ...


def _as_image(image, in_channels: int) -> np.ndarray:
    """`image` as float32 (C, H, W): a 2-D slice for one channel, (C, H, W) otherwise."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2 and in_channels == 1:
        return a[None]
    if a.ndim == 3 and a.shape[0] == in_channels:
        return a
    want = "(H, W)" if in_channels == 1 else f"({in_channels}, H, W)"
    raise InvalidVolumeError(f"image must be a 2-D slice {want}; got shape {a.shape}")


class Predictor:
    """A torch :class:`UNet` with numpy in/out: ``predict_proba(image2d) → (C, H, W)``.

    Parameters
    ----------
    model : UNet (or any torch module mapping (N, C_in, H, W) to logits (N, C, H, W))
    metadata : dict, optional
        Kept as ``.metadata`` (what :func:`load_model` returns next to the model).
    context, stride : int, optional
        Default: from ``model.config`` (required for a module without one).
    """

    def __init__(self, model: nn.Module, metadata: dict | None = None, *, context: int | None = None,
                 stride: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        config = getattr(model, "config", None)
        if (context is None or stride is None) and not isinstance(config, UNetConfig):
            raise TypeError("a model without a UNetConfig needs context= and stride=")
        self.model = model
        self.metadata = dict(metadata or {})
        self.context = int(config.context if context is None else context)
        self.stride = int(config.stride if stride is None else stride)
        self.in_channels = config.in_channels if isinstance(config, UNetConfig) else 1
        self.n_classes = config.n_classes if isinstance(config, UNetConfig) else None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        was_training = self.model.training  # an eval-mode model is never touched (thread-safe)
        if was_training:
            self.model.eval()
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(batch)).to(_device_of(self.model))
                p = torch.softmax(self.model(x), dim=1)
                return p.to("cpu", torch.float32).numpy()
        finally:
            if was_training:
                self.model.train()

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Softmax probabilities float32 (n_classes, H, W) of one whole slice."""
        return self._run(_as_image(image, self.in_channels)[None])[0]

    def predict_batch(self, images, batch_size: int = 8) -> np.ndarray:
        """Probabilities float32 (N, n_classes, H, W) of slices (N, H, W), `batch_size` at a time."""
        images = np.asarray(images, dtype=np.float32)
        if self.in_channels == 1 and images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise InvalidVolumeError(f"images must be (N, H, W) slices; got shape {images.shape}")
        step = max(1, int(batch_size))
        parts = [self._run(images[i:i + step]) for i in range(0, len(images), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_classes or 0, *images.shape[2:]),
                                                            np.float32)


def as_predictor(model, *, context: int | None = None) -> ProbabilityModel:
    """`model` as a :class:`ProbabilityModel`: a torch module is wrapped in a
    :class:`Predictor`; anything with ``predict_proba`` is returned as it is."""
    if isinstance(model, nn.Module):
        return Predictor(model, context=context)
    if callable(getattr(model, "predict_proba", None)):
        return model
    raise TypeError(f"model must be a torch UNet or have predict_proba(image); got {type(model).__name__}")


def predict_proba(model, image2d) -> np.ndarray:
    """Softmax class probabilities float32 (n_classes, H, W) of one whole 2-D slice
    (eval mode, ``torch.inference_mode``); `model` a UNet or a predictor."""
    return as_predictor(model).predict_proba(image2d)


def predict_batch(model, images, batch_size: int = 8) -> np.ndarray:
    """Probabilities float32 (N, n_classes, H, W) of a stack of slices (N, H, W)."""
    p = as_predictor(model)
    if hasattr(p, "predict_batch"):
        return p.predict_batch(images, batch_size=batch_size)
    return np.stack([p.predict_proba(im) for im in images])


def _starts(n: int, tile: int) -> list[int]:
    """Starts of ``ceil(n / tile)`` cores of ``min(tile, n)`` pixels spread evenly over
    [0, n): multiples of `tile` when `tile` divides `n`, else overlapping a little."""
    if n <= tile:
        return [0]
    k = -(-n // tile)
    return [round(i * (n - tile) / (k - 1)) for i in range(k)]


def _window(lo: int, hi: int, core_lo: int, core_hi: int, sigma: float) -> np.ndarray:
    """1-D Gaussian weights over [lo, hi) centred on the core [core_lo, core_hi)."""
    centre = (core_lo + core_hi - 1) / 2
    x = np.arange(lo, hi, dtype=np.float64)
    return np.exp(-0.5 * ((x - centre) / sigma) ** 2)


def predict_tiled(model, image2d, tile: int = 256, halo: int | None = None) -> np.ndarray:
    """Class probabilities float32 (n_classes, H, W) of a slice, tile by tile.

    The slice is covered by ``ceil(H / tile) × ceil(W / tile)`` cores of ``tile`` × ``tile``
    pixels, spread evenly (they overlap a little where `tile` does not divide the
    slice, so every core has the full size and its centre where it should be). Each
    core is extended by `halo` pixels on every side, clamped at the slice border
    (nothing is padded beyond the slice: edge tiles see less), and the extended
    tile's start is moved back to a multiple of the network's stride, so its pixel
    grid has the whole slice's phase. The network runs on each extended tile; its
    probabilities are weighted by a separable Gaussian centred on the core,
    σ = tile / 8 (nnU-Net's choice), over the whole extended tile, accumulated, and
    divided by the summed weights. Every pixel lies in a core, so the weights never
    vanish (≥ e⁻¹⁶ of a centre's); tile centres dominate, and the blend only matters
    near the seams between cores, where both neighbours see at least `halo` of
    context. With ``halo >= context`` the result equals whole-slice inference to
    ~1e-3 in probability (a crop of the cores would equal it to float rounding; the
    blend is there to soften the seams when a smaller halo is used).

    Parameters
    ----------
    model : UNet, Predictor, KerasPredictor, or anything with ``predict_proba``
        (and ``context``, ``stride``).
    image2d : (H, W) float array, normalised like the training slices.
    tile : int
        Core size in pixels (a multiple of the stride keeps the grids aligned).
    halo : int, optional
        Default: the model's ``context``; with at least that much, tiled equals
        whole-slice inference up to float rounding and the blend.
    """
    p = as_predictor(model)
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels; got {tile}")
    halo = int(p.context if halo is None else halo)
    if halo < 0:
        raise ValueError(f"halo must be >= 0 pixels; got {halo}")
    image = np.asarray(image2d, dtype=np.float32)
    if image.ndim < 2:
        raise InvalidVolumeError(f"image2d must be a 2-D slice; got shape {image.shape}")
    h, w = image.shape[-2:]
    stride = max(1, int(getattr(p, "stride", 1)))
    sigma = max(tile / 8.0, 1.0)
    acc = None
    weight = np.zeros((h, w), np.float32)
    for y0 in _starts(h, tile):
        y1 = min(h, y0 + tile)
        ey0 = max(0, y0 - halo) // stride * stride
        ey1 = min(h, y1 + halo)
        wy = _window(ey0, ey1, y0, y1, sigma)
        for x0 in _starts(w, tile):
            x1 = min(w, x0 + tile)
            ex0 = max(0, x0 - halo) // stride * stride
            ex1 = min(w, x1 + halo)
            wx = _window(ex0, ex1, x0, x1, sigma)
            prob = p.predict_proba(image[..., ey0:ey1, ex0:ex1])
            if acc is None:
                acc = np.zeros((prob.shape[0], h, w), np.float32)
            wgt = (wy[:, None] * wx[None, :]).astype(np.float32)
            acc[:, ey0:ey1, ex0:ex1] += prob * wgt
            weight[ey0:ey1, ex0:ex1] += wgt
    acc /= weight
    return acc


# --------------------------------------------------------------------------- training
def _as_slices(images, name: str) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise InvalidVolumeError(f"{name} must be a list or stack of slices; got one 2-D array — wrap it "
                                 "in a list")
    return [np.asarray(a) for a in images]


def _check_pairs(images, labels, config: UNetConfig, prefix: str = "") -> tuple[list, list]:
    images = [_as_image(a, config.in_channels) for a in _as_slices(images, f"{prefix}images")]
    labels = _as_slices(labels, f"{prefix}labels")
    name = f"{prefix}images"
    if len(images) != len(labels):
        raise InvalidVolumeError(f"{name}: {len(images)} images but {len(labels)} label slices")
    out = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        if lab.shape != im.shape[1:]:
            raise InvalidVolumeError(f"{name}[{i}]: image {im.shape[1:]} and labels {lab.shape} differ in "
                                     "shape; give each slice its label image")
        if not np.isfinite(im).all():
            raise InvalidVolumeError(f"{name}[{i}] holds NaN or infinite values; fill or mask them first")
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"labels must be integers (uint8 classes); got {lab.dtype} at slice {i}")
        known = lab[lab != IGNORE] if lab.size else lab
        if known.size and (known.min() < 0 or known.max() >= config.n_classes):
            raise InvalidVolumeError(f"{prefix}labels[{i}] holds classes "
                                     f"{int(known.min())}..{int(known.max())}; "
                                     f"expected 0..{config.n_classes - 1} (n_classes={config.n_classes}) "
                                     f"or {IGNORE} (not labelled)")
        out.append(lab)
    return images, out


def _augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
    """Random flip, 90° rotation (180° only for a non-square sample, to keep batch
    shapes) and intensity jitter (gain 0.9–1.1, offset ±0.05, unclipped)."""
    square = image.shape[-1] == image.shape[-2]
    k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    flip = bool(rng.random() < 0.5)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    if flip:
        image, label = image[..., ::-1], label[..., ::-1]
    image, label = np.rot90(image, k, axes=(-2, -1)), np.rot90(label, k, axes=(-2, -1))
    return image * np.float32(gain) + np.float32(offset), label


def _crop(image, label, patch: int | None, rng: np.random.Generator):
    if patch is None:
        return image, label
    h, w = label.shape
    y0 = int(rng.integers(0, h - patch + 1)) if h > patch else 0
    x0 = int(rng.integers(0, w - patch + 1)) if w > patch else 0
    return image[:, y0:y0 + patch, x0:x0 + patch], label[y0:y0 + patch, x0:x0 + patch]


def _evaluate(model: nn.Module, images, labels, device) -> tuple[float, float]:
    """Pixel-weighted mean cross-entropy and accuracy over whole slices (eval mode)."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    with torch.inference_mode():
        for im, lab in zip(images, labels):
            logits = model(torch.from_numpy(im[None]).to(device))
            target = torch.from_numpy(lab[None].astype(np.int64)).to(device)
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum", ignore_index=IGNORE))
            known = target != IGNORE
            correct += int((logits.argmax(1) == target)[known].sum())
            total += int(known.sum())
    model.train()
    return loss_sum / max(total, 1), correct / max(total, 1)


def _split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if n < 2 or val_fraction == 0.0:
        return list(range(n)), list(range(n))
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = rng.permutation(n)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def train_unet(images, labels, config: UNetConfig = UNetConfig(), *, val_fraction: float = 0.2,
               epochs: int = 100, patience: int = 10, batch_size: int = 1, lr: float = 1e-3,
               patch: int | None = None, augment: bool = True, seed: int = 0, progress: bool = True,
               loss_png: str | os.PathLike | None = None, log: Callable | str | os.PathLike | None = None,
               val_images=None, val_labels=None, threads: int | None = None,
               device: str | torch.device | None = None) -> tuple[UNet, dict]:
    """Train a :class:`UNet` on labelled slices, as the paper did.

    RMSprop (Keras defaults), cross-entropy on the logits (Keras' sparse categorical
    cross-entropy), `batch_size` slices per step, early stopping on the validation loss
    with `patience` epochs, the best epoch's weights restored.

    Parameters
    ----------
    images : sequence of (H, W) float32 arrays (sizes may differ), normalised to ~[0, 1]
    labels : sequence of (H, W) integer arrays, classes ``0 .. n_classes - 1``, or
        ``IGNORE`` (255) for pixels left out of the loss and the accuracy
    config : UNetConfig
    val_fraction : float
        Fraction of the slices (at least one, at most all but one; chosen with `seed`)
        held out for validation. With one slice, or ``val_fraction=0``, validation
        runs on the training slices themselves (without augmentation or crops): early
        stopping then watches the training fit — a warning is logged.
    epochs, patience : int
        Maximum epochs; stop after `patience` epochs without a lower validation loss.
    batch_size : int
        Slices per step. Above 1 the (cropped) samples must share one shape: use `patch`.
    lr : float
        RMSprop learning rate.
    patch : int, optional
        Train on a random ``patch`` × ``patch`` crop of each slice per epoch (slices
        smaller than that are used whole); None: whole slices. Validation always uses
        whole slices.
    augment : bool
        Random flips, 90° rotations and intensity jitter of the training samples.
    seed : int
        Seeds the weights (``torch.manual_seed`` inside ``torch.random.fork_rng``, so the
        caller's global torch state is left alone), the split, the order, crops and
        augmentations (a ``numpy.random.Generator``): equal seeds give equal weights on CPU.
    progress : bool
        A rich progress bar on stderr.
    loss_png : path, optional
        Save the loss curves there (:func:`plot_history`).
    log : callable or path, optional
        Called with each epoch's record (a dict), or a path that gets one JSON line
        per epoch. Each epoch is also logged at INFO on this module's logger.
    val_images, val_labels : optional
        An explicit validation set; then `val_fraction` is ignored.
    threads : int, optional
        ``torch.set_num_threads`` for the training (restored after). The weights depend
        on it. Trainings in one process run one at a time.
    device : optional
        Where to train (default CPU); the returned model is on the CPU.

    Returns
    -------
    model : UNet, in eval mode, with the best epoch's weights
    history : dict
        ``train_loss``, ``val_loss``, ``val_accuracy``: lists, one entry per epoch;
        ``best_epoch``: 0-based index into them of the restored weights;
        ``epochs_run``; ``seconds``; ``train_slices``, ``val_slices``: indices;
        ``threads``: torch's thread count in the training (the weights depend on it).
    """
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig; got {type(config).__name__}")
    if int(epochs) < 1 or int(patience) < 1 or int(batch_size) < 1:
        raise ValueError(f"epochs, patience and batch_size must be >= 1; got {epochs}, {patience}, "
                         f"{batch_size}")
    if patch is not None and int(patch) < 2:
        raise ValueError(f"patch must be None (whole slices) or a size >= 2 px; got {patch}")
    patch = None if patch is None else int(patch)
    images, labels = _check_pairs(images, labels, config)
    if not images:
        raise InvalidVolumeError("train_unet needs at least one labelled slice; got none")
    rng = np.random.default_rng(seed)
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    if val_images is not None:
        val_x, val_y = _check_pairs(val_images, val_labels, config, "val_")
        train_idx, val_idx = list(range(len(images))), []
    else:
        train_idx, val_idx = _split(len(images), float(val_fraction), rng)
        val_x, val_y = [images[i] for i in val_idx], [labels[i] for i in val_idx]
        if set(train_idx) == set(val_idx):
            logger.warning("train_unet: %d slice(s), val_fraction %s: validating on the training slices",
                           len(images), val_fraction)
    train_x, train_y = [images[i] for i in train_idx], [labels[i] for i in train_idx]

    shapes = {tuple(min(n, patch) if patch else n for n in y.shape) for y in train_y}
    if batch_size > 1 and len(shapes) > 1:
        raise InvalidVolumeError(f"batch_size {batch_size} needs training samples of one shape; the "
                                 f"slices give {sorted(shapes)}: pass patch= (a crop size) or batch_size=1")
    s = config.stride
    if any(math.ceil(h / s) * math.ceil(w / s) * min(batch_size, len(train_x)) < 2 for h, w in shapes):
        raise InvalidVolumeError(f"training samples {sorted(shapes)} are too small for BatchNorm at the "
                                 f"network's stride {s}: use samples of at least {2 * s} px")

    device = torch.device("cpu" if device is None else device)
    device = torch.device("cpu" if device is None else device)
    with _TRAINING:   # one training at a time in this process
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        if device.type == "cpu":
            torch.set_flush_denormal(True)
        log_path = None if log is None or callable(log) else Path(log)
        if log_path is not None:
            log_path.write_text("")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = UNet(config)
            model.to(device).train()
            optimizer = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-7)
            history: dict[str, Any] = {"train_loss": [], "val_loss": [], "val_accuracy": [], "best_epoch": 0,
                                       "epochs_run": 0, "seconds": 0.0, "train_slices": train_idx,
                                       "val_slices": val_idx, "threads": torch.get_num_threads()}
            best_loss, best_state, wait = math.inf, None, 0
            started = time.perf_counter()
            with progress_bar(progress, "U-Net") as bar:
                task = bar.add_task("", total=epochs)
                for epoch in range(epochs):
                    order = rng.permutation(len(train_x))
                    losses = []
                    for b in range(0, len(order), batch_size):
                        xs, ys = [], []
                        for i in order[b:b + batch_size]:
                            x, y = _crop(train_x[i], train_y[i], patch, rng)
                            if augment:
                                x, y = _augment(x, y, rng)
                            xs.append(np.ascontiguousarray(x))
                            ys.append(np.ascontiguousarray(y))
                        x = torch.from_numpy(np.stack(xs)).to(device)
                        y = torch.from_numpy(np.stack(ys).astype(np.int64)).to(device)
                        optimizer.zero_grad(set_to_none=True)
                        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
                        loss.backward()
                        optimizer.step()
                        losses.append(loss.detach().item())
                    val_loss, val_acc = _evaluate(model, val_x, val_y, device)
                    train_loss = float(np.mean(losses))
                    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                        raise StageError(f"U-Net training diverged at epoch {epoch + 1} (train loss "
                                         f"{train_loss}, val loss {val_loss}); lower lr (now {lr}) or check "
                                         "the images' scaling")
                    history["train_loss"].append(train_loss)
                    history["val_loss"].append(val_loss)
                    history["val_accuracy"].append(val_acc)
                    history["epochs_run"] = epoch + 1
                    if val_loss < best_loss:
                        best_loss, wait, history["best_epoch"] = val_loss, 0, epoch
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        wait += 1
                    record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                              "val_accuracy": val_acc, "best_epoch": history["best_epoch"],
                              "seconds": round(time.perf_counter() - started, 3)}
                    logger.info("unet epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f",
                                epoch + 1, epochs, train_loss, val_loss, val_acc)
                    if callable(log):
                        log(record)
                    elif log_path is not None:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                    bar.update(task, advance=1, description=f"loss {train_loss:.4f}  val {val_loss:.4f}  "
                                                             f"acc {val_acc:.3f}")
                    if wait >= patience:
                        logger.info("unet: early stop after epoch %d; best epoch %d (val loss %.4f)",
                                    epoch + 1, history["best_epoch"] + 1, best_loss)
                        break
            model.load_state_dict(best_state)
            history["seconds"] = round(time.perf_counter() - started, 3)
        finally:
            if threads is not None:
                torch.set_num_threads(old_threads)
        model.to("cpu").eval()
        if loss_png is not None:
            plot_history(history, loss_png)
        return model, history


def plot_history(history: dict, path: str | os.PathLike) -> Path:
    """Loss curves (train, validation) and validation accuracy per epoch, the restored
    epoch marked, saved as an image at `path` (matplotlib Agg; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax_loss.plot(epochs, history["train_loss"], label="train")
    ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_acc.plot(epochs, history["val_accuracy"], color="C1")
    for ax in (ax_loss, ax_acc):
        ax.axvline(history["best_epoch"] + 1, color="0.6", ls="--", lw=1)
        ax.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend(title=f"best epoch {history['best_epoch'] + 1}")
    ax_acc.set_ylabel("validation accuracy")
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- saving / loading
def _json_text(obj, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be plain JSON (dicts, lists, str, numbers); {err}") from err


def save_model(model: UNet, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write `model` to `path` (``.pt``) as plain weights — ``{"format", "version",
    "config" (JSON), "metadata" (JSON), "state_dict"}`` — and a readable sidecar
    ``path.with_suffix(".json")`` with the config and metadata. Returns `path`."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, UNetConfig):
        raise TypeError(f"model must be a porevox UNet; got {type(model).__name__}")
    path = Path(path)
    meta_text = _json_text(metadata or {}, "metadata")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "version": VERSION, "config": json.dumps(config.as_dict()),
                "metadata": meta_text, "state_dict": state}, path)
    sidecar = {"format": FORMAT, "version": VERSION, "weights": path.name, "config": config.as_dict(),
               "context": config.context, "stride": config.stride,
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "torch": torch.__version__, "metadata": json.loads(meta_text)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def load_model(path: str | os.PathLike) -> tuple[UNet, dict]:
    """Load a model written by :func:`save_model`: ``(model in eval mode, metadata)``.

    The file is read with ``torch.load(weights_only=True)``: a file that needs
    anything beyond tensors, dicts, lists, strings and numbers (pickled objects or
    code) is refused with a :class:`~porevox.errors.PorevoxError` — nothing in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise PorevoxError(f"model file {path} not found")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the safe unpickler's refusal, or a file that is no torch archive
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f"it refers to {found.group(1)}" if found else f"{type(err).__name__} in the safe loader"
        raise PorevoxError(f"refused to load {path}: it is not a plain weights file, and porevox never "
                           f"unpickles code ({detail})") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise PorevoxError(f"{path} is not a porevox U-Net file (format {found!r}, expected {FORMAT!r}); "
                           "save models with porevox.models.unet.save_model")
    if blob.get("version") != VERSION:
        raise PorevoxError(f"{path} has porevox-unet version {blob.get('version')!r}; this porevox reads "
                           f"version {VERSION}")
    try:
        config = UNetConfig.from_dict(json.loads(blob["config"]))
        metadata = json.loads(blob.get("metadata") or "{}")
        model = UNet(config)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise PorevoxError(f"{path} is damaged: its config or weights do not make a U-Net ({err})") from err
    return model.eval(), metadata


# --------------------------------------------------------------------------- Keras
def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as err:
        raise PorevoxError("Keras models need keras >= 3: pip install 'porevox[keras]'") from err
    if int(keras.__version__.split(".")[0]) < 3:
        raise PorevoxError(f"Keras models need keras >= 3; found {keras.__version__}")
    return keras


def keras_unet(config: UNetConfig = UNetConfig()):
    """The same network in Keras 3: with ``skips=False`` Chollet's, exactly as in the
    Keras example (``"same"`` padding, Keras BatchNorm defaults, softmax head); with
    ``skips=True`` (the default) plus the skip concatenations of :class:`UNet`. For
    inputs of any size that is a multiple of ``config.stride``
    (``Input(shape=(None, None, in_channels))``). Train it with
    ``model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")``
    and load the saved ``.keras`` with :func:`load_keras`."""
    keras = _keras()
    layers = keras.layers
    w = config.widths
    inputs = keras.Input(shape=(None, None, config.in_channels))
    x = layers.Conv2D(w[0], 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    features = [x]
    for filters in w[1:]:
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
        features.append(x)
    features.pop()
    for k, filters in enumerate(w[::-1]):
        if k and config.skips:
            x = layers.Concatenate()([x, features.pop()])
            previous = x
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous = x
    if config.skips:
        stem = layers.Conv2D(w[0], 3, padding="same")(inputs)
        stem = layers.BatchNormalization()(stem)
        x = layers.Concatenate()([x, layers.Activation("relu")(stem)])
    outputs = layers.Conv2D(config.n_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs, name="porevox_unet")


def measure_context(model, *, stride: int | None = None, size: int = 256, max_size: int = 2048,
                    seed: int = 0) -> int:
    """Receptive-field half-width (px) of any predictor, measured by impulses.

    On a seeded random slice, one pixel at a time (one position per phase of the
    stride, along the diagonal) is set to +1000 and to -1000; the farthest output
    pixel whose probabilities change at all (bitwise) gives the extent. The slice is
    doubled (up to `max_size`) until no change reaches its border. This measures the
    theoretical receptive field (a lower bound of it: a path cut by every ReLU, or a
    change below float32 resolution, is missed; on CPU it equals :func:`context` for
    a :class:`UNet`). Changes at the edge are tiny (< 1e-6 in probability for an
    untrained network), so a threshold would measure an effective, smaller field.
    """
    if isinstance(model, nn.Module):
        config = getattr(model, "config", None)
        stride = stride or (config.stride if isinstance(config, UNetConfig) else 1)
        p = Predictor(model, context=0, stride=stride)
    else:
        p = as_predictor(model)
    stride = int(stride or getattr(p, "stride", 1) or 1)
    rng = np.random.default_rng(seed)
    while True:
        size = -(-size // stride) * stride
        base_image = rng.random((size, size), dtype=np.float32)
        base = p.predict_proba(base_image)
        centre = size // 2 // stride * stride
        reach = 0
        for k in range(stride):
            c = centre + k
            for value in (1000.0, -1000.0):
                im = base_image.copy()
                im[c, c] = value
                changed = (p.predict_proba(im) != base).any(axis=0)
                ys, xs = np.nonzero(changed)
                if ys.size:
                    reach = max(reach, int(np.abs(ys - c).max()), int(np.abs(xs - c).max()))
        if reach < centre - 1 or size >= max_size:
            if reach >= centre - 1:
                logger.warning("measure_context: the response reaches the border of a %d px slice; "
                               "the context is at least %d px", size, reach)
            return reach
        size *= 2


def _free_spatial(model):
    """`model` rebuilt with an input of any height and width, its weights copied, if it
    was built for one size (Chollet's example fixes ``img_size``; Keras 3 then refuses
    other sizes). A functional model is re-created from its config; if that fails,
    the model is returned as it is."""
    shape = model.input_shape
    if shape[1] is None and shape[2] is None:
        return model
    try:
        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "InputLayer":
                key = "batch_shape" if "batch_shape" in layer["config"] else "batch_input_shape"
                layer["config"][key] = [None, None, None, shape[-1]]
        clone = type(model).from_config(config)
        clone.set_weights(model.get_weights())
    except Exception as err:  # noqa: BLE001 - a subclassed or exotic model: keep it as it is
        logger.warning("Keras model %s takes only %s inputs and could not be rebuilt for any size (%s)",
                       model.name, shape[1:3], err)
        return model
    logger.info("Keras model %s: rebuilt for inputs of any size (it was built for %s)", model.name,
                shape[1:3])
    return clone


class KerasPredictor:
    """A Keras 3 segmentation model with :class:`Predictor` semantics.

    ``predict_proba(image2d)``: the slice (H, W) goes in as (1, H, W, 1) (channels
    last), padded at the bottom/right by reflection to a multiple of ``stride`` and
    cropped back; the output (1, H, W, C) comes back as float32 (C, H, W). The model
    is assumed to end in a softmax, as Chollet's does; for a model that outputs
    logits pass ``logits=True`` (a softmax is applied here).

    A model built for one input size (``keras.Input(shape=(160, 160, 1))``, as in
    Chollet's example) is rebuilt from its config with a free height and width and
    its weights copied. ``stride``: the input size multiple the model needs; found by
    trying sizes if not given. ``context``: receptive-field half-width; measured lazily by
    :func:`measure_context` on first use if not given.
    """

    def __init__(self, model, *, context: int | None = None, stride: int | None = None,
                 logits: bool = False):
        if isinstance(model.input_shape, list):
            raise PorevoxError("a Keras model with several inputs cannot segment slices; give a model "
                               "with one (N, H, W, C) input")
        self.model = _free_spatial(model)
        self.logits = bool(logits)
        self._torch_backend = _keras().backend.backend() == "torch"
        shape_in, shape_out = self.model.input_shape, self.model.output_shape
        self.in_channels = int(shape_in[-1] or 1)
        self.n_classes = int(shape_out[-1])
        self.stride = int(stride) if stride is not None else self._find_stride()
        self._context = None if context is None else int(context)

    @property
    def context(self) -> int:
        if self._context is None:
            self._context = measure_context(self, stride=self.stride)
        return self._context

    def _find_stride(self) -> int:
        s = 1
        while s <= 128:
            try:
                ok = all(self._raw(np.zeros((1, m * s, n * s, self.in_channels), np.float32)).shape[1:3]
                         == (m * s, n * s) for m, n in ((3, 5), (5, 3)))
            except Exception:  # noqa: BLE001 - a size the model rejects: try the next multiple
                ok = False
            if ok:
                return s
            s *= 2
        raise PorevoxError("could not find an input size multiple the Keras model accepts; pass stride= "
                           "to load_keras (the model must take inputs of shape (None, None, C))")

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        if self._torch_backend:  # call the model directly: no autograd graph, no predict() overhead
            with torch.inference_mode():
                out = self.model(torch.from_numpy(np.ascontiguousarray(batch)), training=False)
            return out.to("cpu", torch.float32).numpy()
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)

    def predict_batch(self, images, batch_size: int = 8) -> np.ndarray:
        """Probabilities float32 (N, C, H, W) of slices (N, H, W)."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3 and self.in_channels == 1:
            x = x[..., None]
        elif x.ndim == 4 and x.shape[1] == self.in_channels:
            x = np.moveaxis(x, 1, -1)
        else:
            raise InvalidVolumeError(f"images must be (N, H, W) slices; got shape {np.shape(images)}")
        h, w = x.shape[1:3]
        ph, pw = -h % self.stride, -w % self.stride
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        out = [self._raw(x[i:i + batch_size])[:, :h, :w] for i in range(0, len(x), max(1, int(batch_size)))]
        p = np.concatenate(out) if out else np.zeros((0, h, w, self.n_classes), np.float32)
        if self.logits:
            p = np.exp(p - p.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
        return np.ascontiguousarray(np.moveaxis(p, -1, 1), dtype=np.float32)

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Probabilities float32 (C, H, W) of one whole slice."""
        return self.predict_batch(_as_image(image, self.in_channels)[None])[0]


def load_keras(path: str | os.PathLike, *, context: int | None = None, stride: int | None = None,
               logits: bool = False) -> KerasPredictor:
    """Load a Keras 3 ``.keras`` model (``safe_mode=True``, not compiled) as a
    :class:`KerasPredictor`. ``KERAS_BACKEND`` defaults to ``torch`` if unset."""
    path = Path(path)
    if not path.is_file():
        raise PorevoxError(f"Keras model file {path} not found")
    keras = _keras()
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PorevoxError(f"could not load {path} as a Keras 3 model (safe mode): {reason[:300]}") from err
    return KerasPredictor(model, context=context, stride=stride, logits=logits)


__all__ = ["UNetConfig", "UNet", "context", "Predictor", "KerasPredictor", "ProbabilityModel",
           "as_predictor", "train_unet", "plot_history", "predict_proba", "predict_batch", "predict_tiled",
           "save_model", "load_model", "keras_unet", "load_keras", "measure_context"]

