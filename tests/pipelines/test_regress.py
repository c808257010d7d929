"""`porevox regress` on feature tables: the Table-2 analog, test sets, SHAP, the
physical model, parallel search, outputs and bad tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import porevox as pv
from porevox.pipelines import regress as rg

FEATURES = list(rg.SYMBOLS.values())
PASTES = ("HPA", "HPB", "NPC")
TEMPERATURES = (175, 200, 225, 250, 350, 400)


def feature_table(seed=0, extra_vois=(("HPA", 225), ("HPB", 400), ("NPC", 350)), noise=2.0):
    """A feature table shaped like ``porevox quantify STUDY``'s: 18 samples (one VOI
    each) and a second VOI of `extra_vois`; σ follows a known law in D, SA and α."""
    rng = np.random.default_rng(seed)
    rows = []
    for p_i, paste in enumerate(PASTES):
        for t_i, t in enumerate(TEMPERATURES):
            for voi in range(1 + ((paste, t) in extra_vois)):
                d = 0.4 + 0.05 * p_i + 0.06 * t_i + rng.normal(scale=0.01)
                sa = 8 - 5 * d + p_i + rng.normal(scale=0.3)
                tau = 1 + 0.2 * (1 - d) ** 2 + rng.normal(scale=0.005)
                alpha = math.log(tau) / -math.log(d)
                phi, g, m = 0.1 + 0.3 * d + rng.normal(scale=0.01), rng.normal(-5, 2), rng.normal(0, 2)
                rel = max(d - 0.35, 0) ** 1.5
                sigma = 400 * d - 8 * sa - 300 * alpha + rng.normal(scale=noise)
                rows.append({"id": f"{paste}-{t}C-voi{voi}", "path": f"{paste}-{t}C-voi{voi}.zarr",
                             "paste": paste, "temperature_c": t, "voi": voi, "labels": "truth",
                             "relative_density": d, "specific_surface_area": sa,
                             "strut_diameter_mean": phi, "tortuosity": tau,
                             "gaussian_curvature_mean": g, "mean_curvature_mean": m,
                             "bruggeman_alpha": alpha, "beta": m / (abs(g) * phi),
                             "conductivity": sigma, "relative_conductivity": rel})
    return pd.DataFrame(rows)


def loocv_reference(table, columns, target="conductivity"):
    x, y = table[columns].to_numpy(float), table[target].to_numpy(float)
    pred = cross_val_predict(make_pipeline(StandardScaler(), LinearRegression()), x, y, cv=LeaveOneOut())
    return math.sqrt(np.mean((pred - y) ** 2)), 1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)


def test_default_split_holds_out_the_last_voi_of_samples_with_several():
    plan = rg.plan_regression(feature_table())
    assert len(plan.train) == 18 and list(plan.test["id"]) == ["HPA-225C-voi1", "HPB-400C-voi1",
                                                              "NPC-350C-voi1"]
    assert plan.columns == FEATURES and plan.symbols == ["D", "SA", "φ", "τ", "G", "M", "α", "β"]
    assert plan.max_features == 8 and plan.n_subsets == 247 and not plan.parallel
    named = rg.plan_regression(feature_table(), test_samples=["NPC-400C-voi0"])
    assert list(named.test["id"]) == ["NPC-400C-voi0"] and len(named.train) == 17  # 3 pairs averaged


def test_rows_marked_held_out_are_the_test_set():
    table = feature_table()
    table["held_out"] = table["id"].isin(["HPA-175C-voi0", "NPC-400C-voi0"])
    plan = rg.plan_regression(table)
    assert list(plan.test["id"]) == ["HPA-175C-voi0", "NPC-400C-voi0"]
    assert len(plan.train) == 21 - 2 - 3          # the three VOI pairs averaged
    assert list(rg.plan_regression(table, test_samples=["HPB-175C-voi0"]).test["id"]) == [
        "HPB-175C-voi0"]                         # named ids come first


def test_training_vois_of_one_sample_are_averaged():
    """Three VOIs of HPA 250 °C: VOI 2 is held out, VOIs 0 and 1 become one training row
    (their mean), so leave-one-out leaves out the whole sample."""
    table = feature_table(extra_vois=())
    extra = table[table["id"] == "HPA-250C-voi0"].copy()
    for voi, shift in ((1, 0.02), (2, 0.04)):
        row = extra.copy()
        row["voi"], row["id"] = voi, f"HPA-250C-voi{voi}"
        row["relative_density"] += shift
        row["conductivity"] += 10 * voi
        table = pd.concat([table, row], ignore_index=True)
    plan = rg.plan_regression(table)
    assert list(plan.test["id"]) == ["HPA-250C-voi2"] and len(plan.train) == 18
    merged = plan.train[plan.train["id"] == "HPA-250C"].iloc[0]
    base = extra.iloc[0]
    assert merged["relative_density"] == pytest.approx(base["relative_density"] + 0.01)
    assert merged["conductivity"] == pytest.approx(base["conductivity"] + 5)
    assert plan.averaged == {"HPA-250C": ["HPA-250C-voi0", "HPA-250C-voi1"]}


def test_every_subset_scored_like_sklearn_and_ranked(tmp_path):
    table = feature_table()
    result = pv.regress(table, out=tmp_path / "r")
    ranking = pd.read_parquet(tmp_path / "r" / "models.parquet")
    assert len(ranking) == result["subsets"] == 247
    assert (np.diff(ranking["loocv_rmse"]) >= 0).all() and list(ranking["rank"]) == list(range(1, 248))
    train = table[~table["id"].isin(result["test_ids"])]
    for _, row in ranking.sample(12, random_state=0).iterrows():
        cols = [rg.SYMBOLS[s] for s in row["features"].split(" + ")]
        rmse, r2 = loocv_reference(train, cols)
        assert row["loocv_rmse"] == pytest.approx(rmse, rel=1e-8)
        assert row["loocv_r2"] == pytest.approx(r2, rel=1e-8)
    # the law's own features (D, SA, α) lead, with the law's signs
    best = result["best"]
    assert set(best["features"]) >= {"D", "SA", "α"}
    plan = rg.plan_regression(table)
    law = rg.describe(plan, ("D", "SA", "α"))
    design = np.c_[np.ones(len(plan.train)), plan.train[law["columns"]].to_numpy(float)]
    se = 2.0 * np.sqrt(np.diag(np.linalg.inv(design.T @ design)))[1:]     # noise sd 2
    got = np.array(list(law["coefficients_raw"].values()))
    assert np.all(np.abs(got - [400, -8, -300]) < 3 * se), (got, se)
    assert law["loocv_r2"] > 0.99 and law["test_r2"] > 0.95


def test_test_metrics_are_the_fit_on_all_training_samples():
    table = feature_table()
    plan = rg.plan_regression(table)
    row = rg.describe(plan, ("SA", "α", "β"), "Q")
    model = make_pipeline(StandardScaler(), LinearRegression()).fit(
        plan.train[["specific_surface_area", "bruggeman_alpha", "beta"]], plan.train["conductivity"])
    pred = model.predict(plan.test[["specific_surface_area", "bruggeman_alpha", "beta"]])
    np.testing.assert_allclose(row["test_pred"], pred, rtol=1e-9)
    yt = plan.test["conductivity"].to_numpy()
    assert row["test_rmse"] == pytest.approx(np.sqrt(np.mean((pred - yt) ** 2)))
    np.testing.assert_allclose(row["coefficients"]["SA"], model[-1].coef_[0], rtol=1e-9)
    assert row["paper"] == {"loocv_rmse": 11.5, "loocv_r2": 0.988, "test_rmse": 21.9, "test_r2": 0.887}


def test_paper_models_always_listed_with_their_rank(tmp_path):
    result = pv.regress(feature_table(), out=tmp_path / "r", top=3)
    assert set(result["paper_models"]) == set("ACIJNQR")
    rows = rg.table_rows(result)
    assert len(rows) == 3 + 7 - sum(1 for r in result["top"] if r["model"])
    ranking = pd.read_parquet(tmp_path / "r" / "models.parquet")
    by_set = {frozenset(f.split(" + ")): r for f, r in zip(ranking["features"], ranking["rank"])}
    for name, row in result["paper_models"].items():
        assert row["rank"] == by_set[frozenset(rg.PAPER_MODELS[name])], name
    md = (tmp_path / "r" / "table2.md").read_text()
    for name in "ACIJNQR":
        assert f"| {name} |" in md
    assert "paper (model Q): α > SA > β" in md
    csv = pd.read_csv(tmp_path / "r" / "table2.csv")
    assert len(csv) == len(rows) and set(csv["model"].dropna()) == set("ACIJNQR")
    saved = json.loads((tmp_path / "r" / "table2.json").read_text())
    assert saved["best"]["features"] == result["best"]["features"]
    for name in ("fig4_models", "fig4d_shap_best", "fig4d_shap_Q", "physics"):
        assert (tmp_path / "r" / "figures" / f"{name}.png").stat().st_size > 10_000


def test_shap_ranking_is_mean_abs_coef_times_centred_standardised_feature():
    table = feature_table()
    plan = rg.plan_regression(table)
    row = rg.describe(plan, ("SA", "α", "β"), "Q")
    explained = rg.explain(plan, row)
    x = plan.train[row["columns"]].to_numpy(float)
    z = (x - x.mean(0)) / x.std(0)
    coef = np.array(list(row["coefficients"].values()))
    np.testing.assert_allclose(explained["explanation"].values, coef * (z - z.mean(0)), atol=1e-9)
    expect = sorted(zip(row["features"], np.abs(coef * z).mean(0)), key=lambda t: -t[1])
    assert [f for f, _ in explained["ranking"]] == [f for f, _ in expect]


def test_physics_model_recovers_the_scale():
    table = feature_table()
    table["conductivity"] = 450 * table["relative_conductivity"]
    ph = rg.physics(rg.plan_regression(table))
    assert ph["scale"] == pytest.approx(450) and ph["loocv_r2"] == pytest.approx(1)
    assert ph["test_rmse"] == pytest.approx(0, abs=1e-9)
    assert rg.physics(rg.plan_regression(table.drop(columns="relative_conductivity"))) is None


def test_search_on_the_cluster_equals_the_search_here(client, monkeypatch):
    plan = rg.plan_regression(feature_table())
    here = rg.search(plan)
    monkeypatch.setattr(rg, "PARALLEL_MIN", 10)
    monkeypatch.setattr(rg, "TASK_SUBSETS", 17)        # odd-sized tasks across every k
    assert plan.parallel
    there = rg.search(plan)
    pd.testing.assert_frame_equal(here, there)
    tasks = sum(math.ceil(math.comb(8, k) / 17) for k in range(2, 9))
    assert tasks > 10 and any("evaluate_range" in str(k) for k in client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.transition_log)[-5000:]))


def test_engineered_ahead_summary():
    result = pv.regress(feature_table())
    ahead = result["engineered_ahead"]
    assert ahead["top_with_engineered"] == 10
    assert ahead["best_engineered"]["rank"] == 1 and ahead["best_raw"]["rank"] > 1
    assert "files" not in result             # out=None writes nothing


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from porevox.pipelines import regress_figures

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(regress_figures, "all_figures", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        pv.regress(feature_table(), out=tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_a_rerun_replaces_the_previous_output_and_nothing_else(tmp_path):
    from porevox.errors import OutputError

    pv.regress(feature_table(), out=tmp_path / "r", figures=False)
    first = (tmp_path / "r" / "table2.md").read_text()
    (tmp_path / "r" / "notes.txt").write_text("the user's own")    # the folder is no longer porevox's alone
    with pytest.raises(OutputError, match="r exists and is not porevox's own output"):
        pv.regress(feature_table(seed=1), out=tmp_path / "r", figures=False)
    assert (tmp_path / "r" / "notes.txt").read_text() == "the user's own"
    assert (tmp_path / "r" / "table2.md").read_text() == first
    (tmp_path / "r" / "notes.txt").unlink()
    pv.regress(feature_table(seed=1), out=tmp_path / "r", figures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert (tmp_path / "r" / "table2.md").read_text() != first


@pytest.mark.parametrize("change, options, message", [
    (lambda t: t.drop(columns="conductivity"), {}, "no target column 'conductivity'"),
    (lambda t: t, {"target": "paste"}, "target column 'paste' is not numeric"),
    (lambda t: t, {"features": ["D", "paste"]}, "feature column 'paste' is not numeric"),
    (lambda t: t, {"features": ["D", "porosity"]}, "no column 'porosity'"),
    (lambda t: t, {"features": ["D", "relative_density"]}, "names 'relative_density' twice"),
    (lambda t: t.assign(beta=np.where(t["id"] == "HPB-350C-voi0", np.nan, t["beta"])), {},
     "NaN or infinite values in 1 row(s): HPB-350C-voi0 (beta); pass --drop-nan"),
    (lambda t: t[t["voi"] == 0].head(3), {}, "--min-features 2 exceeds the largest model possible"),
    (lambda t: t[t["voi"] == 0].head(9), {"max_features": 8},
     "9 training samples are too few for models of 8 features"),
    (lambda t: t, {"test_samples": ["XYZ"]}, "--test-samples: no row with id 'XYZ'"),
    (lambda t: pd.concat([t, t.assign(labels="unet")]), {}, "several segmentations (truth, unet)"),
    (lambda t: t, {"labels": "otsu"}, "no rows with labels 'otsu'"),
    (lambda t: t.iloc[:0], {}, "has no rows"),
])
def test_bad_tables_give_one_line_errors(change, options, message):
    with pytest.raises(rg.InvalidTableError, match=None) as err:
        rg.plan_regression(change(feature_table()), **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_drop_nan_leaves_the_rows_out_and_says_which():
    table = feature_table()
    table.loc[table["id"] == "HPB-350C-voi0", ["tortuosity", "bruggeman_alpha"]] = np.nan
    plan = rg.plan_regression(table, drop_nan=True)
    assert len(plan.train) == 17 and "HPB-350C-voi0" not in set(plan.train["id"])
    assert plan.dropped == ["HPB-350C-voi0 (tortuosity, bruggeman_alpha)"]


def test_alpha_and_beta_derived_from_their_columns(caplog):
    """A table with D, SA, φ, τ, M, G but no α or β: regress derives them from the
    columns that define them (τ = D^(−α), β = M / (|G|·φ)) and says so; the plan
    equals the one on the table that had them."""
    full = feature_table()
    with caplog.at_level("INFO", logger="porevox"):
        plan = rg.plan_regression(full.drop(columns=["bruggeman_alpha", "beta"]))
    assert "α derived from D, τ" in caplog.text and "β derived from M, G, φ" in caplog.text
    ref = rg.plan_regression(full)
    assert plan.columns == ref.columns and plan.symbols == ref.symbols
    for col in ("bruggeman_alpha", "beta"):
        np.testing.assert_allclose(plan.train[col], ref.train[col], rtol=1e-12)
    with pytest.raises(rg.InvalidTableError, match="no column 'bruggeman_alpha'"):
        rg.plan_regression(full.drop(columns=["bruggeman_alpha", "tortuosity"]), features=["SA", "alpha"])


def test_few_samples_cap_the_model_size_by_default():
    plan = rg.plan_regression(feature_table(extra_vois=()).head(7))
    assert plan.max_features == 5       # leave-one-out fits k + 1 coefficients from 6 samples


def test_table_from_csv_and_parquet(tmp_path):
    table = feature_table()
    table.to_csv(tmp_path / "f.csv", index=False)
    table.to_parquet(tmp_path / "f.parquet", index=False)
    a = pv.regress(tmp_path / "f.csv")
    b = pv.regress(tmp_path / "f.parquet")
    assert a["best"]["features"] == b["best"]["features"]
    assert a["best"]["loocv_rmse"] == pytest.approx(b["best"]["loocv_rmse"], rel=1e-12)
    with pytest.raises(rg.InvalidTableError, match="must be .csv or .parquet"):
        (tmp_path / "f.txt").write_text("x")
        rg.plan_regression(tmp_path / "f.txt")
    with pytest.raises(rg.InvalidTableError, match="no feature table at"):
        rg.plan_regression(tmp_path / "none.csv")


def test_the_demo_twin_table_2():
    """The Table-2 analog of docs/models.md, from the demo twin's stored feature table (21
    volumes, U-Net Hybrid labels and truth, as `make demo` wrote it)."""
    from pathlib import Path

    table = Path(__file__).parents[1] / "data" / "demo_twin_features.csv"
    result = pv.regress(table, labels="unet", drop_nan=True)
    assert result["test_ids"] == ["HPA-225C-voi1", "HPB-400C-voi1", "NPC-350C-voi1"]
    assert len(result["train_ids"]) == 17 and result["subsets"] == 247
    best = result["best"]
    assert best["features"] == ["D", "SA", "τ", "G", "α"]
    assert best["loocv_r2"] == pytest.approx(0.9742, abs=1e-4) and best["loocv_r2"] >= 0.95
    assert best["test_r2"] == pytest.approx(0.956, abs=1e-3)
    # models with an engineered feature lead: all of the top ten use α, the best
    # raw-only model ranks 16th
    ahead = result["engineered_ahead"]
    assert ahead["top_with_engineered"] == 10 and ahead["best_raw"]["rank"] == 16
    # the paper's own models do not carry over to the twin (see docs/models.md)
    assert result["paper_models"]["Q"]["loocv_r2"] < 0
    assert result["physics"]["loocv_r2"] == pytest.approx(0.9956, abs=1e-4)
    truth = pv.regress(table, labels="truth", drop_nan=True)
    assert truth["best"]["features"] == ["D", "τ", "G", "α"]
    assert truth["best"]["loocv_r2"] == pytest.approx(0.9698, abs=1e-4)
