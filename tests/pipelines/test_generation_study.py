"""Evaluation (Table 3, Figs. 5–6) and inverse design on a small study."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from porevox.pipelines import generation_eval as ge
from porevox.pipelines.crops import crop_index
from porevox.pipelines.generate import Generator, train_generator
from porevox.pipelines.generation_study import design, evaluate_generators
from tests.pipelines.test_crops import study  # noqa: F401  (the fixture)


def test_evaluate_two_models(study):  # noqa: F811
    folder, _ = study
    for kind in ("ddpm", "cgan"):
        train_generator(folder, kind=kind, size=16, steps=3)
    result = evaluate_generators(folder, [folder / "models" / "ddpm", folder / "models" / "cgan"], n=3,
                                 steps=3)
    assert set(result["table3"]) == {"DDPM", "cGAN"}
    assert set(result["table3"]["DDPM"]) == {"HPA", "NPC"}      # one temperature each: R² undefined
    assert np.isnan(result["table3"]["DDPM"]["HPA"]["relative_density"])
    assert [c["paste"] for c in result["classes"]] == ["HPA", "NPC"]
    index = crop_index(folder, size=16)
    assert result["n_real"] == [int((index.label == c).sum()) for c in (0, 1)]   # every real crop
    assert result["real"][0]["n"] == result["n_real"][0] and result["generated"]["DDPM"][1]["n"] == 3
    real = ge.image_descriptors(index.load(np.flatnonzero(index.label == 1)), index.pixel_size)
    assert result["real"][1]["relative_density"]["mean"] == pytest.approx(real["relative_density"].mean())
    for stats in (result["real"][0], result["generated"]["DDPM"][1]):
        assert 0 <= stats["relative_density"]["mean"] <= 1
    saved = json.loads((folder / "generation" / "table3.json").read_text())
    assert saved["n"] == 3 and (folder / "generation" / "table3.md").read_text().startswith("| model |")
    for path in result["figures"].values():
        assert path.endswith(".png") and Path(path).stat().st_size > 5000


def test_design_predicts_sigma_back_through_the_2d_law(study):  # noqa: F811
    folder, _ = study
    train_generator(folder, kind="ddpm", size=16, steps=3)
    rng = np.random.default_rng(0)
    d = rng.uniform(0.4, 0.8, 12)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(12)], "labels": "unet", "relative_density": d,
                          "specific_perimeter_2d": rng.uniform(3, 8, 12),
                          "shape_index_mean": rng.uniform(-0.1, 0.1, 12), "conductivity": 300 * d})
    table["conductivity"] += rng.normal(scale=2.0, size=12)
    result = design(folder, folder / "models" / "ddpm", [50, 150], n=4, steps=3, features_table=table)
    assert "D" in result["regression"]["features"] and result["regression"]["loocv_r2"] > 0.99
    symbols = {"D": "relative_density", "specific_perimeter_2d": "specific_perimeter_2d",
               "shape_index_mean": "shape_index_mean"}
    cols = [symbols[f] for f in result["regression"]["features"]]
    law = make_pipeline(StandardScaler(), LinearRegression()).fit(table[cols], table["conductivity"])
    g = Generator(folder / "models" / "ddpm")
    for k, row in enumerate(result["targets"]):
        images = g.sample(4, conductivity=row["target"], seed=k, steps=3)
        d = ge.image_descriptors(images, (0.04, 0.04))
        key = {"relative_density": "relative_density", "specific_perimeter_2d": "specific_perimeter",
               "shape_index_mean": "shape_index_mean"}
        x = pd.DataFrame([[np.nanmean(d[key[c]]) for c in cols]], columns=cols)
        assert row["predicted"] == pytest.approx(float(law.predict(x)[0]), rel=1e-9)
        assert row["error"] == pytest.approx(row["predicted"] - row["target"])
    saved = json.loads(Path(result["files"]["design_json"]).read_text())
    assert [t["predicted"] for t in saved["targets"]] == [t["predicted"] for t in result["targets"]]
    assert Path(result["files"]["figure"]).stat().st_size > 5000


def test_design_needs_the_ddpm(study):  # noqa: F811
    folder, _ = study
    train_generator(folder, kind="cgan", size=16, steps=2)
    with pytest.raises(ValueError, match="inverse design needs the DDPM"):
        design(folder, folder / "models" / "cgan", [100])


def test_models_train_at_once_on_a_cluster(study, client):  # noqa: F811
    """With a cluster, each kind trains as a task on its own worker, at the same time,
    and gives the weights it gives trained in this process on one thread."""
    import torch
    from distributed import get_task_stream

    from porevox.pipelines.generation_study import train_all

    folder, _ = study
    with get_task_stream(client) as ts:
        trained = train_all(folder, ("ddpm", "cgan"), size=16, steps=3, seed=1)
    assert len(ts.data) == 2 and len({t["worker"] for t in ts.data}) == 2
    runs = [s for t in ts.data for s in t["startstops"] if s["action"] == "compute"]
    assert max(s["start"] for s in runs) < min(s["stop"] for s in runs)      # at the same time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, t in trained.items():
            here = train_generator(folder, kind=kind, size=16, steps=3, seed=1, out=folder / "here" / kind)
            a, b = (torch.load(Path(m) / "checkpoint.pt", weights_only=True)["nets"]
                    for m in (t["model"], here["model"]))
            for net in a:
                for name, value in a[net].items():
                    assert torch.equal(value, b[net][name]), (kind, net, name)
    finally:
        torch.set_num_threads(threads)


def test_evaluation_and_design_spread_over_the_cluster(study, client):  # noqa: F811
    """With a cluster, each class's sampling and statistics (and each design target's)
    run as tasks on both workers, and give what they give in this process on one
    thread."""
    import torch
    from distributed import get_task_stream

    folder, _ = study
    models = [train_generator(folder, kind=kind, size=16, steps=3)["model"] for kind in ("ddpm", "cgan")]
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(8)], "labels": "unet",
                          "relative_density": rng.uniform(0.4, 0.8, 8),
                          "specific_perimeter_2d": rng.uniform(3, 8, 8),
                          "shape_index_mean": rng.uniform(-0.1, 0.1, 8),
                          "conductivity": rng.uniform(40, 300, 8)})
    with get_task_stream(client) as ts:
        spread = evaluate_generators(folder, models, n=3, steps=3, out=folder / "spread", figures=False)
        designed = design(folder, models[0], [50, 150], n=3, steps=3, features_table=table,
                          out=folder / "spread", figures=False)
    assert len(ts.data) == 3 * 2 + 2 and len({t["worker"] for t in ts.data}) == 2  # 2 classes × 3, 2 targets
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = evaluate_generators(folder, models, n=3, steps=3, out=folder / "here", figures=False)
        here_designed = design(folder, models[0], [50, 150], n=3, steps=3, features_table=table,
                               out=folder / "here", figures=False)
    finally:
        torch.set_num_threads(threads)
    assert (folder / "spread" / "table3.json").read_text() == (folder / "here" / "table3.json").read_text()
    assert spread["n_real"] == here["n_real"] == [int((crop_index(folder, size=16).label == c).sum())
                                                  for c in (0, 1)]
    assert [t["predicted"] for t in designed["targets"]] == [t["predicted"] for t in here_designed["targets"]]
