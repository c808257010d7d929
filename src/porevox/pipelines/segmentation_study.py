"""The paper's Table 1 on a study: CTA, Hybrid, U-Net CTA and U-Net Hybrid, scored
against the truth of every sample, mean ± sd, with one set of default parameters
for all samples (nothing tuned per sample).

For every sample: preprocess (destripe + shading), Otsu → ``labels/otsu``, the
hybrid annotation → ``labels/hybrid(_annotation)``. Then two U-Nets, each trained
once for the whole study on every fifth slice of every sample: on the hybrid
annotation (``models/unet-hybrid.pt``) and on the Otsu labels
(``models/unet-cta.pt``); each is run over every sample (``labels/unet``,
``labels/unet_cta``). No network ever sees the truth, nor a sample marked
``held_out`` in the study (a test set of later models). Every step is a resumable
stage: a rerun redoes nothing that is done.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .preprocess import preprocess
from .score import score_volume
from .segment import segment_volume
from .studyfile import claim_outputs, load_study
from .train import train_unet_volumes

logger = logging.getLogger(__name__)

ROWS = (("CTA", "otsu"), ("Hybrid", "hybrid"), ("U-Net CTA", "unet_cta"), ("U-Net Hybrid", "unet"))
COLUMNS = (("J pore", "jaccard_pore"), ("J Cu", "jaccard_cu"), ("P pore", "precision_pore"),
           ("P Cu", "precision_cu"), ("R pore", "recall_pore"), ("R Cu", "recall_cu"),
           ("accuracy", "accuracy"))
#: The paper's Table 1, for the side-by-side print.
PAPER = {"CTA": (0.69, 0.81, 0.98, 0.81, 0.70, 0.99, 0.87),
         "Hybrid": (0.77, 0.82, 0.83, 0.93, 0.92, 0.88, 0.89),
         "U-Net CTA": (0.59, 0.77, 0.98, 0.77, 0.60, 0.99, 0.83),
         "U-Net Hybrid": (0.86, 0.89, 0.89, 0.96, 0.96, 0.92, 0.94)}


#: What Table 1 of a study writes beside the study file.
WRITES = ("table1.md", "table1.json", "table1.csv", "models")


def study_volumes(study: str | os.PathLike, writes: tuple[str, ...] = ()) -> tuple[Path, list[dict]]:
    """The folder and samples of a study (a ``study.yaml`` or its folder), read and
    checked by the one study-file loader (:func:`.studyfile.load_study`), with the
    names the caller `writes` beside it claimed (:func:`.studyfile.claim_outputs`).
    Each sample is a dict: ``id``, ``path`` as the file gives it, ``volume`` (where it
    is: a local path or an object-storage location), ``held_out`` and its metadata."""
    checked = load_study(study)
    claim_outputs(checked, writes)
    return checked.folder, [{"id": s.id, "path": raw["path"], "volume": s.path, "held_out": s.held_out,
                             **s.meta} for s, raw in zip(checked.samples, checked.raw["samples"])]


def segmentation_study(study: str | os.PathLike, *, epochs: int = 30, patience: int = 8,
                       every: int = 5, seed: int = 0, progress: bool = True) -> dict:
    """Segment and score every sample of `study` four ways; return the Table-1 analog
    (also written as ``table1.md``, ``table1.csv`` and ``table1.json`` in the study
    folder)."""
    folder, samples = study_volumes(study, writes=WRITES)
    paths = [s["volume"] for s in samples]
    started = time.time()
    for p in paths:
        preprocess(p)
        segment_volume(p, "otsu")
        segment_volume(p, "hybrid")
    models = folder / "models"
    trained = {}
    train_on = [p for s, p in zip(samples, paths) if not s.get("held_out")]
    for labels, name in (("hybrid_annotation", "unet-hybrid"), ("otsu", "unet-cta")):
        out = models / f"{name}.pt"
        if not out.exists():
            trained[name] = train_unet_volumes(train_on, out, labels=labels, every=every, epochs=epochs,
                                               patience=patience, seed=seed, progress=progress)
        else:
            logger.info("segmentation study: %s exists; not retrained", out)
    for p in paths:
        segment_volume(p, "unet", model=models / "unet-hybrid.pt", name="unet")
        segment_volume(p, "unet", model=models / "unet-cta.pt", name="unet_cta")
    per_sample = []
    for s, p in zip(samples, paths):
        row = {"id": s.get("id", p.stem)}
        for method, labels in ROWS:
            row[method] = score_volume(p, labels=labels)
        per_sample.append(row)
    table = summarize(per_sample)
    result = {"table": table, "samples": per_sample, "models": trained,
              "every": every, "seconds": round(time.time() - started, 1)}
    write_tables(folder, result)
    return result


def summarize(per_sample: list[dict]) -> dict:
    """Mean and sd over samples of every metric, per method."""
    table = {}
    for method, _ in ROWS:
        if not all(method in r for r in per_sample):
            continue
        table[method] = {}
        for _, key in COLUMNS:
            values = np.array([r[method][key] for r in per_sample], dtype=np.float64)
            table[method][key] = {"mean": float(np.nanmean(values)),
                                  "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0}
    return table


def markdown(table: dict, n: int | None = None) -> str:
    head = "| method | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for method in (m for m, _ in ROWS if m in table):
        cells = [f"{table[method][k]['mean']:.3f} ± {table[method][k]['sd']:.3f}" for _, k in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method in (m for m, _ in ROWS if m in table):
        lines.append(f"| *paper: {method}* | " + " | ".join(f"*{v:.2f}*" for v in PAPER[method]) + " |")
    if n:
        lines.append(f"\nmean ± sd over {n} samples; paper rows: its Table 1 (manual ground truth).")
    return "\n".join(lines)


def write_tables(folder: Path, result: dict) -> None:
    table = result["table"]
    (folder / "table1.md").write_text(markdown(table, len(result["samples"])) + "\n")
    (folder / "table1.json").write_text(json.dumps(result, indent=1, default=str))
    with open(folder / "table1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *[f"{k}_{s}" for _, k in COLUMNS for s in ("mean", "sd")]])
        for method in (m for m, _ in ROWS if m in table):
            w.writerow([method, *[table[method][k][s] for _, k in COLUMNS for s in ("mean", "sd")]])


__all__ = ["PAPER", "ROWS", "markdown", "segmentation_study", "study_volumes", "summarize"]
