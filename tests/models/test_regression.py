"""The batched MVLR evaluation against scikit-learn's own pipeline, fitted one model
and one fold at a time."""

import math

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from porevox.models import regression as mvlr


def sklearn_reference(x, y, xt, cols):
    model = make_pipeline(StandardScaler(), LinearRegression())
    loo = cross_val_predict(model, x[:, cols], y, cv=LeaveOneOut())
    return loo, model.fit(x[:, cols], y).predict(xt[:, cols])


@pytest.fixture
def table():
    """18 samples, 7 features on wildly different scales, one an exact linear
    combination of two others (collinear subsets), and 3 test samples."""
    rng = np.random.default_rng(5)
    scale = np.array([1e-3, 1.0, 50.0, 1e4, 0.2, 3.0, 1.0])
    x = rng.normal(size=(21, 7)) * scale + rng.normal(size=7) * scale * 4
    x[:, 6] = 2 * x[:, 1] - 0.5 * x[:, 4] / 0.2
    y = 30 + 4 * x[:, 1] - 0.001 * x[:, 3] + rng.normal(scale=2, size=21)
    return x[:18], y[:18], x[18:], y[18:]


def test_subsets_enumerate_combinations_in_order():
    assert mvlr.subsets(5, 2).tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [1, 3], [1, 4],
                                           [2, 3], [2, 4], [3, 4]]
    assert mvlr.subsets(5, 2, 3, 6).tolist() == [[0, 4], [1, 2], [1, 3]]
    assert mvlr.count_subsets(8, 2, 8) == 2**8 - 1 - 8
    assert mvlr.count_subsets(20, 2, 3) == math.comb(20, 2) + math.comb(20, 3)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_loocv_and_test_metrics_equal_sklearn(table, k):
    x, y, xt, yt = table
    cols = mvlr.subsets(x.shape[1], k)
    got = mvlr.evaluate_subsets(x, y, cols, xt, yt, predictions=True)
    for i, c in enumerate(cols):
        loo, test = sklearn_reference(x, y, xt, c)
        np.testing.assert_allclose(got["loocv_pred"][i], loo, rtol=1e-9, atol=1e-8)
        np.testing.assert_allclose(got["test_pred"][i], test, rtol=1e-9, atol=1e-8)
        assert got["loocv_rmse"][i] == pytest.approx(math.sqrt(mean_squared_error(y, loo)), rel=1e-9)
        assert got["loocv_r2"][i] == pytest.approx(r2_score(y, loo), rel=1e-9, abs=1e-12)
        assert got["test_rmse"][i] == pytest.approx(math.sqrt(mean_squared_error(yt, test)), rel=1e-9)
        assert got["test_r2"][i] == pytest.approx(r2_score(yt, test), rel=1e-9, abs=1e-12)


def test_a_fold_that_loses_rank_is_refitted_like_sklearn():
    """Sample 0 is the only one with a nonzero indicator: its leverage is 1, so the
    PRESS shortcut is 0/0; the fold is refitted (min-norm, as scikit-learn does)."""
    rng = np.random.default_rng(2)
    x = np.c_[rng.normal(size=12), np.r_[1.0, np.zeros(11)], rng.normal(size=12)]
    y = x[:, 0] * 3 + 10 * x[:, 1] + rng.normal(scale=0.1, size=12)
    got = mvlr.evaluate_subsets(x, y, [[0, 1, 2]], predictions=True)
    loo, _ = sklearn_reference(x, y, x[:1], [0, 1, 2])
    np.testing.assert_allclose(got["loocv_pred"][0], loo, rtol=1e-9, atol=1e-9)
    assert np.isfinite(got["loocv_rmse"]).all()


def test_no_test_set_gives_nan_metrics(table):
    x, y, _, _ = table
    got = mvlr.evaluate_subsets(x, y, [[0, 1]])
    assert np.isnan(got["test_rmse"]).all() and np.isnan(got["test_r2"]).all()
    one = mvlr.evaluate_subsets(x, y, [[0, 1]], x[:1], y[:1])     # R² needs two test samples
    assert np.isfinite(one["test_rmse"]).all() and np.isnan(one["test_r2"]).all()


def test_batches_join_seamlessly(table, monkeypatch):
    x, y, xt, yt = table
    cols = mvlr.subsets(7, 3)
    whole = mvlr.evaluate_subsets(x, y, cols, xt, yt)
    monkeypatch.setattr(mvlr, "BATCH", 4)
    parts = mvlr.evaluate_subsets(x, y, cols, xt, yt)
    for key in whole:
        np.testing.assert_array_equal(whole[key], parts[key])


def test_coefficients_recovered_from_a_known_linear_law():
    """σ = 40 + 3·x1 − 2·x2 + noise among three distractors: the fit returns the law
    within its standard errors, and the raw and standardised forms agree."""
    rng = np.random.default_rng(11)
    n = 60
    x = rng.normal(size=(n, 5)) * [1.0, 2.0, 5.0, 0.5, 3.0]
    y = 40 + 3 * x[:, 0] - 2 * x[:, 1] + rng.normal(scale=0.5, size=n)
    model = mvlr.fit(x[:, :2], y)
    c = mvlr.coefficients(model)
    se = 0.5 / np.sqrt(n) / x[:, :2].std(axis=0)
    assert np.all(np.abs(np.array(c["raw"]) - [3.0, -2.0]) < 4 * se)
    assert c["raw_intercept"] == pytest.approx(40, abs=4 * 0.5 / np.sqrt(n) * 3)
    np.testing.assert_allclose(c["standardised"], np.array(c["raw"]) * x[:, :2].std(axis=0))
    # and the exhaustive search ranks the true subset first
    cols = np.array([c for k in (2, 3) for c in mvlr.subsets(5, k)], dtype=object)
    best = min((mvlr.evaluate_subsets(x, y, [c])["loocv_rmse"][0], tuple(c)) for c in cols)
    assert best[1] == (0, 1)


def test_fit_predict_is_the_sklearn_pipeline(table):
    x, y, xt, _ = table
    np.testing.assert_allclose(mvlr.fit_predict(x[:, [1, 4, 6]], y, xt[:, [1, 4, 6]]),
                               mvlr.fit(x[:, [1, 4, 6]], y).predict(xt[:, [1, 4, 6]]), rtol=1e-9)


def test_shap_values_of_a_linear_model_are_coef_times_centred_standardised_x(table):
    x, y, _, _ = table
    model = mvlr.fit(x[:, [0, 2, 3]], y)
    expl = mvlr.shap_values(model, x[:, [0, 2, 3]])
    z = (x[:, [0, 2, 3]] - x[:, [0, 2, 3]].mean(0)) / x[:, [0, 2, 3]].std(0)
    np.testing.assert_allclose(expl.values, model[-1].coef_ * (z - z.mean(0)), atol=1e-9)
    # additivity: base value + Σ SHAP = the model's prediction
    np.testing.assert_allclose(expl.base_values + expl.values.sum(1), model.predict(x[:, [0, 2, 3]]),
                               rtol=1e-9)
    ranking = mvlr.importance(expl.values, ["a", "b", "c"])
    assert [v for _, v in ranking] == sorted(np.abs(expl.values).mean(0), reverse=True)
