"""`porevox generate evaluate` and `porevox generate design`: the generative models
judged against the study's real crops (the paper's Table 3, Figs. 5 and 6), and
inverse design from a target conductivity.

Evaluate: per (paste, temperature) class, the real crops of the training samples
(all of them by default) and ``n`` generated images per model, their D, SP2D and mean
shape index (the quantification's 2-D kernel), S2 and chord lengths; the R² per
paste (:mod:`generation_eval`); ``generation/table3.md/.json`` and
``generation/figures/`` (``fig5_grid.png``: real, cGAN and DDPM per paste and
temperature; ``fig6_descriptors.png``: each descriptor against temperature, mean ±
sd).

Design: for each target conductivity the DDPM generates ``n`` images conditioned on
it; their 2-D descriptors go through a linear model of σ on the study's per-sample
2-D descriptors (``pv.regress`` on ``features.csv``: D, SP2D, shape index, the best
subset by LOOCV), which predicts σ back; the closed-loop error is predicted − target
(``generation/design.json``, ``figures/design.png``).
"""

from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path

import numpy as np

from . import generation_eval as ge
from .crops import crop_index
from .generate import ETA, GUIDANCE, Generator
from .segmentation_study import study_volumes

logger = logging.getLogger(__name__)

#: The 2-D descriptors of features.csv and of descriptors_2d, for the design model.
DESIGN_FEATURES = {"relative_density": "relative_density",
                   "specific_perimeter_2d": "specific_perimeter",
                   "shape_index_mean": "shape_index_mean"}


#: Inverse-design targets (µS/cm), within the twin's measured range.
DESIGN_TARGETS = (50.0, 100.0, 200.0)


def generation_stage(study, *, kinds=("ddpm", "cgan"), minutes: float | None = None,
                     steps: int | None = None, n: int = 64, seed: int = 0,
                     targets=DESIGN_TARGETS, progress: bool = False) -> dict:
    """Train the `kinds` of model (``cpu`` preset; `minutes` each at most, `steps` at
    most; with a cluster, all at once), the Table-3 analog with `n` images per class,
    and inverse design for the target conductivities with the DDPM (where there is one
    and `targets`)."""
    trained = train_all(study, kinds, minutes=minutes, steps=steps, seed=seed, progress=progress)
    evaluation = evaluate_generators(study, [t["model"] for t in trained.values()], n=n, seed=seed)
    designed = (design(study, trained["ddpm"]["model"], targets, n=n, seed=seed)
                if "ddpm" in trained and targets else None)
    return {"training": trained, "evaluation": evaluation, "design": designed}


def train_all(study, kinds, *, progress: bool = False, **kwargs) -> dict:
    """Each kind's training (:func:`porevox.pipelines.generate.train_generator`). On a
    cluster with room for it (:func:`~porevox.engine.cluster.spreads`), the kinds
    train at once, each as a task on its own worker, on that worker's threads (and
    without a progress bar): torch on two threads keeps two cores ~70 % busy, so two
    networks on one core each train ~1.4x more in all and finish in half the wall time
    (a `minutes` budget is then each network's wall time, on one core).
    `kwargs` go to ``train_generator`` (``preset`` ``cpu`` unless given)."""
    from ..engine.cluster import spread_calls, spreads
    from .generate import train_generator

    kw = {"preset": "cpu", "progress": progress and not spreads(len(kinds)), **kwargs}
    trained = spread_calls([partial(train_generator, study, kind=kind, **kw) for kind in kinds], pin=True)
    return dict(zip(kinds, trained))


def _real_crops(index, c: int, n: int | None, seed: int) -> np.ndarray:
    """Class `c`'s crops: all of them (``n`` None), or ``n`` drawn with `seed`."""
    members = np.flatnonzero(index.label == c)
    if n is not None and n < members.size:
        members = np.random.default_rng([seed, c]).choice(members, n, replace=False)
    return index.load(sorted(int(i) for i in members))


def _real_class(index, c: int, n: int | None, seed: int, pixel) -> tuple:
    """Class `c`'s real crops (:func:`_real_crops`): the first, their number and their
    statistics."""
    images = _real_crops(index, c, n, seed)
    return images[:1], len(images), ge.class_statistics(images, pixel)


def _generated(model, n: int, pixel, *, examples: int = 1, statistics: bool = True, **sample) -> tuple:
    """`n` images of `model` (``Generator.sample(n, **sample)``): the first `examples`
    and their statistics (:func:`generation_eval.class_statistics`), or (not
    `statistics`) their descriptors per image."""
    images = Generator(model).sample(n, **sample)
    return images[:examples], (ge.class_statistics(images, pixel) if statistics
                               else ge.image_descriptors(images, pixel))


def evaluate_generators(study, models, *, n: int = 128, real: int | None = None, seed: int = 0,
                        steps: int = 50, guidance: float = GUIDANCE, eta: float = ETA, out=None,
                        figures: bool = True) -> dict:
    """The Table-3 analog of `models` (trained model folders) on `study`: ``n``
    generated images per class and model against `real` crops of the class (default:
    all of them, so the reference carries no sampling noise of its own). Each class's
    sampling and statistics are one call; on a cluster with room for model work
    (:func:`~porevox.engine.cluster.spreads`) they run as tasks on all its workers at
    once."""
    from ..engine.cluster import spread_calls

    folder, _ = study_volumes(study, writes=("generation",) if out is None else ())
    gens = {}
    for path in models:
        g = Generator(path)
        gens["DDPM" if g.kind == "ddpm" else "cGAN"] = g
    first = next(iter(gens.values()))
    meta = first.meta
    index = crop_index(study, labels=meta["labels"], size=meta["size"])
    classes = index.classes
    for name, g in gens.items():
        if [(c["paste"], c["temperature_c"]) for c in g.classes] != \
                [(c["paste"], c["temperature_c"]) for c in classes]:
            raise ValueError(f"the {name} model was trained on other classes than {folder} has")
    pixel = tuple(meta["pixel_size"])
    sampling = {"steps": steps, "guidance": guidance, "eta": eta}
    calls = [partial(_generated, g.path, n, pixel, paste=c["paste"], temperature_c=c["temperature_c"],
                     seed=seed + i, **sampling) for g in gens.values() for i, c in enumerate(classes)]
    calls += [partial(_real_class, index, c, real, seed, pixel) for c in range(len(classes))]
    done = spread_calls(calls)
    nc = len(classes)
    per_model = {name: done[j * nc:(j + 1) * nc] for j, name in enumerate(gens)}
    generated_images = {name: [r[0] for r in rs] for name, rs in per_model.items()}
    generated = {name: [r[1] for r in rs] for name, rs in per_model.items()}
    real_images, n_real, real = map(list, zip(*done[len(gens) * nc:]))
    table = ge.table3(classes, real, generated)
    result = {"classes": [{k: c[k] for k in ("paste", "temperature_c", "conductivity")} for c in classes],
              "n": n, "n_real": n_real, "table3": table, "real": real, "generated": generated,
              "models": {k: str(g.path) for k, g in gens.items()}, "paper": ge.PAPER_TABLE3}
    out = Path(out) if out is not None else folder / "generation"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "table3.md").write_text(ge.markdown(table) + "\n")
    (out / "table3.json").write_text(json.dumps(_clean(result), indent=1))
    if figures:
        figs = out / "figures"
        result["figures"] = {
            "fig5_grid": str(grid_figure(classes, real_images, generated_images, figs / "fig5_grid.png")),
            "fig6_descriptors": str(descriptor_figure(classes, real, generated,
                                                      figs / "fig6_descriptors.png"))}
    result["files"] = {"table3_md": str(out / "table3.md"), "table3_json": str(out / "table3.json")}
    return result


def _clean(obj):
    from ..engine.provenance import finite

    return finite(obj)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_figure(classes, real_images, generated_images, path: Path) -> Path:
    """Fig. 5: one image per class, rows real / each model per paste, columns temperature."""
    plt = _plt()
    pastes = sorted({c["paste"] for c in classes})
    temps = sorted({c["temperature_c"] for c in classes})
    sources = [("real", real_images), *generated_images.items()]
    rows = [(p, name, ims) for p in pastes for name, ims in sources]
    fig, axes = plt.subplots(len(rows), len(temps), figsize=(1.6 * len(temps), 1.6 * len(rows)),
                             squeeze=False)
    for r, (paste, name, ims) in enumerate(rows):
        for col, t in enumerate(temps):
            ax = axes[r, col]
            ax.set_axis_off()
            k = next((i for i, c in enumerate(classes) if c["paste"] == paste and c["temperature_c"] == t),
                     None)
            if k is not None and len(ims[k]):
                ax.imshow(ims[k][0], cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(f"{t} °C", fontsize=8)
            if col == 0:
                ax.text(-0.1, 0.5, f"{paste}\n{name}", transform=ax.transAxes, ha="right", va="center",
                        fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def descriptor_figure(classes, real, generated, path: Path) -> Path:
    """Fig. 6: each descriptor against temperature per paste, mean ± sd, real and models."""
    plt = _plt()
    pastes = sorted({c["paste"] for c in classes})
    fig, axes = plt.subplots(len(ge.DESCRIPTORS), len(pastes), figsize=(3.4 * len(pastes), 2.6 * 3),
                             squeeze=False)
    for col, paste in enumerate(pastes):
        sel = [i for i, c in enumerate(classes) if c["paste"] == paste]
        t = [classes[i]["temperature_c"] for i in sel]
        for row, (key, label, unit) in enumerate(ge.DESCRIPTORS):
            ax = axes[row, col]
            for name, stats, style in (("real", real, "k-o"), *[(m, s, "--s") for m, s in generated.items()]):
                m = [stats[i][key]["mean"] for i in sel]
                sd = [stats[i][key]["sd"] for i in sel]
                ax.errorbar(t, m, yerr=sd, fmt=style, ms=3, capsize=2, lw=1, label=name)
            ax.set_title(f"{paste}: {label}", fontsize=9)
            ax.set_xlabel("T (°C)", fontsize=8)
            if unit:
                ax.set_ylabel(unit, fontsize=8)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def design(study, model, targets, *, n: int = 64, seed: int = 0, steps: int = 50, guidance: float = GUIDANCE,
           eta: float = ETA, features_table=None, out=None, figures: bool = True) -> dict:
    """Inverse design: images for each target conductivity, and σ predicted back from
    their 2-D descriptors; the closed-loop error per target. Writes ``design.json``
    and ``figures/design.png`` (generated images per target) to `out` (default
    ``<study>/generation``)."""
    from ..engine.cluster import spread_calls
    from ..models import regression as mvlr
    from .regress import plan_regression, run_regression

    folder, _ = study_volumes(study, writes=("generation",) if out is None else ())
    g = Generator(model)
    if g.kind != "ddpm" or not g.config.continuous:
        raise ValueError("inverse design needs the DDPM (conditioned on conductivity): "
                         "porevox generate train STUDY --model ddpm")
    table = features_table if features_table is not None else folder / "features.csv"
    plan = plan_regression(table, labels=g.meta["labels"], features=list(DESIGN_FEATURES),
                           min_features=1, drop_nan=True, figures=False)
    best = run_regression(plan)["best"]
    law = mvlr.fit(plan.train[best["columns"]].to_numpy(float), plan.train[plan.target].to_numpy(float))
    pixel = tuple(g.meta["pixel_size"])
    sampled = spread_calls([partial(_generated, g.path, n, pixel, examples=6, statistics=False,
                                    conductivity=float(target), seed=seed + k, steps=steps,
                                    guidance=guidance, eta=eta) for k, target in enumerate(targets)])
    fitted_x = plan.train[best["columns"]].to_numpy(float)
    fitted_y = plan.train[plan.target].to_numpy(float)
    rows, examples = [], []
    for target, (images, d) in zip(targets, sampled):
        examples.append(images)
        x = np.column_stack([d[DESIGN_FEATURES[c]] for c in best["columns"]])
        ok = np.isfinite(x).all(axis=1)
        per_image = law.predict(x[ok]) if ok.any() else np.array([math.nan])
        mean_x = np.nanmean(x, axis=0, keepdims=True)
        predicted = float(law.predict(mean_x)[0])
        rows.append({"target": float(target), "predicted": predicted, "error": predicted - float(target),
                     "relative_error": (predicted - float(target)) / float(target) if target else math.nan,
                     "per_image_sd": float(np.std(per_image)), "images": int(n),
                     "descriptors": {c: float(np.nanmean(d[DESIGN_FEATURES[c]])) for c in DESIGN_FEATURES},
                     "flag": validity(predicted, mean_x[0], fitted_x, fitted_y, best["columns"])})
    result = {"model": str(g.path), "regression": {"features": best["features"],
                                                   "loocv_r2": best["loocv_r2"],
                                                   "coefficients": best["coefficients"]},
              "targets": rows}
    out = Path(out) if out is not None else folder / "generation"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "design.json").write_text(json.dumps(_clean(result), indent=1))
    result["files"] = {"design_json": str(out / "design.json")}
    if figures:
        result["files"]["figure"] = str(design_figure(rows, examples, out / "figures" / "design.png"))
    return result


def validity(predicted: float, x, fitted_x, fitted_y, names) -> str | None:
    """Why a prediction of the design law is not a result, or None where it is one:
    σ < 0 is outside physics; descriptors or σ outside the ranges the law was fitted
    on are an extrapolation of a linear law."""
    if not math.isfinite(predicted):
        return "no prediction: the generated images' descriptors are undefined"
    if predicted < 0:
        return f"σ < 0 is outside physics (the linear law gives {predicted:.4g})"
    lo, hi = np.nanmin(fitted_x, axis=0), np.nanmax(fitted_x, axis=0)
    outside = [f"{name} {v:.3g} outside {a:.3g}–{b:.3g}" for name, v, a, b in zip(names, x, lo, hi)
               if not a <= v <= b]
    if outside:
        return "extrapolated: " + ", ".join(outside) + " (the range the law was fitted on)"
    if not np.nanmin(fitted_y) <= predicted <= np.nanmax(fitted_y):
        return (f"extrapolated: σ {predicted:.4g} outside the fitted {np.nanmin(fitted_y):.4g}–"
                f"{np.nanmax(fitted_y):.4g}")
    return None


def shown(row: dict, spec: str = ".1f") -> str:
    """A design row's prediction as it may be printed: the value, or why it is none."""
    return f"{row['predicted']:{spec}}" if not row.get("flag") else f"not a result ({row['flag']})"


def design_figure(rows, examples, path: Path) -> Path:
    """Generated images per target conductivity, titled with σ predicted back."""
    plt = _plt()
    cols = max(len(e) for e in examples)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 1.7 * len(rows)), squeeze=False)
    for r, (row, images) in enumerate(zip(rows, examples)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"target {row['target']:g}, predicted "
                             + (f"{row['predicted']:.0f} µS/cm" if not row.get("flag")
                                else "— (not a result: see design.json)"), fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["DESIGN_FEATURES", "descriptor_figure", "design", "design_figure", "evaluate_generators",
           "grid_figure", "shown", "validity"]
