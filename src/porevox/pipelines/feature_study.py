"""`porevox quantify STUDY.yaml`: the features of every tomogram of a study, in one
table with the sample metadata (``features.csv`` and ``features.parquet``) and the
figures of the paper's Fig. 2b–e and 3b–d (``figures/``).

The tomograms' passes are computed together on the cluster (:func:`quantify.run_jobs`),
so many small tomograms keep every worker busy as well as one large one does. Each
volume keeps its own features and distributions (a resumable stage): a rerun
computes only what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from . import feature_figures
from .quantify import load_distributions, make_options, prepare_volume, run_jobs, save_volume_features
from .segmentation_study import study_volumes

logger = logging.getLogger(__name__)

#: Sample metadata copied from study.yaml into the table.
META = ("id", "path", "paste", "temperature_c", "voi", "held_out", "conductivity",
        "relative_conductivity", "tortuosity_factor")


#: What a feature study writes beside the study file.
WRITES = ("features.csv", "features.parquet", "figures")


def table_row(sample: dict, labels: str, features: dict, phase: str = "1") -> dict:
    """One row: the sample's metadata, the labels and phase, and its scalar features
    (lists flattened)."""
    row = {k: sample.get(k) for k in META if k in sample}
    row["labels"] = labels
    row["phase"] = phase
    for key, value in features.items():
        if key in ("volume", "labels", "phase", "shape", "voxel_size", "directions", "features", "seconds"):
            continue
        if key == "strut_diameter_ci95":
            row["strut_diameter_ci95_lo"], row["strut_diameter_ci95_hi"] = (
                (float(value[0]), float(value[1])) if value else (math.nan, math.nan))
        elif key == "tortuosity_by_axis":
            for d, t in value.items():
                row[f"tortuosity_{d}"] = math.nan if t is None else float(t)
        elif isinstance(value, (int, float, str)) or value is None:
            row[key] = math.nan if value is None else value
    return row


def quantify_study(study: str | os.PathLike, *, labels: str | list[str] = "truth", phase=None,
                   axis="y", force: bool = False, figures: bool = True, **options) -> dict:
    """Quantify every volume of `study` (a ``study.yaml`` or its folder) for each of
    `labels` and each phase of `phase` (one, or a list; default the solid, 1); write
    ``features.csv``, ``features.parquet`` (one row per tomogram, labels and phase)
    and the figures beside ``study.yaml``; return ``{"rows", "table", "figures",
    "seconds"}``."""
    import pandas as pd

    started = time.time()
    folder, samples = study_volumes(study, writes=WRITES)
    labels = [labels] if isinstance(labels, str) else list(labels)
    wanted = list(phase) if isinstance(phase, (list, tuple)) else [phase]
    opts = make_options(axis=axis, **options)
    prepared = {(s["id"], name, k): prepare_volume(s["volume"], name, opts, force, p)
                for name in labels for k, p in enumerate(wanted) for s in samples}
    todo = [p for p in prepared.values() if p.job is not None]
    logger.info("quantify: %d of %d (volume, labels, phase) to quantify", len(todo), len(prepared))
    if todo:
        t0 = time.time()
        for p, features in zip(todo, run_jobs([p.job for p in todo], distributions=True)):
            p.record = save_volume_features(p, opts, features, t0)
    rows = [table_row(s, name, prepared[(s["id"], name, k)].record, prepared[(s["id"], name, k)].phase)
            for name in labels for k in range(len(wanted)) for s in samples]
    table = pd.DataFrame(rows)
    table.to_csv(folder / "features.csv", index=False)
    table.to_parquet(folder / "features.parquet", index=False)
    made = {}
    if figures:
        for n, name in enumerate(labels):
            for k in range(len(wanted)):
                first = prepared[(samples[0]["id"], name, k)]
                suffix = name if first.key == name else first.key
                start = (n * len(wanted) + k) * len(samples)          # the rows' order above
                part = table.iloc[start:start + len(samples)]
                dists = {s["id"]: load_distributions(s["volume"], prepared[(s["id"], name, k)].key)
                         for s in samples}
                made[suffix] = feature_figures.study_figures(part, dists, folder / "figures", suffix=suffix)
    return {"rows": rows, "csv": str(folder / "features.csv"),
            "parquet": str(folder / "features.parquet"), "figures": made,
            "seconds": round(time.time() - started, 1)}


def trend_summary(table, features=("relative_density", "specific_surface_area", "strut_diameter_mean",
                                   "tortuosity")) -> dict:
    """Per paste and feature: the Spearman correlation of the feature (mean over VOIs)
    with temperature, over the temperatures where it is defined, and its values at the
    lowest and highest temperature."""
    from scipy.stats import spearmanr

    out = {}
    for paste, part in table.groupby("paste"):
        means = part.groupby("temperature_c")[list(features)].mean().sort_index()
        out[paste] = {}
        for f in features:
            defined = means[f].dropna()
            rho = spearmanr(defined.index, defined).statistic if len(defined) > 2 else math.nan
            out[paste][f] = {"spearman": float(rho), "first": float(means[f].iloc[0]),
                             "last": float(means[f].iloc[-1]), "temperatures": len(defined)}
    return out


def markdown(table, features=("relative_density", "specific_surface_area", "strut_diameter_mean",
                              "tortuosity", "mean_curvature_mean", "gaussian_curvature_mean",
                              "bruggeman_alpha", "beta", "specific_perimeter_2d",
                              "shape_index_mean")) -> str:
    """The features per sample (mean over VOIs) as a Markdown table."""
    cols = [f for f in features if f in table.columns]
    means = table.groupby(["paste", "temperature_c"])[cols].mean().reset_index()
    short = {"relative_density": "D", "specific_surface_area": "SA µm⁻¹",
             "strut_diameter_mean": "φ µm", "tortuosity": "τ", "mean_curvature_mean": "M µm⁻¹",
             "gaussian_curvature_mean": "G µm⁻²", "bruggeman_alpha": "α", "beta": "β",
             "specific_perimeter_2d": "SP2D µm⁻¹", "shape_index_mean": "shape index"}
    lines = ["| paste | T °C | " + " | ".join(short.get(c, c) for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for _, r in means.iterrows():
        cells = [f"{r[c]:.4g}" if np.isfinite(r[c]) else "—" for c in cols]
        lines.append(f"| {r['paste']} | {int(r['temperature_c'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["markdown", "quantify_study", "table_row", "trend_summary"]
