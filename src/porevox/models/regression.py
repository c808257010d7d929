"""Multivariable linear regression (MVLR) on standardised features, evaluated for many
feature subsets at once: leave-one-out cross-validation and held-out test sets.

Every model is ``StandardScaler`` + ``LinearRegression`` (scikit-learn), as in the
paper. Fitting a thousand small models one by one with scikit-learn costs more in
call overhead than in arithmetic, so :func:`evaluate_subsets` computes the same
numbers for a whole batch of subsets with one stacked SVD:

- An intercept model is invariant to an affine change of each feature, so the
  scaler fitted inside each LOOCV fold does not change that fold's prediction; the
  leave-one-out residual of sample *i* is then the PRESS residual
  ``e_i / (1 − h_ii)`` of the fit on all samples (h: the hat matrix).
- Where ``h_ii`` is 1 (a sample the others cannot predict: leaving it out drops the
  design's rank), that fold is refitted explicitly as scikit-learn would
  (minimum-norm least squares on the fold's standardised features).
- Test predictions use the fit on all training samples, with scikit-learn's
  minimum-norm solution where features are collinear.

:func:`fit` returns the scikit-learn pipeline itself (for coefficients and SHAP).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

#: Subsets evaluated per stacked SVD (memory: batch × samples × features doubles).
BATCH = 4096


def count_subsets(n_features: int, min_features: int, max_features: int) -> int:
    """How many subsets of `n_features` have between `min_features` and `max_features`."""
    return sum(math.comb(n_features, k) for k in range(min_features, max_features + 1))


def subsets(n_features: int, k: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """The `k`-subsets of ``range(n_features)`` in lexicographic order, rows
    ``start:stop``, as an ``(m, k)`` int array."""
    combos = itertools.islice(itertools.combinations(range(n_features), k), start, stop)
    flat = np.fromiter(itertools.chain.from_iterable(combos), dtype=np.intp)
    return flat.reshape(-1, k)


def _standardise(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and scale along `axis` as StandardScaler does (a zero sd scales by 1)."""
    mean = x.mean(axis=axis, keepdims=True)
    sd = x.std(axis=axis, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return (x - mean) / sd, mean, sd


def _min_norm(z: np.ndarray, yc: np.ndarray):
    """Stacked SVD solve of ``z β = yc`` (min-norm) → (β, leverage without the mean)."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)               # (S,n,k) (S,k) (S,k,k)
    tol = s[:, :1] * max(z.shape[1], z.shape[2]) * np.finfo(float).eps
    keep = s > tol
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    u = u * keep[:, None, :]
    coef = np.einsum("sjk,sj->sk", vt, inv * np.einsum("snj,n->sj", u, yc))
    return coef, np.einsum("snj,snj->sn", u, u)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """scikit-learn's StandardScaler + LinearRegression fitted on one design and
    evaluated at `x_new` (all 2-D): the reference the batched path reduces to."""
    z, mean, sd = _standardise(x_train, 0)
    ybar = y_train.mean()
    coef, _ = _min_norm(z[None], y_train - ybar)
    return ybar + ((x_new - mean) / sd) @ coef[0]


def rmse_r2(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMSE and R² (scikit-learn's definitions) of each row of `pred` against `y`."""
    sse = np.sum((pred - y) ** 2, axis=-1)
    sst = np.sum((y - y.mean()) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / sst, np.nan)
    return np.sqrt(sse / y.shape[-1]), r2


def evaluate_subsets(x: np.ndarray, y: np.ndarray, columns: np.ndarray,
                     x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                     predictions: bool = False) -> dict[str, np.ndarray]:
    """LOOCV and test metrics of the models on each row of `columns`.

    `x` is ``(n_samples, n_features)``, `columns` ``(n_models, k)`` column indices (one
    k per call). Returns arrays of length ``n_models``: ``loocv_rmse``, ``loocv_r2``,
    ``test_rmse``, ``test_r2`` (NaN without a test set, and R² NaN for fewer than two
    test samples); with `predictions`, also ``loocv_pred`` ``(n_models, n)`` and
    ``test_pred``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    columns = np.atleast_2d(np.asarray(columns, dtype=np.intp))
    n = y.size
    out = {key: [] for key in ("loocv_rmse", "loocv_r2", "test_rmse", "test_r2", "loocv_pred",
                               "test_pred")}
    for b in range(0, len(columns), BATCH):
        cols = columns[b:b + BATCH]
        z, mean, sd = _standardise(x[:, cols].transpose(1, 0, 2), 1)    # (S, n, k)
        ybar = y.mean()
        coef, lev = _min_norm(z, y - ybar)
        fitted = ybar + np.einsum("snk,sk->sn", z, coef)
        h = lev + 1.0 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            loo = y - (y - fitted) / (1.0 - h)
        for s, i in zip(*np.nonzero(1.0 - h < 1e-9)):     # the fold loses rank: refit it
            keep = np.arange(n) != i
            xs = x[:, cols[s]]
            loo[s, i] = fit_predict(xs[keep], y[keep], xs[i:i + 1])[0]
        rmse, r2 = rmse_r2(y, loo)
        out["loocv_rmse"].append(rmse)
        out["loocv_r2"].append(r2)
        out["loocv_pred"].append(loo)
        if x_test is not None and len(y_test):
            zt = (np.asarray(x_test, float)[:, cols].transpose(1, 0, 2) - mean) / sd
            pred = ybar + np.einsum("snk,sk->sn", zt, coef)
            t_rmse, t_r2 = rmse_r2(np.asarray(y_test, float), pred)
            if len(y_test) < 2:
                t_r2 = np.full(len(cols), np.nan)
            out["test_rmse"].append(t_rmse)
            out["test_r2"].append(t_r2)
            out["test_pred"].append(pred)
        else:
            out["test_rmse"].append(np.full(len(cols), np.nan))
            out["test_r2"].append(np.full(len(cols), np.nan))
            out["test_pred"].append(np.empty((len(cols), 0)))
    result = {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}
    if not predictions:
        del result["loocv_pred"], result["test_pred"]
    return result


def evaluate_range(x, y, x_test, y_test, k: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """:func:`evaluate_subsets` over the `k`-subsets ``start:stop`` (one cluster task)."""
    return evaluate_subsets(x, y, subsets(x.shape[1], k, start, stop), x_test, y_test)


def fit(x: np.ndarray, y: np.ndarray):
    """The fitted scikit-learn pipeline ``StandardScaler() → LinearRegression()``."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LinearRegression()).fit(np.asarray(x, float),
                                                                   np.asarray(y, float))


def coefficients(model) -> dict:
    """Intercept and coefficients of a fitted :func:`fit` pipeline, on the standardised
    features (the paper's b0, b1 … bn) and in the features' own units."""
    scaler, linear = model[0], model[-1]
    raw = linear.coef_ / scaler.scale_
    return {"intercept": float(linear.intercept_), "standardised": linear.coef_.tolist(),
            "raw": raw.tolist(), "raw_intercept": float(linear.intercept_ - raw @ scaler.mean_)}


def shap_values(model, x: np.ndarray, background: np.ndarray | None = None):
    """SHAP values of a fitted :func:`fit` pipeline at `x` (``shap.LinearExplainer`` on
    the standardised features, the background being the training data): a
    ``shap.Explanation`` whose ``values`` are ``coef · (z − mean z)``."""
    import shap

    scaler, linear = model[0], model[-1]
    z = scaler.transform(np.asarray(x, float))
    zb = z if background is None else scaler.transform(np.asarray(background, float))
    explainer = shap.LinearExplainer(linear, zb)
    return explainer(z)


def importance(values: np.ndarray, names: Sequence[str]) -> list[tuple[str, float]]:
    """Mean |SHAP| per feature, largest first."""
    mean_abs = np.abs(np.asarray(values)).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    return [(names[i], float(mean_abs[i])) for i in order]


__all__ = ["BATCH", "coefficients", "count_subsets", "evaluate_range", "evaluate_subsets", "fit",
           "fit_predict", "importance", "rmse_r2", "shap_values", "subsets"]
