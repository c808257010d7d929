"""report.html: every section from real-shaped artifacts, nothing loaded from the network,
every figure embedded, robust to missing and damaged artifacts; rendered in headless
Chromium (skipped only where /usr/bin/chromium is absent)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from porevox.pipelines.report import SECTIONS, _pick_overlay_samples, write_report
from tests.conftest import porous

SAMPLES = [  # as porevox synth writes them into study.yaml
    {"id": "HPA-175C-voi0", "path": "HPA-175C-voi0.zarr", "paste": "HPA", "temperature_c": 175, "voi": 0,
     "relative_density": 0.576, "relative_conductivity": 0.081955, "tortuosity_factor": 7.03,
     "conductivity": 36.381, "held_out": False},
    {"id": "HPA-400C-voi0", "path": "HPA-400C-voi0.zarr", "paste": "HPA", "temperature_c": 400, "voi": 0,
     "relative_density": 0.76, "relative_conductivity": 0.53, "tortuosity_factor": 1.43,
     "conductivity": 240.674, "held_out": False},
    {"id": "HPA-400C-voi1", "path": "HPA-400C-voi1.zarr", "paste": "HPA", "temperature_c": 400, "voi": 1,
     "relative_density": 0.75, "relative_conductivity": 0.52, "tortuosity_factor": 1.45,
     "conductivity": 236.976, "held_out": True},
]
DASHBOARD = "http://127.0.0.1:8787/status"
PERF = "run/dask-performance-20261126T070000.html"
RUN = {"study": "/abs/study.yaml", "name": "tiny twin", "started": "2026-11-26T07:00:00+00:00",
       "finished": "2026-11-26T07:13:32+00:00", "seconds": 812.3, "porevox_version": "0.1.0",
       "versions": {"python": "3.11.7", "dask": "2026.8.0", "torch": "2.13.0+cpu"},
       "cluster": {"scheduler": "tcp://127.0.0.1:40001", "dashboard": DASHBOARD, "workers": 2,
                   "threads": 2, "memory_limit": 1073741824},
       "stages": {"preprocess": {"destripe": True, "shading": True},
                  "segment": {"methods": ["otsu", "hybrid"]}},
       "steps": [{"step": "segment-otsu", "tomogram": "HPA-175C-voi0", "status": "done", "seconds": 3.2,
                  "started": "2026-11-26T07:00:01+00:00"},
                 {"step": "segment-otsu", "tomogram": "HPA-400C-voi0", "status": "done", "seconds": None,
                  "started": "2026-11-26T07:00:04+00:00"},
                 {"step": "train-unet", "tomogram": None, "status": "skipped", "seconds": 0.0,
                  "started": "2026-11-26T07:00:05+00:00"}],
       "performance_reports": [PERF]}
#: Figures the fixture's report embeds: contact sheet, U-Net curve, overlays, 3 feature
#: figures, 4 regression figures, 3 generation figures, 2 loss curves.
N_FIGURES = 15


def _png(path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_title(title)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _volume(folder: Path, sample: dict, rng) -> None:
    from porevox.engine import create_volume

    truth = porous((4, 24, 24), rng).astype(np.uint8)
    vol = create_volume(folder / sample["path"], truth.shape, "uint8", (0.05, 0.0372, 0.0372),
                        sample={k: sample[k] for k in ("paste", "temperature_c")})
    noise = rng.integers(0, 30, truth.shape, dtype=np.uint8)
    vol.image[:] = np.where(truth, 170, 50).astype(np.uint8) + noise
    vol.update_meta(provenance={"segment:otsu": {"stage": "segment:otsu", "params": {"method": "otsu"}}})
    noisy = truth ^ (rng.random(truth.shape) < 0.05)
    for name, data in (("truth", truth), ("otsu", noisy), ("hybrid", truth), ("unet", truth)):
        arr = vol.group["labels"].create_array(name, shape=truth.shape, dtype="uint8", chunks=truth.shape)
        arr[:] = data.astype(np.uint8)


def _model(features, rank, r2, name="", paper=None) -> dict:
    """One model as regress writes it (NaN already turned into None by `finite`)."""
    m = {"model": name, "features": list(features), "columns": list(features), "intercept": 100.3,
         "coefficients": {f: 10.0 * (i + 1) for i, f in enumerate(features)},
         "coefficients_raw": {f: 1.0 for f in features}, "intercept_raw": -5.0,
         "loocv_rmse": 12.9, "loocv_r2": r2, "test_rmse": None, "test_r2": None,
         "loocv_pred": [37.9, 86.9], "test_pred": [98.6], "loocv_r2_by_paste": {"HPA": 0.95}, "rank": rank}
    return {**m, "paper": paper} if paper else m


def _write_artifacts(folder: Path) -> None:
    from porevox.pipelines.segmentation_study import COLUMNS, ROWS, summarize, write_tables

    rng = np.random.default_rng(7)
    manifest = {"name": "tiny twin", "preset": "demo", "seed": 0, "voxel_size": [0.05, 0.0372, 0.0372],
                "unit": "micrometer", "shape": [4, 24, 24], "conductivity_unit": "uS/cm", "samples": SAMPLES}
    (folder / "study.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    for s in SAMPLES:
        _volume(folder, s, rng)
    _png(folder / "contact_sheet.png", "contact sheet")
    # segmentation: table1.* exactly as segmentation_study writes them; a NaN score in one
    per_sample = [{"id": s["id"], **{m: {k: float(rng.uniform(0.7, 0.99)) for _, k in COLUMNS}
                                     for m, _ in ROWS}} for s in SAMPLES]
    per_sample[0]["CTA"]["jaccard_pore"] = math.nan
    write_tables(folder, {"table": summarize(per_sample), "samples": per_sample, "models": {},
                          "every": 5, "seconds": 1.0})
    _png(folder / "models" / "unet-hybrid.png", "unet loss")
    (folder / "models" / "unet-hybrid.json").write_text(json.dumps({
        "format": "porevox-unet", "version": 1, "config": {"in_channels": 1, "n_classes": 3},
        "parameters": 571202, "metadata": {"labels": "hybrid_annotation", "every": 5, "history": {
            "best_epoch": 1, "epochs_run": 3, "train_loss": [0.3, 0.2, 0.1],
            "val_loss": [0.3, 0.25, 0.27], "val_accuracy": [0.8, 0.9, 0.85]}}}))
    # features: the columns quantify_study writes (trimmed), a NaN tortuosity
    import pandas as pd

    rows = []
    for labels in ("unet", "truth"):
        for s in SAMPLES:
            rows.append({**{k: s[k] for k in ("id", "path", "paste", "temperature_c", "voi", "held_out",
                                             "conductivity", "relative_conductivity")}, "labels": labels,
                         "relative_density": s["relative_density"], "specific_surface_area": 4.2,
                         "strut_diameter_mean": 0.3, "tortuosity": math.nan if s["voi"] else 1.09,
                         "mean_curvature_mean": 1.8, "gaussian_curvature_mean": -4.2,
                         "bruggeman_alpha": 0.17, "beta": 1.43, "specific_perimeter_2d": 3.9})
    pd.DataFrame(rows).to_csv(folder / "features.csv", index=False)
    for kind in ("trends", "strut_diameters", "curvature"):
        _png(folder / "figures" / f"{kind}-unet.png", kind)
    # regression: table2.json as regress writes it (trimmed)
    reg = folder / "regression" / "unet"
    best = _model(["D", "SA", "τ", "G", "α"], 1, 0.974)
    q = _model(["SA", "α", "β"], 222, -1.38, "Q", {"loocv_rmse": 11.5, "loocv_r2": 0.988,
                                                  "test_rmse": 21.9, "test_r2": 0.887})
    reg.mkdir(parents=True)
    (reg / "table2.json").write_text(json.dumps({
        "source": str(folder / "features.csv"), "target": "conductivity", "labels": "unet",
        "features": {"D": "relative_density", "SA": "specific_surface_area"},
        "train_ids": ["HPA-175C-voi0", "HPA-400C-voi0"], "test_ids": ["HPA-400C-voi1"],
        "train_target": [36.381, 240.674], "test_target": [236.976], "dropped": [], "averaged": [],
        "min_features": 2, "max_features": 8, "subsets": 247,
        "best": best, "top": [best, _model(["D", "τ"], 2, 0.967)], "paper_models": {"Q": q},
        "shap": {"best": {"features": best["features"],
                          "ranking": [{"feature": "τ", "mean_abs_shap": 136.4}, {"feature": "α",
                                                                                 "mean_abs_shap": 123.9}]}},
        "paper_shap": ["α", "SA", "β"], "paper_r2_by_paste": {"HPA": 0.97, "HPB": 0.61, "NPC": 0.99},
        "physics": {"column": "relative_conductivity", "scale": 439.45, "loocv_rmse": 5.34,
                    "loocv_r2": 0.9956, "loocv_pred": [36.0, 233.7], "test_rmse": 7.28, "test_r2": 0.9917,
                    "test_pred": [224.4]},
        "engineered_ahead": {"top": 2, "top_with_engineered": 1, "best_engineered": None, "best_raw": None},
        "files": {"table2_json": str(reg / "table2.json")}}))
    for name in ("fig4_models", "fig4d_shap_best", "fig4d_shap_Q", "physics"):
        _png(reg / "figures" / f"{name}.png", name)
    # generation: table3.json and design.json as generation_study writes them (trimmed)
    gen = folder / "generation"
    stats = {"relative_density": {"mean": 0.6, "sd": 0.09}, "specific_perimeter": {"mean": 3.9, "sd": 0.7},
             "shape_index_mean": {"mean": 0.07, "sd": 0.03}, "n": 64}
    row = {"relative_density": 0.83, "specific_perimeter": -0.64, "shape_index_mean": None, "average": 0.1}
    gen.mkdir()
    (gen / "table3.json").write_text(json.dumps({
        "classes": [{"paste": "HPA", "temperature_c": t, "conductivity": c}
                    for t, c in ((175, 36.4), (400, 240.7))],
        "n": 64, "n_real": [192, 192], "table3": {"DDPM": {"HPA": row}, "cGAN": {"HPA": row}},
        "real": [stats, stats], "generated": {"DDPM": [stats, stats], "cGAN": [stats, stats]},
        "models": {"DDPM": "models/ddpm", "cGAN": "models/cgan"},
        "paper": {"cGAN": {"HPA": [0.33, 0.75, 0.72, 0.6]}, "DDPM": {"HPA": [0.76, 0.86, 0.89, 0.84]}}}))
    (gen / "design.json").write_text(json.dumps({
        "model": "models/ddpm", "regression": {"features": ["D", "specific_perimeter_2d"], "loocv_r2": 0.897,
                                               "coefficients": {"D": 25.3, "specific_perimeter_2d": -33.5}},
        "targets": [{"target": 50.0, "predicted": 63.9, "error": 13.9, "relative_error": 0.279,
                     "per_image_sd": 64.9, "images": 64, "descriptors": {"relative_density": 0.55}},
                    {"target": 0.0, "predicted": 12.0, "error": 12.0, "relative_error": None,
                     "per_image_sd": 60.0, "images": 64, "descriptors": {"relative_density": 0.5}}]}))
    for name in ("fig5_grid", "fig6_descriptors", "design"):
        _png(gen / "figures" / f"{name}.png", name)
    for kind in ("ddpm", "cgan"):
        (folder / "models" / kind).mkdir(parents=True)
        (folder / "models" / kind / "model.json").write_text(json.dumps({
            "kind": kind, "preset": "cpu", "labels": "unet", "size": 64, "pixel_size": [0.0372, 0.0372],
            "classes": [], "value_scale": 240.7, "config": {}, "study": str(folder), "crops": 3456}))
        _png(folder / "models" / kind / "loss.png", f"{kind} loss")
    (folder / "run").mkdir()
    (folder / PERF).write_text("<html>a Dask performance report</html>")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "study"
    folder.mkdir()
    _write_artifacts(folder)
    return folder


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_report_has_every_section_and_loads_nothing(study):
    path = write_report(study, run=RUN)
    assert path == study / "report.html"
    page = path.read_text()
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    for text in ("tiny twin", "3 tomograms", "13 min 32 s", "porevox 0.1.0", "Table 1 analog",
                 "paper: U-Net Hybrid", "U-Net training",
                 "weights of epoch 2 kept (validation accuracy 0.900)",
                 "Segmentations on the middle slice", "Table 2 analog — labels/unet", "physics",
                 "Table 3 analog", "Inverse design", "1.00 GiB", "segment-otsu", "HPA-400C-voi1"):
        assert text in page, text
    assert "not run" not in page and "could not be built" not in page
    assert "—" in page                                       # NaN and None cells
    assert ">nan<" not in page.lower() and ">None<" not in page
    tags = _tags(page)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed", "base")]
    assert "url(" not in page and "@import" not in page
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == N_FIGURES
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    hrefs = [a["href"] for t, a in tags if "href" in a]
    assert PERF in hrefs
    assert all(h.startswith("#") or ":" not in h.split("/")[0] for h in hrefs), hrefs
    assert set(re.findall(r"https?://[^\s<\"']+", page)) == {DASHBOARD}   # as text, not loaded


def test_run_record_is_read_from_run_json(study, tmp_path):
    (study / "run" / "run.json").write_text(json.dumps({**RUN, "name": "from run.json"}))
    try:
        page = write_report(study).read_text()
    finally:
        (study / "run" / "run.json").unlink()
    assert "<h1>from run.json</h1>" in page and "13 min 32 s" in page


def test_missing_and_damaged_artifacts(tmp_path):
    page = write_report(tmp_path).read_text()                 # an empty folder
    assert page.count("not run:") == 6
    assert "the versions of the environment that wrote this report" in page
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "partial", "samples": SAMPLES}))
    (tmp_path / "table1.json").write_text("{not json")
    (tmp_path / "regression" / "unet").mkdir(parents=True)
    (tmp_path / "regression" / "unet" / "table2.json").write_text(json.dumps({"top": "garbage"}))
    page = write_report(tmp_path, run={"seconds": math.nan, "steps": [{"step": "x", "seconds": math.nan}],
                                       "performance_reports": ["https://example.com/r.html"]}).read_text()
    assert "could not be built" in page                      # the damaged table2.json
    assert "not run: segmentation scores" in page and "not run: quantification" in page
    assert "https://example.com" not in page                 # never linked
    assert "HPA-400C-voi1" in page and "total —" in page


def test_overlay_samples_one_per_paste_at_both_ends():
    samples = [{"id": f"{p}-{t}", "paste": p, "temperature_c": t, "held_out": False}
               for p in ("HPA", "HPB", "NPC", "XYZ") for t in (250, 175, 400, 350)]
    samples.append({"id": "HPA-100", "paste": "HPA", "temperature_c": 100, "held_out": True})
    picked = [s["id"] for s in _pick_overlay_samples(samples)]
    assert picked == ["HPA-175", "HPA-400", "HPB-175", "HPB-400", "NPC-175", "NPC-400"]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                    reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_in_chromium(study, tmp_path):
    from tests.pipelines.chromium import render

    path = write_report(study, run=RUN)
    shot = Path(os.environ.get("POREVOX_REPORT_SHOT") or tmp_path / "report.png")
    result = render(path, shot)
    assert result["images"] == N_FIGURES and result["loaded"] == N_FIGURES, result["broken"]
    assert result["requests"] == []                           # nothing from the network
    assert result["title"] == "porevox report — tiny twin"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280
