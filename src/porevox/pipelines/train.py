"""`porevox train-unet`: a U-Net trained on the annotations of one or more volumes.

The paper trains on 20 % of the slices — every fifth — of the hybrid annotation,
with part of them held out for validation. Here: every `every`-th slice (from the
first) of each volume, its image scaled by the volume's own 0.1–99.9 % gray-value
percentiles (as inference does), and its label image as classes:

* an annotation (a name ending in ``annotation``, e.g. ``hybrid_annotation``): its
  classes as they are (0 copper, 1 pore, 2 shine-through): a 3-class network;
* a binary segmentation (e.g. ``otsu`` for the paper's "U-Net CTA"): copper → 0,
  pore → 1: a 2-class network.

Either way class 0 is copper, so inference reads copper = class 0. Training runs in
this process with all its cores (a single network does not split across workers);
only the slices it uses are read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ..engine.outputs import check_output, record
from ..engine.storage import LABELS, fill_missing
from ..errors import InvalidVolumeError
from .score import check_labels
from .segment import gray_stats, normalize, source_name

logger = logging.getLogger(__name__)


def check_training(volumes, out, labels: str = "hybrid_annotation", every: int = 5) -> list:
    """Check a training request before any work: the model path, `every`, and that
    every volume holds `labels`. Returns the volumes as a list."""
    volumes = [volumes] if isinstance(volumes, (str, os.PathLike)) else list(volumes)
    if not volumes:
        raise ValueError("train-unet needs at least one volume")
    if Path(out).suffix != ".pt":
        raise ValueError(f"the model file must end in .pt; got {Path(out).name}")
    _check_every(every)
    for path in volumes:
        check_labels(path, labels)
    for file in _files(out):
        check_output(file, inputs=volumes, what="model file", fix="give another --out")
    return volumes


def _files(out) -> list[Path]:
    """The files a training writes: the model, its ``.json`` and its loss curves."""
    out = Path(out)
    return [out, out.with_suffix(".json"), out.with_suffix(".png")]


def _check_every(every: int) -> None:
    if every < 1:
        raise ValueError(f"every must be >= 1 (1 = every slice); got {every}")


def training_slices(path, *, labels: str = "hybrid_annotation", every: int = 5,
                    src: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Every `every`-th slice of a volume's image (scaled to ~[0, 1]) and labels."""
    _check_every(every)
    volume = check_labels(path, labels)
    src = source_name(volume, src)
    stats = gray_stats(volume.to_dask(src))
    zs = list(range(0, volume.image.shape[0], every))
    image, lab = volume.array(src), volume.array(f"{LABELS}/{labels}")
    missing = volume.missing
    images = [normalize(image[z] if not missing else fill_missing(image[z], missing["fill"]), stats)
              for z in zs]
    targets = [np.asarray(lab[z]) for z in zs]
    if not labels.endswith("annotation"):
        if max(int(t.max()) for t in targets) > 1:
            raise InvalidVolumeError(f"labels/{labels} is not binary; name an annotation or a segmentation")
        targets = [(1 - t).astype(np.uint8) for t in targets]
    return images, targets, {"volume": str(volume.path), "source": src, "slices": zs,
                             "lo": stats["lo"], "hi": stats["hi"]}


def train_unet_volumes(volumes, out: str | os.PathLike, *, labels: str = "hybrid_annotation",
                       every: int = 5, src: str | None = None, epochs: int = 100, patience: int = 10,
                       val_fraction: float = 0.2, seed: int = 0, widths=None, patch: int | None = None,
                       progress: bool = True, threads: int | None = None) -> dict:
    """Train a U-Net on every `every`-th slice of `volumes` and save it at `out`
    (a state dict ``.pt`` plus a ``.json`` config) with its loss curves (``.png``).
    torch runs on `threads` threads (default: every core of this machine)."""
    from ..models import unet

    volumes = check_training(volumes, out, labels, every)
    out = Path(out)
    record(out.parent, [f.name for f in _files(out)])
    started = time.time()
    images, targets, sources = [], [], []
    for path in volumes:
        i, t, info = training_slices(path, labels=labels, every=every, src=src)
        images += i
        targets += t
        sources.append(info)
    n_classes = 3 if labels.endswith("annotation") else 2
    config = unet.UNetConfig(n_classes=n_classes,
                             **({"widths": tuple(widths)} if widths else {}))
    logger.info("train-unet: %d slices from %d volumes (every %d), labels %s, %d classes",
                len(images), len(volumes), every, labels, n_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cuda" if torch.cuda.is_available() else None   # the GPU where there is one
    # The thread count is said explicitly: torch otherwise sizes its pool from
    # OMP_NUM_THREADS, which a nanny restarting a worker writes into the client
    # process's environment — and another thread count sums in another order, giving
    # other weights.
    model, history = unet.train_unet(images, targets, config, val_fraction=val_fraction,
                                     epochs=epochs, patience=patience, patch=patch, seed=seed,
                                     progress=progress, loss_png=out.with_suffix(".png"),
                                     device=device, threads=threads or os.cpu_count())
    metadata = {"labels": labels, "every": every, "classes": {"copper": 0, "pore": 1, **(
        {"shine_through": 2} if n_classes == 3 else {})}, "normalization":
        "per volume: (x - p0.1) / (p99.9 - p0.1) of its gray-value histogram",
        "seed": seed, "volumes": sources, "history": history}
    tmp = out.with_name(f".{out.name}.tmp")
    unet.save_model(model, tmp, metadata=metadata)
    os.replace(tmp, out)
    os.replace(tmp.with_suffix(".json"), out.with_suffix(".json"))
    return {"model": str(out), "config": config.as_dict(), "slices": len(images),
            "epochs_run": history["epochs_run"], "best_epoch": history["best_epoch"] + 1,
            "val_accuracy": history["val_accuracy"][history["best_epoch"]],
            "loss_curves": str(out.with_suffix(".png")), "seconds": round(time.time() - started, 1)}


__all__ = ["check_training", "train_unet_volumes", "training_slices"]
