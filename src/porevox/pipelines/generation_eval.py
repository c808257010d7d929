"""Judging generated microstructures by physical descriptors (the paper's Table 3 and
Fig. 6): per class, the relative density D, the specific perimeter SP2D and the mean
shape index of real and generated images, and per paste the R² of each descriptor
and their average.

R² of a model for a paste and a descriptor compares the generated images' class
means with the real ones' over that paste's temperatures:
``R² = 1 − Σ_T (gen_T − real_T)² / Σ_T (real_T − mean_T real)²``. It is 1 when the
generated descriptor follows the real one exactly, 0 when it does no better than the
real mean, and negative when worse. Beside it, as extra evidence: the two-point
correlation S2 and the solid and pore chord-length distributions per class.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..kernels.descriptors2d import NoInterfaceWarning, descriptors_2d
from ..kernels.statistics2d import chord_lengths, two_point_correlation

#: The descriptors of Table 3: (key, label, unit).
DESCRIPTORS = (("relative_density", "D", ""), ("specific_perimeter", "SP2D", "µm⁻¹"),
               ("shape_index_mean", "shape index", ""))


def image_descriptors(images, pixel_size, sigma: float = 1.0) -> dict[str, np.ndarray]:
    """D, SP2D and the mean shape index of each image of ``(n, h, w)`` (the
    quantification's 2-D kernel, one image at a time); NaN where undefined."""
    out = {key: [] for key, _, _ in DESCRIPTORS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoInterfaceWarning)
        for image in images:
            d = descriptors_2d(image, pixel_size=pixel_size, sigma=sigma)
            for key in out:
                out[key].append(d[key])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def class_statistics(images, pixel_size, max_distance: float | None = None) -> dict:
    """Per class: descriptor means and sds, the mean S2 curve, and mean chord lengths."""
    d = image_descriptors(images, pixel_size)
    stats = {key: {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan,
                   "sd": float(np.nanstd(v)) if np.isfinite(v).any() else math.nan}
             for key, v in d.items()}
    curves = [two_point_correlation(im, pixel_size=pixel_size, max_distance=max_distance)
              for im in images]
    n = min(len(r) for r, _ in curves)
    stats["s2"] = {"r": curves[0][0][:n].tolist(),
                   "s2": np.mean([s[:n] for _, s in curves], axis=0).tolist()}
    for phase, name in ((1, "solid"), (0, "pore")):
        chords = [chord_lengths(im, phase=phase, pixel_size=pixel_size) for im in images]
        lengths = np.concatenate([np.r_[c["x"], c["y"]] for c in chords])
        stats[f"chord_{name}_mean"] = float(lengths.mean()) if lengths.size else math.nan
    stats["n"] = int(len(images))
    return stats


def r2(real: np.ndarray, generated: np.ndarray) -> float:
    """1 − Σ (g − r)² / Σ (r − r̄)² over the classes where both are defined."""
    real, generated = np.asarray(real, float), np.asarray(generated, float)
    ok = np.isfinite(real) & np.isfinite(generated)
    if ok.sum() < 2:
        return math.nan
    sst = np.sum((real[ok] - real[ok].mean()) ** 2)
    return float(1 - np.sum((generated[ok] - real[ok]) ** 2) / sst) if sst > 0 else math.nan


def table3(classes: list[dict], real: list[dict], generated: dict[str, list[dict]]) -> dict:
    """The Table-3 analog: for each model and paste, R² per descriptor and their
    average. `real` and each ``generated[model]`` are :func:`class_statistics` per
    class, in the order of `classes` (dicts with ``paste`` and ``temperature_c``)."""
    pastes = sorted({c["paste"] for c in classes})
    out = {}
    for model, stats in generated.items():
        out[model] = {}
        for paste in pastes:
            sel = [i for i, c in enumerate(classes) if c["paste"] == paste]
            row = {key: r2([real[i][key]["mean"] for i in sel], [stats[i][key]["mean"] for i in sel])
                   for key, _, _ in DESCRIPTORS}
            values = [v for v in row.values() if np.isfinite(v)]
            row["average"] = float(np.mean(values)) if values else math.nan
            out[model][paste] = row
    return out


#: The paper's Table 3 as its text reads (paper/wijaya2024-porous-copper.txt): R² of D,
#: SP2D, shape index and their average, per paste. NPC's cGAN row does not average to
#: its stated 0.87 (the extracted shape index, 0.34, repeats HPB's); kept as printed.
PAPER_TABLE3 = {"cGAN": {"HPA": (0.33, 0.75, 0.72, 0.60), "HPB": (0.28, 0.69, 0.34, 0.44),
                         "NPC": (0.88, 0.87, 0.34, 0.87)},
                "DDPM": {"HPA": (0.76, 0.86, 0.89, 0.84), "HPB": (0.72, 0.83, 0.92, 0.82),
                         "NPC": (0.86, 0.97, 0.92, 0.90)}}


def markdown(table: dict) -> str:
    """The Table-3 analog as Markdown."""
    head = "| model | paste | " + " | ".join(label for _, label, _ in DESCRIPTORS) + " | average |"
    lines = [head, "|---|---|" + "---|" * (len(DESCRIPTORS) + 1)]
    for model, rows in table.items():
        for paste, row in rows.items():
            cells = [f"{row[k]:.2f}" if np.isfinite(row[k]) else "—" for k, _, _ in DESCRIPTORS]
            avg = f"{row['average']:.2f}" if np.isfinite(row["average"]) else "—"
            lines.append(f"| {model} | {paste} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines)


__all__ = ["DESCRIPTORS", "PAPER_TABLE3", "class_statistics", "image_descriptors", "markdown", "r2",
           "table3"]
