"""Training of the generative models (DDPM and cGAN) on segmented crops, with
checkpoints that resume exactly.

One loop serves both: each step draws a batch from the crops with the loop's own
``torch.Generator`` and calls the model's step (the DDPM's ‖ε − ε_θ‖² with an EMA
of the weights; the cGAN's discriminator and generator updates). A checkpoint holds
the weights, the optimisers, the EMA, the generator's state, the step and the loss
history, as plain tensors and numbers (loaded with ``weights_only=True``; porevox
never unpickles code): training resumed from it continues exactly as if it had not
stopped.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PorevoxError
from . import cgan, diffusion
from .progress import bar as progress_bar

logger = logging.getLogger(__name__)

KINDS = ("ddpm", "cgan")


@dataclass
class TrainConfig:
    steps: int = 700
    batch: int = 32
    lr: float = 1e-3               # DDPM (AdamW); the cGAN uses 2e-4 (Radford et al.)
    ema: float = 0.995
    seed: int = 0
    checkpoint_every: int = 100
    max_minutes: float | None = None   # stop early (with a checkpoint) after this long


@dataclass
class Run:
    """The state of a training: networks, optimisers, generator, step and history."""

    kind: str
    config: object                      # DiffusionConfig or GANConfig
    train: TrainConfig
    nets: dict                          # ddpm: model, ema; cgan: generator, discriminator
    opts: dict
    rng: torch.Generator
    step: int = 0
    history: dict = field(default_factory=dict)
    ema: diffusion.EMA | None = None


def new_run(kind: str, config, train: TrainConfig) -> Run:
    if kind not in KINDS:
        raise ValueError(f"model must be one of {', '.join(KINDS)}; got {kind!r}")
    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    if kind == "ddpm":
        model = diffusion.ConditionalUNet(config)
        ema = diffusion.EMA(model, train.ema)
        return Run(kind, config, train, {"model": model}, {"model": torch.optim.AdamW(
            model.parameters(), train.lr, weight_decay=0.0)}, rng, history={"loss": []}, ema=ema)
    gen, disc = cgan.Generator(config), cgan.Discriminator(config)
    og, od = cgan.optimizers(gen, disc)
    return Run(kind, config, train, {"generator": gen, "discriminator": disc},
               {"generator": og, "discriminator": od}, rng, history={"d_loss": [], "g_loss": []})


def _step(run: Run, x, labels, values) -> None:
    if run.kind == "ddpm":
        model, opt = run.nets["model"], run.opts["model"]
        model.train()
        loss = diffusion.loss(model, _schedule(run.config), x, labels, values, generator=run.rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.ema.update(model)
        run.history["loss"].append(float(loss.detach()))
    else:
        gen, disc = run.nets["generator"], run.nets["discriminator"]
        gen.train()
        disc.train()
        d_loss, g_loss = cgan.train_step(gen, disc, run.opts["generator"], run.opts["discriminator"],
                                         x, labels, values, generator=run.rng)
        run.history["d_loss"].append(d_loss)
        run.history["g_loss"].append(g_loss)


_SCHEDULES: dict = {}


def _schedule(config: diffusion.DiffusionConfig) -> diffusion.Schedule:
    key = (config.timesteps, config.beta_start, config.beta_end)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = diffusion.Schedule(*key)
    return _SCHEDULES[key]


def fit(run: Run, images, labels=None, values=None, *, checkpoint: str | os.PathLike | None = None,
        progress: bool = False) -> Run:
    """Train `run` up to ``run.train.steps`` on `images` (``(n, 1, s, s)`` in {−1, +1}:
    a tensor, or anything that returns such a batch when indexed by a tensor of
    indices, e.g. crops read from Zarr), with per-image class `labels` and/or
    `values`; write `checkpoint` every ``checkpoint_every`` steps and at the end."""
    n = images.shape[0]
    device = next(next(iter(run.nets.values())).parameters()).device
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    values = None if values is None else torch.as_tensor(values, dtype=torch.float32)
    started = time.time()
    with progress_bar(progress, run.kind.upper()) as bar:
        task = bar.add_task("", total=run.train.steps, completed=run.step)
        while run.step < run.train.steps:
            i = torch.randint(0, n, (run.train.batch,), generator=run.rng)
            _step(run, images[i].to(device), None if labels is None else labels[i].to(device),
                  None if values is None else values[i].to(device))
            run.step += 1
            last = {k: v[-1] for k, v in run.history.items()}
            bar.update(task, advance=1, description=" ".join(f"{k} {v:.4f}" for k, v in last.items()))
            late = run.train.max_minutes is not None and time.time() - started > 60 * run.train.max_minutes
            if checkpoint is not None and (run.step % run.train.checkpoint_every == 0 or late):
                save_checkpoint(run, checkpoint)
            if late:
                logger.warning("%s: stopped at step %d of %d after %.1f min (max_minutes); resume to "
                               "go on", run.kind, run.step, run.train.steps, run.train.max_minutes)
                break
    if checkpoint is not None:
        save_checkpoint(run, checkpoint)
    return run


def save_checkpoint(run: Run, path: str | os.PathLike) -> Path:
    """Write the run's whole state (written beside, then renamed into place)."""
    path = Path(path)
    state = {"kind": run.kind, "config": run.config.as_dict(), "train": vars(run.train),
             "step": run.step, "history": {k: list(v) for k, v in run.history.items()},
             "rng": run.rng.get_state(),
             "nets": {k: v.state_dict() for k, v in run.nets.items()},
             "opts": {k: v.state_dict() for k, v in run.opts.items()},
             "ema": run.ema.model.state_dict() if run.ema is not None else None}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, train: TrainConfig | None = None) -> Run:
    """A run from its checkpoint; `train` may raise ``steps`` (train further). A file
    that is not a porevox checkpoint, or is damaged, raises a one-line PorevoxError."""
    path = Path(path)
    try:
        with warnings.catch_warnings():   # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # the safe unpickler's refusal, or no torch archive at all
        raise PorevoxError(f"{path} is not a readable porevox checkpoint ({type(err).__name__}; porevox "
                           "never unpickles code); train the model again with porevox generate "
                           "train") from None
    try:
        kind = state["kind"]
        config = (diffusion.DiffusionConfig.from_dict(state["config"]) if kind == "ddpm"
                  else cgan.GANConfig(**state["config"]))
        saved = TrainConfig(**state["train"])
        run = new_run(kind, config, train or saved)
        for k, net in run.nets.items():
            net.load_state_dict(state["nets"][k])
        for k, opt in run.opts.items():
            opt.load_state_dict(state["opts"][k])
        if run.ema is not None:
            run.ema.model.load_state_dict(state["ema"])
        run.rng.set_state(state["rng"])
        run.step, run.history = int(state["step"]), {k: list(v) for k, v in state["history"].items()}
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        raise PorevoxError(f"{path} is not a porevox generator checkpoint or is damaged "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:120]}); train the "
                           "model again with porevox generate train") from None
    return run


def plot_history(run: Run, path: str | os.PathLike) -> Path:
    """The loss curves (with a running mean) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, values in run.history.items():
        v = np.asarray(values)
        ax.plot(v, lw=0.5, alpha=0.4)
        w = max(1, len(v) // 50)
        if len(v) >= w:
            ax.plot(np.arange(w - 1, len(v)), np.convolve(v, np.ones(w) / w, "valid"), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{run.kind}: {run.step} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


__all__ = ["KINDS", "Run", "TrainConfig", "fit", "load_checkpoint", "new_run", "plot_history",
           "save_checkpoint"]
