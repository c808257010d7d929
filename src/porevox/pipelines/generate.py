"""`porevox generate`: train the conditional DDPM or cGAN on a study's segmented
crops, and sample microstructures from them.

A trained model is a folder (``<study>/models/<ddpm|cgan>/`` by default):
``checkpoint.pt`` (the whole training state: a rerun resumes it, a larger
``steps`` trains further), ``model.json`` (configuration, classes, the
conductivity scale, pixel size, labels, preset) and ``loss.png``.

Conditions: the DDPM is conditioned on the (paste, temperature) class and on the
conductivity (divided by the study's largest, so about unit range), each dropped
independently in training, so it samples by class, by conductivity or both; the
cGAN, the paper's comparison for Table 3, on the class.
Presets: ``cpu`` (64 × 64 crops; a DDPM on 4 × 4 pixel patches with the identity
built into ε_θ, a three-scale ε loss and a full-resolution output block, see
:mod:`porevox.models.diffusion`; at most 10 minutes per model on two cores) and
``gpu`` (the paper's 224 × 224 crops, wider networks on 2 × 2 patches, 50 000
steps). Sampling uses classifier-free guidance ``GUIDANCE`` (1.0: none, the plain
conditional model) and DDIM with η = ``ETA`` (1.0: fresh noise at each step) by
default.

The crops are held in memory when they fit the memory allowed them, and read from
Zarr batch by batch otherwise (the same batches, so the same weights).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..engine.outputs import claim
from ..errors import InvalidVolumeError, PorevoxError
from .crops import CropBatches, crop_index

logger = logging.getLogger(__name__)

PRESETS = {
    "cpu": {"size": 64,
            "ddpm": {"net": {"base": 64, "mults": (1, 2, 2), "patch": 4, "precondition": True,
                             "loss_scales": 3, "refine": 16},
                     "train": {"steps": 8000, "batch": 32, "lr": 1e-3, "max_minutes": 10.0}},
            "cgan": {"net": {"base": 32, "z_dim": 64, "emb": 32},
                     "train": {"steps": 2000, "batch": 32, "lr": 2e-4, "max_minutes": 10.0}}},
    "gpu": {"size": 224,
            "ddpm": {"net": {"base": 64, "mults": (1, 2, 2, 4), "patch": 2, "precondition": True,
                             "loss_scales": 3},
                     "train": {"steps": 50_000, "batch": 32, "lr": 2e-4, "max_minutes": None}},
            "cgan": {"net": {"base": 64, "z_dim": 128, "emb": 64},
                     "train": {"steps": 50_000, "batch": 32, "lr": 2e-4, "max_minutes": None}}},
}


#: The default classifier-free guidance weight of sampling (1: none; on the demo twin
#: 1.5 biased the low-density HPB classes lower still, see docs/generation.md).
GUIDANCE = 1.0
#: The default η of DDIM sampling (1: fresh noise at every step, as the DDPM's own
#: sampler; η = 0, deterministic, drew speckled boundaries on the twin, see docs/generation.md).
ETA = 1.0


def _torch_setup():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_flush_denormal(True)
    return torch, device


def model_dir(study, kind: str) -> Path:
    from .segmentation_study import study_volumes

    folder, _ = study_volumes(study)
    return folder / "models" / kind


def _read_meta(folder: Path) -> dict:
    """A model folder's ``model.json``, or a one-line error naming it."""
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PorevoxError(f"{folder / 'model.json'} cannot be read ({type(err).__name__}); train the "
                           "model again with porevox generate train") from None
    if not isinstance(meta, dict):
        raise PorevoxError(f"{folder / 'model.json'} is not a porevox model description; train the "
                           "model again with porevox generate train")
    return meta


def claim_samples(out: str | os.PathLike, n: int) -> Path:
    """Check and record, before any sampling, the files :func:`write_samples` writes
    for `n` images in `out`."""
    claim(out, [*(f"sample-{i:04d}.png" for i in range(n)), "samples.zarr"], what="sample file")
    return Path(out)


def check_train(kind: str, preset: str) -> None:
    from ..models.generative import KINDS

    if kind not in KINDS:
        raise PorevoxError(f"--model must be one of {', '.join(KINDS)}; got {kind!r}")
    if preset not in PRESETS:
        raise PorevoxError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")


def train_generator(study, *, kind: str = "ddpm", preset: str = "cpu", labels: str = "unet",
                    out=None, steps: int | None = None, minutes: float | None = None, seed: int = 0,
                    size: int | None = None, memory_mb: float = 1024, progress: bool = False) -> dict:
    """Train (or resume) a generative model on the crops of `study`'s training samples.

    The crops are held in memory as float32 when they fit in `memory_mb`; otherwise
    each batch is read from Zarr (the same batches either way)."""
    from ..models import cgan, diffusion, generative

    check_train(kind, preset)
    torch, device = _torch_setup()
    p = PRESETS[preset]
    size = size or p["size"]
    index = crop_index(study, labels=labels, size=size)
    if not len(index):
        raise InvalidVolumeError(f"no crops of {size} px in {study}")
    scale = float(np.nanmax(index.value)) if np.isfinite(index.value).any() else 1.0
    scale = scale if scale > 0 else 1.0
    out = Path(out) if out is not None else model_dir(study, kind)
    claim(out.parent, [out.name], what="model folder")
    out.mkdir(parents=True, exist_ok=True)
    net = dict(p[kind]["net"], image_size=size, n_classes=len(index.classes), continuous=kind == "ddpm")
    config = diffusion.DiffusionConfig(**net) if kind == "ddpm" else cgan.GANConfig(**net)
    train = generative.TrainConfig(**{**p[kind]["train"], "seed": seed,
                                      **({"steps": steps} if steps is not None else {}),
                                      **({"max_minutes": minutes} if minutes is not None else {})})
    meta = {"kind": kind, "preset": preset, "labels": labels, "size": size,
            "pixel_size": list(index.pixel_size), "classes": index.classes, "value_scale": scale,
            "config": config.as_dict(), "study": index.meta["study"], "crops": len(index)}
    checkpoint = out / "checkpoint.pt"
    run = None
    if checkpoint.exists():
        old = _read_meta(out) if (out / "model.json").exists() else {}
        same = ("kind", "config", "classes", "labels", "size")
        if json.dumps({k: old.get(k) for k in same}) == json.dumps({k: meta[k] for k in same}):
            run = generative.load_checkpoint(checkpoint, train)
            logger.info("%s: resuming at step %d of %d", kind, run.step, train.steps)
        else:
            logger.info("%s: the checkpoint in %s is for other data or settings; starting anew", kind, out)
    run = run or generative.new_run(kind, config, train)
    for net_ in run.nets.values():
        net_.to(device)
    for opt in run.opts.values():           # reloading casts a resumed state to the weights' device
        opt.load_state_dict(opt.state_dict())
    if run.ema is not None:
        run.ema.model.to(device)
    stream = len(index) * size * size * 4 > memory_mb * 2**20
    if stream:
        logger.info("%s: %d crops exceed %d MB; streaming them from Zarr", kind, len(index), memory_mb)
        images = CropBatches(index)
    else:
        images = diffusion.to_signed(index.load()).to(device)
    labels_t = torch.as_tensor(index.label)
    values_t = torch.as_tensor(index.value / scale, dtype=torch.float32)
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    started = time.time()
    done_before = run.step
    generative.fit(run, images, labels_t, values_t, checkpoint=checkpoint, progress=progress)
    generative.plot_history(run, out / "loss.png")
    seconds = time.time() - started
    logger.info("%s: %d steps in %.0f s on %s", kind, run.step - done_before, seconds, device)
    return {"model": str(out), "kind": kind, "steps": run.step, "trained_steps": run.step - done_before,
            "seconds": round(seconds, 1), "device": device, "crops": len(index), "streamed": stream,
            "classes": len(index.classes), "loss_curve": str(out / "loss.png"),
            "final_loss": {k: float(np.mean(v[-50:])) for k, v in run.history.items() if v}}


class Generator:
    """A trained model, ready to sample: ``Generator("study/models/ddpm")``."""

    def __init__(self, path: str | os.PathLike):
        from ..models import generative

        path = Path(path)
        if not (path / "model.json").is_file() or not (path / "checkpoint.pt").is_file():
            raise InvalidVolumeError(f"no trained model in {path} (model.json and checkpoint.pt); "
                                     "train one with porevox generate train STUDY --model ddpm")
        self.path = path
        self.meta = _read_meta(path)
        torch, self.device = _torch_setup()
        run = generative.load_checkpoint(path / "checkpoint.pt")
        self.kind, self.steps_trained = run.kind, run.step
        self.net = (run.ema.model if run.kind == "ddpm" else run.nets["generator"]).to(self.device).eval()
        self.config = run.config

    @property
    def classes(self) -> list[dict]:
        return self.meta["classes"]

    def class_of(self, paste: str, temperature_c: float) -> int:
        for i, c in enumerate(self.classes):
            if c["paste"] == paste and int(c["temperature_c"]) == int(temperature_c):
                return i
        known = ", ".join(f"{c['paste']} {c['temperature_c']}" for c in self.classes)
        raise PorevoxError(f"no class {paste} {temperature_c} °C in this model; it knows {known}")

    def sample(self, n: int, *, paste: str | None = None, temperature_c: float | None = None,
               conductivity: float | None = None, seed: int = 0, steps: int = 50,
               guidance: float = GUIDANCE, eta: float = ETA) -> np.ndarray:
        """``n`` binary images ``(n, size, size)`` uint8 (1 = copper) for a class, a
        conductivity (µS/cm, as in the study) or both."""
        from ..models import cgan, diffusion

        if n < 1:
            raise PorevoxError(f"-n must be at least 1; got {n}")
        if (paste is None) != (temperature_c is None):
            raise PorevoxError("give --paste and --temperature together (a class), or neither")
        if paste is None and conductivity is None:
            raise PorevoxError("give a class (--paste and --temperature), a --conductivity, or both")
        label = self.class_of(paste, temperature_c) if paste is not None else None
        value = None if conductivity is None else float(conductivity) / self.meta["value_scale"]
        if self.kind == "ddpm":
            x = diffusion.ddim_sample(self.net, diffusion.Schedule(self.config.timesteps,
                                                                   self.config.beta_start,
                                                                   self.config.beta_end),
                                      n, labels=label, values=value, steps=steps, guidance=guidance,
                                      eta=eta, seed=seed, device=self.device)
        else:
            if label is None or value is not None:
                raise PorevoxError("the cGAN is conditioned on the class only: give --paste and "
                                   "--temperature (the DDPM also takes --conductivity)")
            x = cgan.sample(self.net, n, labels=label, seed=seed)
        return diffusion.to_binary(x)


def write_samples(images: np.ndarray, out: str | os.PathLike, meta: dict) -> dict:
    """PNGs (one per image) and a Zarr array ``images`` with `meta` as attributes, in `out`."""
    import zarr
    from PIL import Image

    out = Path(out)
    claim_samples(out, len(images))
    pngs = []
    for i, im in enumerate(images):
        path = out / f"sample-{i:04d}.png"
        Image.fromarray((im * 255).astype(np.uint8)).save(path)
        pngs.append(str(path))
    store = out / "samples.zarr"
    arr = zarr.create_array(str(store), shape=images.shape, dtype="uint8",
                            chunks=(min(64, len(images)), *images.shape[1:]), overwrite=True,
                            dimension_names=("n", "y", "x"))
    arr[:] = images
    arr.attrs["porevox"] = meta
    return {"pngs": pngs, "zarr": str(store)}


__all__ = ["GUIDANCE", "Generator", "PRESETS", "check_train", "claim_samples", "model_dir", "train_generator",
           "write_samples"]
