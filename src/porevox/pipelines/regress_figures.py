"""Figures of `porevox regress`, after the paper's Fig. 4: predicted against measured
conductivity per model (a: raw features, b: with α, c: model Q, and the best model
found), SHAP importance and beeswarm (d), and the physical model beside the best
statistical one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The paper's panels: raw-feature models, α models, model Q.
PANELS = (("a", ("A", "C", "I")), ("b", ("J", "N", "R")), ("c", ("Q",)))
COLORS = ("tab:blue", "tab:orange", "tab:green")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _identity(ax, values, unit: str) -> None:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
    ax.set_xlabel(f"measured σ ({unit})")
    ax.set_ylabel(f"predicted σ ({unit})")


def _scatter(ax, result: dict, row: dict, label: str, color: str) -> None:
    y, yt = result["train_target"], result["test_target"]
    ax.scatter(y, row["loocv_pred"], s=22, color=color, alpha=0.8,
               label=f"{label} LOOCV R² {row['loocv_r2']:.3f}")
    if len(yt):
        r2 = row["test_r2"]
        ax.scatter(yt, row["test_pred"], s=60, marker="*", edgecolor="k", lw=0.5, color=color,
                   label=f"test {label}" + (f" R² {r2:.3f}" if r2 is not None and np.isfinite(r2) else ""))


def models_figure(result: dict, path: Path, unit: str = "µS/cm") -> Path:
    """Fig. 4a–c with the paper's named models, and a fourth panel with the best model."""
    plt = _plt()
    named = result["paper_models"]
    panels = [(letter, [n for n in names if n in named]) for letter, names in PANELS]
    panels = [(letter, names) for letter, names in panels if names]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 4.2), squeeze=False)
    values = np.concatenate([result["train_target"], result["test_target"]])
    for ax, (letter, names) in zip(axes[0], panels):
        for name, color in zip(names, COLORS):
            _scatter(ax, result, named[name], name, color)
        ax.set_title(f"({letter}) models {', '.join(names)}", fontsize=10)
    best = result["best"]
    _scatter(axes[0, -1], result, best, "best", "tab:red")
    axes[0, -1].set_title("best: " + ", ".join(best["features"]), fontsize=10)
    for ax in axes[0]:
        _identity(ax, values, unit)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"MVLR on {result.get('labels') or 'the table'}: LOOCV predictions (dots) and "
                 "held-out test samples (stars)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def shap_figure(explained: dict, title: str, path: Path) -> Path:
    """Fig. 4d: mean |SHAP| per feature and the beeswarm of one model."""
    import shap

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    expl = explained["explanation"]
    shap.plots.bar(expl, ax=axes[0], show=False)
    axes[0].set_title(f"{title}: mean |SHAP|", fontsize=10)
    plt.sca(axes[1])
    shap.plots.beeswarm(expl, ax=axes[1], show=False, plot_size=None)
    axes[1].set_title(f"{title}: SHAP per training sample", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def physics_figure(result: dict, path: Path, unit: str = "µS/cm") -> Path:
    """The conductivity solver's σ_eff (one fitted scale) and the best MVLR model,
    each against the measured σ."""
    plt = _plt()
    ph, best = result["physics"], result["best"]
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    y, yt = result["train_target"], result["test_target"]
    ax.scatter(y, ph["loocv_pred"], s=24, color="k",
               label=f"σ = {ph['scale']:.4g} · σ_eff/σ_bulk, LOOCV R² {ph['loocv_r2']:.3f}")
    if len(yt) and len(ph["test_pred"]):
        ax.scatter(yt, ph["test_pred"], s=60, marker="*", color="k", label="  test samples")
    _scatter(ax, result, best, "best MVLR", "tab:red")
    _identity(ax, np.concatenate([y, yt]), unit)
    ax.set_title(f"the conductivity solver ({ph['column']}) beside the best MVLR", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def all_figures(result: dict, explained: dict, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    made = {"fig4_models": models_figure(result, folder / "fig4_models.png")}
    for key, e in explained.items():
        title = "best model" if key == "best" else f"model {key}"
        made[f"fig4d_shap_{key}"] = shap_figure(e, title, folder / f"fig4d_shap_{key}.png")
    if result.get("physics"):
        made["physics"] = physics_figure(result, folder / "physics.png")
    return {k: str(v) for k, v in made.items()}


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["all_figures", "models_figure", "physics_figure", "shap_figure"]
