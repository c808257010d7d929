"""`report.html`: one static, self-contained page of a study's results, to keep beside
a paper. Every figure is embedded as a base64 PNG and the CSS is inline; the page
loads nothing from the network (its only links are relative ones to local files, such
as the Dask performance reports), so it opens offline and travels as one file.

Sections, each shown only when its artifacts exist ("not run" otherwise): the header
(study, tomograms, when, porevox version, total time, Dask reports and dashboard), the
study (samples, contact sheet), segmentation (Table 1 analog, U-Net training curves,
contour overlays drawn here from the volumes), features (``features.csv``,
``figures/``), regression (``regression/<labels>/table2.json``), generation
(``generation/``, ``models/ddpm|cgan``) and provenance (versions, stage parameters,
per-step timings, cluster) from the run record of ``porevox run``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .. import __version__
from ..engine.provenance import versions as provenance_versions
from ..errors import StudyFileError
from .studyfile import read_yaml, sample_path

logger = logging.getLogger(__name__)

#: Labels whose contours the overlays draw, with their colours.
OVERLAY_LABELS = {"otsu": "gold", "hybrid": "deepskyblue", "unet": "magenta", "truth": "lime"}
#: Features of the compact table: (column, header).
MAIN_FEATURES = (("relative_density", "D"), ("specific_surface_area", "SA µm⁻¹"),
                 ("strut_diameter_mean", "φ µm"), ("tortuosity", "τ"), ("mean_curvature_mean", "M µm⁻¹"),
                 ("gaussian_curvature_mean", "G µm⁻²"), ("bruggeman_alpha", "α"), ("beta", "β"))
#: Captions of figures/<kind>-<labels>.png, in the order shown.
FEATURE_CAPTIONS = {
    "trends": "Features against sinter temperature per paste, means with 95 % CI (paper Fig. 2b–e)",
    "strut_diameters": "Strut diameters at skeleton voxels with the log-normal fit (mean dashed)",
    "curvature": "Joint distributions of Gaussian and mean curvature, KDE; + area-weighted means "
                 "(paper Fig. 3b–d)"}
REGRESSION_CAPTIONS = {
    "fig4_models": "Predicted against measured σ, LOOCV (★ test samples): the paper's models and "
                   "the best one found (paper Fig. 4a–c)",
    "fig4d_shap_best": "SHAP importance of the best model (paper Fig. 4d)",
    "fig4d_shap_Q": "SHAP importance of model Q (paper Fig. 4d)",
    "physics": "The physical model σ = s · σ_eff/σ_bulk from the conductivity solver"}
SECTIONS = (("study", "The study"), ("segmentation", "Segmentation"), ("features", "Features"),
            ("regression", "Structure–property models"), ("generation", "Generation"),
            ("provenance", "Provenance"))
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
 background:#eef0f3}
main{max-width:1180px;margin:0 auto;padding:1.2em 2.2em 3em;background:#fff}
h1{margin:.2em 0}h2{border-bottom:2px solid #d5d9e0;padding-bottom:.15em;margin-top:1.8em}
h3{margin:1.3em 0 .3em}.meta,.note,figcaption{color:#555}.note,figcaption{font-size:13.5px}
nav{margin:.6em 0;padding:.4em 0;border-top:1px solid #e3e5ea;border-bottom:1px solid #e3e5ea}
nav a{margin-right:1.1em;text-decoration:none}a{color:#2a5db0}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5em 0 .8em;font-size:13.5px}
th,td{padding:.22em .65em;border-bottom:1px solid #e6e8ec;text-align:right;white-space:nowrap;
 vertical-align:top}th.l,td.l{text-align:left;white-space:normal}
thead th{background:#f1f3f6;border-bottom:2px solid #cfd4dc}
tr.paper td{color:#7a7f88;font-style:italic}tr.best td{background:#f3f8ee}
figure{margin:.8em 0}figure img{max-width:100%;max-height:1100px;width:auto;height:auto}
.figs{display:flex;flex-wrap:wrap;gap:1em 1.5em;align-items:flex-start}
.figs figure{flex:1 1 440px;margin:.4em 0}.figs figure.wide{flex-basis:100%}
.missing{color:#999;font-style:italic}
code{font-size:12.5px;background:#f3f4f7;padding:0 .25em;word-break:break-all}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#2a5db0}
"""


# --------------------------------------------------------------------------- HTML helpers
class _Raw(str):
    """Text that is HTML already (not escaped again)."""


def _e(text) -> str:
    return text if isinstance(text, _Raw) else html.escape(str(text))


def _fmt(v, spec: str = ".3g") -> str:
    """A value as table text: "—" for None or NaN, yes/no for booleans."""
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), spec) if math.isfinite(v) else "—"
    return str(v)


def _table(head, rows, *, left: int = 1, spec: str = ".3g", row_class=None) -> str:
    """A table; the first `left` columns are text (left-aligned), the others numbers."""
    def cell(tag, i, v):
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{_e(v if isinstance(v, _Raw) else _fmt(v, spec))}</{tag}>"

    out = ['<div class="scroll"><table>']
    if any(head):         # a key–value table has no header row
        out.append("<thead><tr>" + "".join(cell("th", i, _Raw(_e(h))) for i, h in enumerate(head))
                   + "</tr></thead>")
    out.append("<tbody>")
    for k, row in enumerate(rows):
        cls = row_class[k] if row_class and k < len(row_class) else ""
        out.append((f'<tr class="{cls}">' if cls else "<tr>")
                   + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def _figure(src, caption: str) -> str:
    """A figure from a PNG file or PNG bytes; "" when the file is missing. A PNG of
    1000 px or wider takes the whole width."""
    if not isinstance(src, bytes):
        if src is None or not Path(src).is_file():
            return ""
        src = Path(src).read_bytes()
    wide = src[:4] == b"\x89PNG" and int.from_bytes(src[16:20], "big") >= 1000   # IHDR width
    uri = "data:image/png;base64," + base64.b64encode(src).decode("ascii")
    cls = ' class="wide"' if wide else ""
    return (f'<figure{cls}><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _figures(items) -> str:
    made = [f for f in (_figure(src, cap) for src, cap in items) if f]
    return f'<div class="figs">{"".join(made)}</div>' if made else ""


def _p(text, cls: str = "note") -> str:
    return f'<p class="{cls}">{_e(text)}</p>'


def _not_run(what: str) -> str:
    return _p(f"not run: {what}", "missing")


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("report: cannot read %s (%s)", path, err)
        return None


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.1f} s"


def _local_href(folder: Path, path) -> str | None:
    """A relative href to a local file; None for anything with a scheme."""
    path = str(path)
    if ":" in path.split("/")[0]:        # http:, javascript:, data:, C:…
        return None
    if os.path.isabs(path):
        path = os.path.relpath(path, folder)
    return quote(Path(path).as_posix())


# --------------------------------------------------------------------------- sections
def _header(folder: Path, manifest: dict, samples: list, run: dict) -> str:
    name = run.get("name") or manifest.get("name") or folder.name
    when = " → ".join(str(run[k]).replace("T", " ") for k in ("started", "finished") if run.get(k))
    facts = [f"{len(samples)} tomograms", when, f"porevox {run.get('porevox_version') or __version__}",
             f"total {_duration(run['seconds'])}" if "seconds" in run else ""]
    out = [f"<h1>{_e(name)}</h1>", _p(" · ".join(f for f in facts if f), "meta")]
    if run.get("study"):
        out.append(_p(f"study: {run['study']}"))
    links = []
    for rep in run.get("performance_reports") or []:
        href = _local_href(folder, rep)
        if href:
            missing = "" if (folder / rep).is_file() else " (missing)"
            links.append(f'<a href="{href}">{_e(Path(rep).name)}</a>{_e(missing)}')
    line = [f"Dask performance report{'s' if len(links) > 1 else ''}: " + ", ".join(links)] if links else []
    dash = (run.get("cluster") or {}).get("dashboard")
    if dash:
        line.append(f"dashboard used: <code>{_e(dash)}</code>")
    if line:
        out.append('<p class="note">' + " · ".join(line) + "</p>")
    out.append(_p(f"report written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} from {folder}"))
    out.append("<nav>" + "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS) + "</nav>")
    return "<header>" + "".join(out) + "</header>"


def _study(folder: Path, manifest: dict, samples: list) -> str:
    if not samples:
        return _not_run("no study.yaml with samples in this folder")
    unit = str(manifest.get("conductivity_unit", "")).replace("uS", "µS")
    rows = [[s.get("id"), s.get("paste"), s.get("temperature_c"), s.get("voi"), s.get("held_out"),
             s.get("conductivity")] for s in samples]
    out = [_table(["id", "paste", "T °C", "VOI", "held out", f"σ {unit}".strip()], rows, left=2, spec=".4g")]
    if manifest.get("voxel_size"):
        out.append(_p(f"voxel size (z, y, x) {manifest['voxel_size']} {manifest.get('unit', '')}; "
                      f"shape {manifest.get('shape', '—')}. Held-out samples are test sets no model "
                      "trains on."))
    out.append(_figures([(folder / "contact_sheet.png",
                          "Contact sheet: middle slice of each sample (image and truth)")]))
    return "".join(out)


def _pick_overlay_samples(samples: list, n: int = 6) -> list:
    """One per paste at its lowest and highest temperature (training samples), ≤ n."""
    by_paste: dict = {}
    for s in samples:
        if not s.get("held_out"):
            by_paste.setdefault(s.get("paste"), []).append(s)
    picked = []
    for group in by_paste.values():
        t = [s.get("temperature_c") for s in group]
        group = [group[i] for i in sorted(range(len(group)), key=lambda i: (t[i] is None, t[i] or 0))]
        picked += [group[0]] + ([group[-1]] if len(group) > 1 else [])
    return picked[:n]


def overlay_figure(folder, samples: list, n: int = 6) -> bytes | None:
    """PNG bytes: the middle z slice of the image of up to `n` samples with the contours
    of their label images (:data:`OVERLAY_LABELS`); None when no volume has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ..engine.storage import LABELS, open_volume

    panels = []
    for s in _pick_overlay_samples(samples, n):
        try:
            vol = open_volume(sample_path(folder, s["path"]), mode="r")
        except Exception as err:  # a missing or damaged volume leaves out its panel only
            logger.warning("report: no overlay for %s (%s)", s.get("id"), err)
            continue
        names = [k for k in OVERLAY_LABELS if k in vol.labels]
        if names and vol.has_image:       # contours over the gray image; labels alone have none
            mid = vol.image.shape[0] // 2
            panels.append((s, vol.image[mid], {k: vol.array(f"{LABELS}/{k}")[mid] for k in names}))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.8 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (s, image, labels) in zip(axes.ravel(), panels):
        lo, hi = np.percentile(image, (0.5, 99.5))
        ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
        for k, lab in labels.items():
            if 0 < np.count_nonzero(lab) < lab.size:
                ax.contour(lab.astype(np.float32), levels=[0.5], colors=[OVERLAY_LABELS[k]],
                           linewidths=0.7, linestyles="--" if k == "truth" else "-")
        t = s.get("temperature_c")
        ax.set_title(f"{s.get('id')}" + (f" ({s.get('paste')}, {t} °C)" if t is not None else ""), fontsize=9)
    shown = [k for k in OVERLAY_LABELS if any(k in labels for _, _, labels in panels)]
    fig.legend([Line2D([], [], color=OVERLAY_LABELS[k], ls="--" if k == "truth" else "-") for k in shown],
               [f"labels/{k}" for k in shown], loc="outside lower center", ncol=len(shown), fontsize=9,
               frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _table1(t1: dict) -> str:
    from .segmentation_study import COLUMNS, PAPER, ROWS

    table = t1["table"]
    methods = [m for m, _ in ROWS if m in table]
    rows = [[m, *[_Raw(f"{_fmt(table[m][k].get('mean'), '.3f')} ± {_fmt(table[m][k].get('sd'), '.3f')}")
                  for _, k in COLUMNS]] for m in methods]
    rows += [[f"paper: {m}", *PAPER[m]] for m in methods]
    per = t1.get("samples") or []
    return "".join([
        "<h3>Table 1 analog</h3>",
        _table(["method", *[c for c, _ in COLUMNS]], rows, spec=".2f",
               row_class=[""] * len(methods) + ["paper"] * len(methods)),
        _p(f"Mean ± sd over {len(per)} samples against the truth (pore and Cu classes); paper rows: "
           "its Table 1 (manual ground truth)."),
        _details("accuracy per sample", _table(
            ["sample", *methods], [[r.get("id"), *[(r.get(m) or {}).get("accuracy") for m in methods]]
                                   for r in per]))])


def _unet_caption(png: Path) -> str:
    meta = (_load_json(png.with_suffix(".json")) or {}).get("metadata") or {}
    hist = meta.get("history") or {}
    best, acc = hist.get("best_epoch"), hist.get("val_accuracy") or []
    acc = acc[best] if isinstance(best, int) and 0 <= best < len(acc) else None
    return (f"{png.stem}: trained on labels/{meta.get('labels', '—')}, {hist.get('epochs_run', '—')} epochs; "
            f"weights of epoch {best + 1 if isinstance(best, int) else '—'} kept "
            f"(validation accuracy {_fmt(acc, '.3f')})")


def _segmentation(folder: Path, samples: list) -> str:
    t1 = _load_json(folder / "table1.json")
    out = [_table1(t1) if t1 and t1.get("table") else _not_run("segmentation scores (no table1.json)")]
    curves = _figures((png, _unet_caption(png)) for png in sorted((folder / "models").glob("unet-*.png")))
    if curves:
        out += ["<h3>U-Net training</h3>", curves]
    overlay = overlay_figure(folder, samples) if samples else None
    if overlay:
        out += ["<h3>Segmentations on the middle slice</h3>",
                _figures([(overlay, "Contours of each segmentation over the raw image (middle z slice); "
                                    "one sample per paste at its lowest and highest temperature")])]
    return "".join(out)


def _features(folder: Path) -> str:
    import pandas as pd

    if not (folder / "features.csv").is_file():
        return _not_run("quantification (no features.csv)")
    table = pd.read_csv(folder / "features.csv")
    cols = [(c, h) for c, h in MAIN_FEATURES if c in table.columns]
    keys = [k for k in ("labels", "paste") if k in table.columns]
    out = []
    if cols and keys:
        groups = table.groupby(keys, sort=True)
        means, n = groups[[c for c, _ in cols]].mean(), groups.size()
        rows = [[*(k if isinstance(k, tuple) else (k,)), n[k], *means.loc[k].to_numpy(float)]
                for k in means.index]
        out += [_table([*keys, "n", *[h for _, h in cols]], rows, left=len(keys), spec=".4g"),
                _p("Means over each paste's samples, all temperatures (undefined values left out); "
                   "every sample below and in features.csv.")]
    ident = [c for c in ("labels", "id", "temperature_c") if c in table.columns]
    per = [[*row[:len(ident)], *map(float, row[len(ident):])]
           for row in table[ident + [c for c, _ in cols]].itertuples(index=False)]
    out.append(_details(f"features of every sample ({len(table)} rows)",
                        _table([*ident, *[h for _, h in cols]], per, left=2, spec=".4g")))
    order = list(FEATURE_CAPTIONS)
    pngs = sorted((folder / "figures").glob("*.png"), key=lambda p: (
        order.index(p.stem.split("-")[0]) if p.stem.split("-")[0] in order else len(order), p.stem))
    out.append(_figures((png, FEATURE_CAPTIONS.get(png.stem.split("-")[0], png.stem)
                         + (f" — labels/{png.stem.partition('-')[2]}" if "-" in png.stem else ""))
                        for png in pngs))
    return "".join(out)


def _table2(r: dict, labels: str) -> str:
    from .regress import shap_summary, table_rows

    def row(m, name=None, features=None):
        coefs = (m.get("coefficients") or {}).items()
        feats = features or ", ".join(f"{s} {_fmt(c, '+.3g')}" for s, c in coefs)
        paper = " / ".join(_fmt(v) for v in (m.get("paper") or {}).values())
        return [m.get("rank", "—"), name or m.get("model") or "", feats,
                *[m.get(k) for k in ("loocv_rmse", "loocv_r2", "test_rmse", "test_r2")], paper]

    models = table_rows(r)
    rows = [row(m) for m in models]
    ph = r.get("physics")
    if ph:
        rows.append(row({**ph, "rank": "—"}, "physics", f"σ = {_fmt(ph.get('scale'), '.4g')} · σ_eff/σ_bulk"))
    test = r.get("test_ids") or []
    out = [f"<h3>Table 2 analog — labels/{_e(labels)}</h3>",
           _table(["rank", "model", "features (standardised coefficient)", "LOOCV RMSE", "LOOCV R²",
                   "test RMSE", "test R²", "paper: LOOCV RMSE / R² / test RMSE / R²"], rows, left=3,
                  row_class=["best" if m.get("rank") == 1 else "" for m in models]),
           _p(f"{r.get('subsets', '—')} models of {r.get('min_features', '—')}–{r.get('max_features', '—')} "
              f"features ranked by LOOCV RMSE; {len(r.get('train_ids') or [])} training samples, "
              f"{len(test)} test samples ({', '.join(test) or 'none'}); target {r.get('target', '—')}.")]
    by_paste = (r.get("best") or {}).get("loocv_r2_by_paste")
    if by_paste:
        paper = ", ".join(f"{k} {v}" for k, v in (r.get("paper_r2_by_paste") or {}).items())
        ours = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in by_paste.items())
        out.append(_p(f"Best model's LOOCV R² per paste: {ours} (paper: {paper})."))
    if r.get("shap"):
        out.append(_p("SHAP, mean |SHAP|: " + "; ".join(shap_summary(r))))
    return "".join(out)


def _regression(folder: Path) -> str:
    out = []
    for path in sorted((folder / "regression").glob("*/table2.json")):
        r = _load_json(path)
        if r:
            figs = path.parent / "figures"
            out += [_table2(r, r.get("labels") or path.parent.name),
                    _figures((figs / f"{k}.png", c) for k, c in REGRESSION_CAPTIONS.items())]
    return "".join(out) or _not_run("regression (no regression/<labels>/table2.json)")


def _table3(t3: dict) -> str:
    from .generation_eval import DESCRIPTORS

    keys = [k for k, _, _ in DESCRIPTORS] + ["average"]
    labels = [label for _, label, _ in DESCRIPTORS] + ["average"]
    rows = [[model, paste, *[row.get(k) for k in keys],
             *((t3.get("paper") or {}).get(model, {}).get(paste) or [None] * len(keys))]
            for model, pastes in t3["table3"].items() for paste, row in pastes.items()]
    return "".join(["<h3>Table 3 analog</h3>",
                    _table(["model", "paste", *labels, *[f"paper {x}" for x in labels]], rows, left=2,
                           spec=".2f"),
                    _p(f"R² of each descriptor's class means over the paste's temperatures, generated "
                       f"against real crops; {t3.get('n', '—')} generated images per class.")])


def _design(d: dict) -> str:
    reg = d.get("regression") or {}
    rows = [[t.get("target"), t.get("predicted"), t.get("error"),
             100 * t["relative_error"] if isinstance(t.get("relative_error"), (int, float)) else None,
             t.get("per_image_sd"), t.get("images")] if not t.get("flag") else
            [t.get("target"), f"not a result: {t['flag']}", None, None, None, t.get("images")]
            for t in d["targets"]]
    return "".join(["<h3>Inverse design</h3>",
                    _table(["target σ", "predicted σ", "error", "error %", "per-image sd", "images"], rows,
                           left=0),
                    _p(f"σ predicted back from the generated images' 2-D descriptors by a linear model on "
                       f"{', '.join(reg.get('features') or []) or '—'} (LOOCV R² "
                       f"{_fmt(reg.get('loocv_r2'), '.3f')}).")])


def _generation(folder: Path) -> str:
    gen, figs = folder / "generation", folder / "generation" / "figures"
    t3, design = _load_json(gen / "table3.json"), _load_json(gen / "design.json")
    out = []
    if t3 and t3.get("table3"):
        out += [_table3(t3), _figures([
            (figs / "fig5_grid.png", "Real and generated microstructures per paste and temperature "
                                     "(paper Fig. 5)"),
            (figs / "fig6_descriptors.png", "Descriptors against temperature, mean ± sd (paper Fig. 6)")])]
    if design and design.get("targets"):
        out += [_design(design),
                _figures([(figs / "design.png", "Generated images per target conductivity")])]
    curves = []
    for kind, name in (("ddpm", "DDPM"), ("cgan", "cGAN")):
        m = _load_json(folder / "models" / kind / "model.json") or {}
        curves.append((folder / "models" / kind / "loss.png",
                       f"{name} training loss (preset {m.get('preset', '—')}, {m.get('crops', '—')} crops of "
                       f"{m.get('size', '—')} px from labels/{m.get('labels', '—')})"))
    loss = _figures(curves)
    out += ["<h3>Training</h3>", loss] if loss else []
    return "".join(out) or _not_run("generation (no generation/table3.json, no trained models)")


def _json_cell(v) -> _Raw:
    return _Raw(f"<code>{_e(json.dumps(v, sort_keys=True, default=str))}</code>")


def _steps(steps: list) -> str:
    """Per-step totals, and every step in a collapsed table."""
    agg: dict = {}
    for s in steps:
        a = agg.setdefault(s.get("step"), [0, 0, 0, 0, 0.0, 0.0])   # runs, done, skipped, other, total, max
        status = s.get("status")
        sec = s.get("seconds") if isinstance(s.get("seconds"), (int, float)) else 0.0
        sec = sec if math.isfinite(sec) else 0.0
        a[0] += 1
        a[1 if status == "done" else 2 if status == "skipped" else 3] += 1
        a[4], a[5] = a[4] + sec, max(a[5], sec)
    return "".join([
        "<h3>Steps</h3>",
        _table(["step", "runs", "done", "skipped", "failed/other", "total s", "longest s"],
               [[k, *a] for k, a in agg.items()], spec=".1f"),
        _details(f"every step ({len(steps)})", _table(
            ["step", "tomogram", "status", "started", "seconds"],
            [[s.get(k) for k in ("step", "tomogram", "status", "started", "seconds")] for s in steps],
            left=4, spec=".1f"))])


def _provenance(folder: Path, samples: list, run: dict) -> str:
    versions = run.get("versions") or provenance_versions()
    out = ["<h3>Versions</h3>", _table(["package", "version"], list(versions.items()), left=2)]
    if not run.get("versions"):
        out.append(_p("No run record: the versions of the environment that wrote this report."))
    cl = run.get("cluster")
    if cl:
        mem = cl.get("memory_limit")
        mem = f"{mem / 2**30:.2f} GiB" if isinstance(mem, (int, float)) else mem
        out += ["<h3>Cluster</h3>", _table(["", ""], [
            ["scheduler", cl.get("scheduler")], ["dashboard", cl.get("dashboard")],
            ["workers", cl.get("workers")], ["threads", cl.get("threads")],
            ["memory limit per worker", mem]], left=2)]
    if run.get("stages"):
        params = [[k, _json_cell(v)] for k, v in run["stages"].items()]
        out += ["<h3>Stage parameters</h3>", _table(["stage", "parameters"], params, left=2)]
    elif samples:
        from ..engine.storage import open_volume

        prov = open_volume(sample_path(folder, samples[0]["path"]), mode="r").provenance
        params = [[k, _json_cell((v or {}).get("params"))] for k, v in prov.items()]
        out += [f"<h3>Stage parameters recorded in {_e(samples[0]['path'])}</h3>",
                _table(["stage", "parameters"], params, left=2)]
    steps = run.get("steps") or []
    out.append(_steps(steps) if steps else
               _not_run("no run record with per-step timings (porevox run writes run/run.json)"))
    return "".join(out)


# --------------------------------------------------------------------------- the page
def _guarded(name: str, build, *args) -> str:
    """A section's body; an artifact that cannot be read costs its section, not the report."""
    try:
        return build(*args)
    except Exception as err:
        logger.warning("report: the %s section failed (%s: %s)", name, type(err).__name__, err)
        return _p(f"{name}: could not be built from the artifacts ({type(err).__name__}: {err})", "missing")


def render_report(folder, run: dict | None = None) -> str:
    """The report of the study in `folder` as one HTML string (see :func:`write_report`)."""
    folder = Path(folder).resolve()
    if run is None:
        run = _load_json(folder / "run" / "run.json")
    run = run if isinstance(run, dict) else {}
    try:
        manifest = read_yaml(folder / "study.yaml")
    except (OSError, StudyFileError):
        manifest = None
    manifest = manifest if isinstance(manifest, dict) else {}
    samples = [s for s in manifest.get("samples") or [] if isinstance(s, dict)]
    name = run.get("name") or manifest.get("name") or folder.name
    builders = {"study": (_study, folder, manifest, samples),
                "segmentation": (_segmentation, folder, samples),
                "features": (_features, folder), "regression": (_regression, folder),
                "generation": (_generation, folder), "provenance": (_provenance, folder, samples, run)}
    body = [_guarded("header", _header, folder, manifest, samples, run)]
    for key, title in SECTIONS:
        body.append(f'<section id="{key}"><h2>{_e(title)}</h2>{_guarded(title, *builders[key])}</section>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>porevox report — {_e(name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(folder, run: dict | None = None) -> Path:
    """Write ``<folder>/report.html`` for the study in `folder`; return its path.

    `run` is the run record of ``porevox run`` (name, started, finished, seconds,
    porevox_version, versions, cluster, stages, steps, performance_reports); None
    reads ``<folder>/run/run.json`` where it exists, else the report shows what the
    files hold. A missing artifact leaves its section saying "not run"."""
    folder = Path(folder)
    page = render_report(folder, run)
    path = folder / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    logger.info("report: wrote %s (%.1f MB)", path, len(page) / 1e6)
    return path


__all__ = ["overlay_figure", "render_report", "write_report"]
