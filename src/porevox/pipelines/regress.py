"""`porevox regress`: the paper's structure–property models (its Table 2 and Fig. 4)
on any feature table.

Every subset of ≥ ``min_features`` (up to ``max_features``) of the chosen features is
fitted as StandardScaler + LinearRegression to the target (the conductivity), and
scored by leave-one-out cross-validation (LOOCV) on the training samples and on the
held-out test samples. The models are ranked by LOOCV RMSE; the paper's named models
(A, C, I, J, N, Q, R) are always listed, beside the paper's numbers. The best model
and model Q are explained with SHAP (``shap.LinearExplainer``). Where the table has
the conductivity solver's ``relative_conductivity`` (σ_eff / σ_bulk), the one-number
physical model σ = s · σ_eff / σ_bulk is scored the same way, so a user sees how much
of σ the structure explains at all.

Samples and test sets:

- A sample is a (``paste``, ``temperature_c``) pair where the table has those columns,
  else a row. The test set is, first of all, the rows ``test_samples`` names by
  ``id``; else the rows marked ``held_out`` (a column ``porevox synth`` writes into
  ``study.yaml`` and quantify copies: the demo twin's three extra VOIs, the paper's
  three test sets); else the VOI with the highest ``voi`` of every sample that has
  several.
- Where a sample keeps several training VOIs, they are averaged into one training
  row, so that leave-one-out leaves out a whole sample (VOIs of one sample share their
  measured conductivity; leaving one in would leak it).

Many subsets (more than :data:`PARALLEL_MIN`) are evaluated as Dask tasks, on the
cluster where one is active.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.outputs import check_output, record
from ..engine.provenance import finite
from ..errors import PorevoxError
from ..models import regression as mvlr
from .engineered import ENGINEERED

logger = logging.getLogger(__name__)

#: The paper's feature symbols and the feature table's columns.
SYMBOLS = {"D": "relative_density", "SA": "specific_surface_area", "φ": "strut_diameter_mean",
           "τ": "tortuosity", "G": "gaussian_curvature_mean", "M": "mean_curvature_mean",
           "α": "bruggeman_alpha", "β": "beta"}
#: ASCII spellings accepted on the command line.
ALIASES = {"phi": "φ", "tau": "τ", "alpha": "α", "beta": "β"}
#: The paper's named models (Table 2).
PAPER_MODELS = {"A": ("τ", "G"), "C": ("SA", "τ", "G"), "I": ("SA", "φ", "τ", "G"),
                "J": ("SA", "α"), "N": ("SA", "G", "α"), "Q": ("SA", "α", "β"),
                "R": ("SA", "M", "φ", "α")}
#: The paper's Table 2: LOOCV RMSE, LOOCV R², test RMSE, test R² (µS/cm).
PAPER_TABLE2 = {"A": (21.8, 0.956, 35.1, 0.707), "C": (22.1, 0.956, 35.2, 0.707),
                "I": (22.7, 0.960, 36.5, 0.684), "J": (13.1, 0.982, 25.1, 0.851),
                "N": (13.4, 0.983, 25.0, 0.852), "Q": (11.5, 0.988, 21.9, 0.887),
                "R": (14.0, 0.985, 23.3, 0.871)}
#: The paper's SHAP ranking of model Q (Fig. 4d) and its per-paste R² (Methods).
PAPER_SHAP = ("α", "SA", "β")
PAPER_GROUP_R2 = {"HPA": 0.97, "HPB": 0.61, "NPC": 0.99}
#: Where the physical model's σ_eff / σ_bulk comes from.
PHYSICS_COLUMN = "relative_conductivity"
SAMPLE_KEY = ("paste", "temperature_c")
PARALLEL_MIN = 20_000      # subsets: fewer are evaluated in this process
TASK_SUBSETS = 20_000      # subsets per Dask task
MAX_SUBSETS = 5_000_000         # each ranked row holds its name: ~0.3 GB at the limit


class InvalidTableError(PorevoxError, ValueError):
    """A feature table, or an option naming its columns or rows, is not usable."""


@dataclass
class Plan:
    """A checked regression problem: the training and test rows and the subsets to fit."""

    source: str
    target: str
    labels: str | None
    columns: list[str]              # feature columns
    symbols: list[str]              # their names in the output (the paper's symbols)
    train: object                   # pandas.DataFrame, one row per training sample
    test: object                    # pandas.DataFrame, the held-out rows (may be empty)
    min_features: int
    max_features: int
    out: Path | None
    figures: bool = True
    top: int = 10
    dropped: list[str] = field(default_factory=list)
    averaged: dict = field(default_factory=dict)
    phase: str | None = None        # the phase column's value of the rows used

    @property
    def n_subsets(self) -> int:
        return mvlr.count_subsets(len(self.columns), self.min_features, self.max_features)

    @property
    def parallel(self) -> bool:
        return self.n_subsets > PARALLEL_MIN


# --------------------------------------------------------------------------- input
def load_table(table):
    """A feature table from a DataFrame, a ``.csv`` or a ``.parquet`` path."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table.copy(), "<DataFrame>"
    path = Path(table)
    if not path.is_file():
        raise InvalidTableError(f"no feature table at {path}; make one with porevox quantify STUDY.yaml")
    if path.suffix not in (".csv", ".parquet"):
        raise InvalidTableError(f"{path}: a feature table must be .csv or .parquet")
    try:
        return (pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)), str(path)
    except pd.errors.EmptyDataError:
        raise InvalidTableError(f"{path} is empty; give the features.csv that porevox quantify "
                                "writes") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InvalidTableError(f"{path} is not a readable feature table ({reason}); fix the file "
                                "or make it again with porevox quantify STUDY.yaml") from None


def resolve_features(table, features) -> tuple[list[str], list[str]]:
    """(columns, symbols) of the requested features: column names, the paper's symbols
    (D, SA, φ, τ, G, M, α, β) or their ASCII spellings. None: the paper's eight. α or
    β missing from `table` but its defining columns there is derived (added to
    `table`, and logged)."""
    names = list(SYMBOLS) if features is None else list(features)
    if features is not None and not names:
        raise InvalidTableError("--features is empty; name at least two feature columns")
    by_column = {c: s for s, c in SYMBOLS.items()}
    columns, symbols = [], []
    for name in names:
        sym = ALIASES.get(name, name)
        col = SYMBOLS.get(sym, name)
        func, inputs = ENGINEERED.get(col, (None, ()))
        if col not in table.columns and func is not None and all(k in table.columns for k in inputs):
            table[col] = [func(*row) for row in table[list(inputs)].itertuples(index=False)]
            logger.info("regress: %s derived from %s (the table has no %r column)", by_column[col],
                        ", ".join(by_column.get(k, k) for k in inputs), col)
        if col not in table.columns:
            missing = "the paper's features" if features is None else "--features"
            raise InvalidTableError(
                f"no column {col!r} in the table for {missing} ({name}); it has "
                f"{', '.join(map(str, table.columns))}: pass --features with some of them")
        if col in columns:
            raise InvalidTableError(f"--features names {col!r} twice")
        columns.append(col)
        symbols.append(by_column.get(col, col))
    return columns, symbols


def _check_numeric(table, columns: list[str], what: str) -> None:
    import pandas as pd

    for col in columns:
        if not pd.api.types.is_numeric_dtype(table[col]) or pd.api.types.is_bool_dtype(table[col]):
            raise InvalidTableError(f"{what} column {col!r} is not numeric ({table[col].dtype}); "
                                    "choose numeric columns with --features / --target")


def _ids(table) -> list[str]:
    return [str(v) for v in (table["id"] if "id" in table.columns else table.index)]


def default_out(source: str, labels: str | None, phase: str | None = None) -> Path:
    """Where the CLI writes: ``regression/<labels>`` beside the feature table
    (``regression/<labels>.phase-<phase>`` for a phase other than the solid, 1)."""
    name = labels or "all"
    if phase not in (None, "1"):
        name += f".phase-{phase}"
    return Path(source).parent / "regression" / name


def _one_of(table, column: str, value: str | None, option: str, what: str):
    """`table`'s rows whose `column` is `value`; where `value` is None, the table,
    which must then hold one value there. Returns the rows and the value."""
    if column not in table.columns:
        if value is not None:
            raise InvalidTableError(f"{option} given, but the table has no {column!r} column")
        return table, None
    have = table[column].dropna().astype(str)
    names = sorted(have.unique())
    if value is None and len(names) > 1:
        raise InvalidTableError(f"the table holds features of several {what} ({', '.join(names)}); "
                                f"choose one with {option}")
    if value is not None:
        if str(value) not in names:
            raise InvalidTableError(f"no rows with {column} {value!r}; the table has "
                                    f"{', '.join(names) or 'none'}: pass {option} <one of them>")
        table = table[have.reindex(table.index) == str(value)]
    return table, (str(value) if value is not None else (names[0] if names else None))


def plan_regression(table, *, target: str = "conductivity", features=None, labels: str | None = None,
                    phase: str | None = None, test_samples=None, min_features: int = 2,
                    max_features: int | None = None, drop_nan: bool = False, out=None,
                    figures: bool = True, top: int = 10) -> Plan:
    """Check a feature table and the options; choose the training and test rows.
    ``out="auto"`` writes beside the table (:func:`default_out`), None nowhere."""
    table, source = load_table(table)
    if len(table) == 0:
        raise InvalidTableError(f"{source} has no rows")
    if target not in table.columns:
        raise InvalidTableError(f"no target column {target!r} in {source}; it has "
                                f"{', '.join(map(str, table.columns))}: pass --target <one of them>")
    table, labels = _one_of(table, "labels", labels, "--labels", "segmentations")
    table, phase = _one_of(table, "phase", phase, "--phase", "phases")
    if out is not None:   # the output before any other work or warning
        check_output(default_out(source, labels, phase) if out == "auto" else out,
                     inputs=[] if source.startswith("<") else [source], what="regression folder",
                     fix="give another --out")
    columns, symbols = resolve_features(table, features)
    _check_numeric(table, [target], "target")
    _check_numeric(table, columns, "feature")
    if min_features < 1:
        raise InvalidTableError(f"--min-features must be at least 1; got {min_features}")
    table = table.reset_index(drop=True)
    bad = table[columns + [target]].isna() | ~np.isfinite(table[columns + [target]].to_numpy(float))
    dropped = []
    if bad.to_numpy().any():
        rows = bad.any(axis=1)
        where = [f"{i} ({', '.join(c for c in bad.columns if bad.loc[r, c])})"
                 for i, r in zip(np.array(_ids(table))[rows], np.flatnonzero(rows))]
        if not drop_nan:
            raise InvalidTableError(
                f"NaN or infinite values in {len(where)} row(s): {'; '.join(where)}; pass "
                "--drop-nan to leave those rows out, or choose --features without them")
        dropped = where
        logger.warning("regress: left out %d row(s) with NaN values: %s", len(where), "; ".join(where))
        table = table[~rows].reset_index(drop=True)
    train, test = _split(table, test_samples)
    train, averaged = _average_vois(train, columns + [target])
    n = len(train)
    most = n - 2            # leave-one-out needs k + 1 coefficients from n − 1 samples
    if max_features is not None:
        max_features = min(max_features, len(columns))
    if max_features is None:
        max_features = min(len(columns), most)
        if max_features < len(columns):
            logger.warning("regress: %d training samples: models of up to %d features "
                           "(leave-one-out needs k + 2 samples)", n, max_features)
    elif max_features > most:
        raise InvalidTableError(
            f"{n} training samples are too few for models of {max_features} features "
            f"(leave-one-out needs k + 2 = {max_features + 2}); lower --max-features to {max(most, 0)} "
            "or add samples")
    if min_features > max_features:
        raise InvalidTableError(
            f"--min-features {min_features} exceeds the largest model possible here ({max_features} "
            f"of {len(columns)} features with {n} training samples): lower it or add features/samples")
    if top < 1:
        raise InvalidTableError(f"--top must be at least 1; got {top}")
    if out == "auto":
        out = default_out(source, labels, phase)
    plan = Plan(source, target, labels, columns, symbols, train, test, min_features, max_features,
                Path(out) if out is not None else None, figures, top, dropped, averaged, phase)
    if plan.n_subsets > MAX_SUBSETS:
        raise InvalidTableError(f"{plan.n_subsets:,} feature subsets are too many to fit; lower "
                                f"--max-features (now {max_features}) or choose fewer --features")
    return plan


def _split(table, test_samples):
    """Training and test rows: the named ids, else the rows marked ``held_out``, else
    the last VOI of samples with several."""
    ids = np.array(_ids(table))
    if test_samples:
        if "id" not in table.columns:
            raise InvalidTableError("--test-samples names rows by id, but the table has no 'id' column")
        unknown = [s for s in test_samples if s not in set(ids)]
        if unknown:
            raise InvalidTableError(f"--test-samples: no row with id {', '.join(map(repr, unknown))} "
                                    f"(ids: {', '.join(ids[:8])}{' …' if len(ids) > 8 else ''})")
        held = np.isin(ids, list(test_samples))
    elif "held_out" in table.columns and table["held_out"].eq(True).any():
        held = table["held_out"].eq(True).to_numpy()
    elif "voi" in table.columns and all(k in table.columns for k in SAMPLE_KEY):
        last = table.groupby(list(SAMPLE_KEY))["voi"].transform("max")
        size = table.groupby(list(SAMPLE_KEY))["voi"].transform("size")
        held = ((table["voi"] == last) & (size > 1)).to_numpy()
    else:
        held = np.zeros(len(table), bool)
    if not held.any():
        logger.info("regress: no test set (every sample has one VOI); name some with --test-samples")
    return table[~held].reset_index(drop=True), table[held].reset_index(drop=True)


def _average_vois(train, numeric: list[str]):
    """One training row per sample: VOIs of the same (paste, temperature) averaged."""
    if not all(k in train.columns for k in SAMPLE_KEY):
        return train, {}
    groups = train.groupby(list(SAMPLE_KEY), sort=False)
    if groups.ngroups == len(train):
        return train, {}
    import pandas as pd

    extra = [c for c in train.columns if c not in numeric and c not in SAMPLE_KEY
             and pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c])]
    mean = groups[numeric + extra].mean()
    first = groups.first()
    merged = first.assign(**{c: mean[c] for c in numeric + extra}).reset_index()
    averaged = {}
    if "id" in train.columns:
        for key, part in groups:
            if len(part) > 1:
                name = f"{key[0]}-{key[1]}C"
                averaged[name] = list(map(str, part["id"]))
                merged.loc[(merged[SAMPLE_KEY[0]] == key[0]) & (merged[SAMPLE_KEY[1]] == key[1]),
                           "id"] = name
    logger.info("regress: %d training rows averaged into %d samples", len(train), len(merged))
    return merged, averaged


# --------------------------------------------------------------------------- search
def _arrays(plan: Plan):
    x = plan.train[plan.columns].to_numpy(float)
    y = plan.train[plan.target].to_numpy(float)
    xt = plan.test[plan.columns].to_numpy(float)
    yt = plan.test[plan.target].to_numpy(float)
    return x, y, xt, yt


def search(plan: Plan):
    """Every subset's LOOCV and test metrics, as a DataFrame ranked by LOOCV RMSE."""
    import dask
    import pandas as pd

    from ..engine.cluster import active_client, compute

    x, y, xt, yt = _arrays(plan)
    p = len(plan.columns)
    ks = range(plan.min_features, plan.max_features + 1)
    ranges = [(k, a, min(a + TASK_SUBSETS, math.comb(p, k))) for k in ks
              for a in range(0, math.comb(p, k), TASK_SUBSETS)]
    if plan.parallel:
        where = "the cluster" if active_client() is not None else "local threads"
        logger.info("regress: %s subsets in %d tasks on %s", f"{plan.n_subsets:,}", len(ranges), where)
        data = [dask.delayed(v, pure=True) for v in (x, y, xt, yt)]
        parts = compute(*[dask.delayed(mvlr.evaluate_range, pure=True)(*data, k, a, b)
                          for k, a, b in ranges])
    else:
        parts = [mvlr.evaluate_range(x, y, xt, yt, k, a, b) for k, a, b in ranges]
    metrics = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    names = [" + ".join(plan.symbols[i] for i in cols)
             for k, a, b in ranges for cols in mvlr.subsets(p, k, a, b)]
    frame = pd.DataFrame({"features": names, "k": np.concatenate(
        [np.full(b - a, k) for k, a, b in ranges]), **metrics})
    frame = frame.sort_values(["loocv_rmse", "k"], kind="stable", na_position="last")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def describe(plan: Plan, symbols: tuple[str, ...], name: str = "") -> dict:
    """One model in full: coefficients (scikit-learn's fit on all training samples),
    LOOCV and test metrics and predictions, per-paste LOOCV R²."""
    idx = [plan.symbols.index(s) for s in symbols]
    x, y, xt, yt = _arrays(plan)
    m = mvlr.evaluate_subsets(x, y, [idx], xt, yt, predictions=True)
    model = mvlr.fit(x[:, idx], y)
    coef = mvlr.coefficients(model)
    row = {"model": name, "features": list(symbols), "columns": [plan.columns[i] for i in idx],
           "intercept": coef["intercept"],
           "coefficients": dict(zip(symbols, coef["standardised"])),
           "coefficients_raw": dict(zip(symbols, coef["raw"])), "intercept_raw": coef["raw_intercept"],
           **{k: float(m[k][0]) for k in ("loocv_rmse", "loocv_r2", "test_rmse", "test_r2")},
           "loocv_pred": m["loocv_pred"][0].tolist(), "test_pred": m["test_pred"][0].tolist()}
    if "paste" in plan.train.columns:
        row["loocv_r2_by_paste"] = _group_r2(plan.train["paste"], y, m["loocv_pred"][0])
    if name in PAPER_TABLE2:
        row["paper"] = dict(zip(("loocv_rmse", "loocv_r2", "test_rmse", "test_r2"), PAPER_TABLE2[name]))
    return row


def _group_r2(groups, y, pred) -> dict:
    out = {}
    for g in sorted(set(groups)):
        sel = (groups == g).to_numpy()
        out[str(g)] = float(mvlr.rmse_r2(y[sel], pred[sel])[1]) if sel.sum() > 1 else math.nan
    return out


def explain(plan: Plan, row: dict) -> dict:
    """SHAP values of a model over the training samples: the values, and the ranking
    by mean |SHAP|."""
    x, y, _, _ = _arrays(plan)
    cols = [plan.columns.index(c) for c in row["columns"]]
    model = mvlr.fit(x[:, cols], y)
    expl = mvlr.shap_values(model, x[:, cols])
    expl.feature_names = list(row["features"])
    return {"explanation": expl, "ranking": mvlr.importance(expl.values, row["features"])}


def physics(plan: Plan) -> dict | None:
    """σ = s · σ_eff / σ_bulk (the conductivity solver's answer, one fitted scale),
    scored like the models: how much of σ the structure explains."""
    if PHYSICS_COLUMN not in plan.train.columns:
        return None
    r = plan.train[PHYSICS_COLUMN].to_numpy(float)
    y = plan.train[plan.target].to_numpy(float)
    if not np.isfinite(r).all() or not np.any(r):
        return None
    scale = float(r @ y / (r @ r))
    loo = np.array([r[i] * (np.delete(r, i) @ np.delete(y, i)) / (np.delete(r, i) @ np.delete(r, i))
                    for i in range(len(r))])
    rmse, r2 = mvlr.rmse_r2(y, loo)
    out = {"column": PHYSICS_COLUMN, "scale": scale, "loocv_rmse": float(rmse), "loocv_r2": float(r2),
           "loocv_pred": loo.tolist(), "test_rmse": math.nan, "test_r2": math.nan, "test_pred": []}
    if len(plan.test) and PHYSICS_COLUMN in plan.test.columns:
        rt = plan.test[PHYSICS_COLUMN].to_numpy(float)
        yt = plan.test[plan.target].to_numpy(float)
        t_rmse, t_r2 = mvlr.rmse_r2(yt, scale * rt)
        out.update(test_rmse=float(t_rmse), test_r2=float(t_r2) if len(yt) > 1 else math.nan,
                   test_pred=(scale * rt).tolist())
    return out


# --------------------------------------------------------------------------- run
def run_regression(plan: Plan) -> dict:
    """Fit every subset, describe the best models and the paper's, explain them with
    SHAP, and write the Table-2 analog, the ranking and the figures under ``plan.out``."""
    started = time.time()
    ranking = search(plan)
    logger.info("regress: %s models fitted in %.1f s", f"{len(ranking):,}", time.time() - started)
    rank_of = {frozenset(f.split(" + ")): r for f, r in zip(ranking["features"], ranking["rank"])}
    rows = [describe(plan, tuple(f.split(" + "))) for f in ranking["features"][:plan.top]]
    named = {}
    for name, symbols in PAPER_MODELS.items():
        if all(s in plan.symbols for s in symbols):
            named[name] = describe(plan, symbols, name)
    for row in rows:           # a top model that is one of the paper's carries its letter
        for name, other in named.items():
            if set(row["features"]) == set(other["features"]):
                row["model"], row["paper"] = name, other["paper"]
    for row in [*rows, *named.values()]:
        row["rank"] = int(rank_of.get(frozenset(row["features"]), 0)) or None
    best = rows[0]
    shap_for = {"best": best, **({"Q": named["Q"]} if "Q" in named else {})}
    explained = {key: explain(plan, row) for key, row in shap_for.items()}
    result = {
        "source": plan.source, "target": plan.target, "labels": plan.labels, "phase": plan.phase,
        "features": dict(zip(plan.symbols, plan.columns)),
        "train_ids": _ids(plan.train), "test_ids": _ids(plan.test),
        "train_target": plan.train[plan.target].tolist(), "test_target": plan.test[plan.target].tolist(),
        "dropped": plan.dropped, "averaged": plan.averaged,
        "min_features": plan.min_features, "max_features": plan.max_features,
        "subsets": int(len(ranking)), "best": best, "top": rows, "paper_models": named,
        "shap": {key: {"features": shap_for[key]["features"],
                       "ranking": [{"feature": f, "mean_abs_shap": v} for f, v in e["ranking"]]}
                 for key, e in explained.items()},
        "paper_shap": list(PAPER_SHAP), "paper_r2_by_paste": PAPER_GROUP_R2,
        "physics": physics(plan), "engineered_ahead": engineered_ahead(ranking),
    }
    if plan.out is not None:
        result["files"] = _write(plan, result, ranking, explained)
    result["seconds"] = round(time.time() - started, 2)
    return result


def regress(table, **options) -> dict:
    """The whole analysis from Python: ``pv.regress("features.csv", labels="unet")``;
    options as :func:`plan_regression`."""
    return run_regression(plan_regression(table, **options))


def engineered_ahead(ranking, engineered=("α", "β"), top: int = 10) -> dict:
    """Where models with an engineered feature rank against raw-only ones: the best
    of each, and how many of the top models use α or β."""
    uses = ranking["features"].map(lambda f: any(s in f.split(" + ") for s in engineered))
    out = {"top": int(min(top, len(ranking))), "top_with_engineered": int(uses[:top].sum())}
    for key, sel in (("best_engineered", uses), ("best_raw", ~uses)):
        part = ranking[sel]
        out[key] = ({"features": part["features"].iloc[0], "rank": int(part["rank"].iloc[0]),
                     "loocv_r2": float(part["loocv_r2"].iloc[0]),
                     "loocv_rmse": float(part["loocv_rmse"].iloc[0])} if len(part) else None)
    return out


# --------------------------------------------------------------------------- output
def _fmt(v, spec=".3g") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table_rows(result: dict) -> list[dict]:
    """The Table-2 analog's rows: the top models by LOOCV RMSE, then the paper's named
    models not among them."""
    shown = {frozenset(r["features"]) for r in result["top"]}
    extra = [r for r in result["paper_models"].values() if frozenset(r["features"]) not in shown]
    return [*result["top"], *extra]


def markdown(result: dict) -> str:
    """The Table-2 analog as Markdown."""
    lines = ["| rank | model | features (standardised coefficient) | LOOCV RMSE | LOOCV R² | "
             "test RMSE | test R² | paper: LOOCV RMSE, R², test RMSE, R² |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table_rows(result):
        feats = ", ".join(f"{s} {c:+.3g}" for s, c in r["coefficients"].items())
        paper = ", ".join(_fmt(v) for v in r["paper"].values()) if r.get("paper") else ""
        lines.append(f"| {r['rank'] or '—'} | {r['model']} | {feats} | {_fmt(r['loocv_rmse'])} | "
                     f"{_fmt(r['loocv_r2'], '.3f')} | {_fmt(r['test_rmse'])} | {_fmt(r['test_r2'], '.3f')} "
                     f"| {paper} |")
    ph = result.get("physics")
    if ph:
        lines.append(f"| — | physics | σ = {ph['scale']:.4g} · σ_eff/σ_bulk (solver) | "
                     f"{_fmt(ph['loocv_rmse'])} | {_fmt(ph['loocv_r2'], '.3f')} | {_fmt(ph['test_rmse'])} "
                     f"| {_fmt(ph['test_r2'], '.3f')} | |")
    lines.append(f"\n{result['subsets']:,} models of {result['min_features']}–{result['max_features']} "
                 f"features; {len(result['train_ids'])} training samples (LOOCV), "
                 f"{len(result['test_ids'])} test samples ({', '.join(result['test_ids']) or 'none'}); "
                 f"target {result['target']}" + (f", labels/{result['labels']}" if result["labels"] else "")
                 + ". Coefficients are b1…bn on standardised features.")
    if result["dropped"]:
        lines.append(f"Left out (NaN): {'; '.join(result['dropped'])}.")
    by_paste = result["best"].get("loocv_r2_by_paste")
    if by_paste:
        lines.append("Best model's LOOCV R² per paste: "
                     + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in by_paste.items())
                     + " (paper: " + ", ".join(f"{k} {v}" for k, v in PAPER_GROUP_R2.items()) + ").")
    return "\n".join(lines)


def shap_summary(result: dict) -> list[str]:
    """The SHAP rankings as lines, beside the paper's."""
    lines = []
    for key, s in result["shap"].items():
        label = "best model" if key == "best" else f"model {key}"
        lines.append(f"{label} ({', '.join(s['features'])}): "
                     + " > ".join(f"{r['feature']} {r['mean_abs_shap']:.3g}" for r in s["ranking"]))
    lines.append("paper (model Q): " + " > ".join(result["paper_shap"]))
    return lines


def _write(plan: Plan, result: dict, ranking, explained) -> dict:
    """Write everything into a fresh folder, then swap it in for `plan.out`."""
    import pandas as pd

    from . import regress_figures

    out = check_output(plan.out, what="regression folder", fix="give another --out")
    partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        ranking.to_parquet(partial / "models.parquet", index=False)
        flat = []
        for r in table_rows(result):
            flat.append({"rank": r["rank"], "model": r["model"], "features": " + ".join(r["features"]),
                         "intercept": r["intercept"],
                         **{f"b[{s}]": c for s, c in r["coefficients"].items()},
                         **{k: r[k] for k in ("loocv_rmse", "loocv_r2", "test_rmse", "test_r2")},
                         **{f"paper_{k}": v for k, v in (r.get("paper") or {}).items()}})
        pd.DataFrame(flat).to_csv(partial / "table2.csv", index=False)
        (partial / "table2.md").write_text(markdown(result) + "\n\nSHAP (mean |SHAP|):\n\n"
                                           + "\n".join(f"- {s}" for s in shap_summary(result)) + "\n")
        files = {"table2_md": "table2.md", "table2_csv": "table2.csv", "table2_json": "table2.json",
                 "models": "models.parquet"}
        if plan.figures:
            figs = regress_figures.all_figures(result, explained, partial / "figures")
            files.update({k: str(Path("figures") / Path(v).name) for k, v in figs.items()})
        final = {k: str(out / v) for k, v in files.items()}
        (partial / "table2.json").write_text(json.dumps(finite({**result, "files": final}),
                                                        indent=1, allow_nan=False))
        record(partial, [p.name for p in partial.iterdir()])
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


__all__ = ["ALIASES", "InvalidTableError", "PAPER_MODELS", "PAPER_SHAP", "PAPER_TABLE2", "Plan",
           "SYMBOLS", "default_out", "describe", "engineered_ahead", "explain", "markdown", "physics",
           "plan_regression", "regress", "run_regression", "search", "shap_summary", "table_rows"]
