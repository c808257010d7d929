"""Suite ``regression``: the exhaustive MVLR search of ``porevox regress``.

porevox's batched evaluation (one stacked SVD per batch of subsets, LOOCV by the
PRESS identity) against the plain scikit-learn code a user would write: for every
subset, ``cross_val_predict(make_pipeline(StandardScaler(), LinearRegression()),
X, y, cv=LeaveOneOut())`` plus a fit on all training samples to predict the test
samples. Cases:

* ``paper``: the paper's problem, 18 training and 3 test samples, the eight features,
  every subset of 2–8 (247 models); both sides do all of it.
* ``wide``: 40 samples, 16 features, subsets of 2–4 (2 500 models); the reference
  runs a random 250 of them and its time is scaled to all (noted).
* ``cluster``: 18 samples, 24 features, subsets of 2–5 (55 430 models, above the
  parallel threshold) on a 2-worker LocalCluster, against porevox in one process and
  the reference scaled from 250 subsets.

The "voxels" columns count models (subsets): models/s. LOOCV RMSE must agree to
1e-8 relative on every subset the reference ran.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .harness import best, isolated, local_cluster, log, peak, row, worker_peaks


def _table(n: int, p: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_test, p)) * rng.uniform(0.01, 100, p)
    y = x[:, :3] @ rng.normal(size=3) + rng.normal(size=n + n_test)
    return x[:n], y[:n], x[n:], y[n:]


def _plan(n, p, n_test, kmin, kmax):
    import pandas as pd

    from porevox.pipelines.regress import plan_regression

    x, y, xt, yt = _table(n, p, n_test)
    frame = pd.DataFrame(np.r_[x, xt], columns=[f"f{i}" for i in range(p)])
    frame["y"] = np.r_[y, yt]
    frame["id"] = [f"s{i}" for i in range(n + n_test)]
    return plan_regression(frame, target="y", features=[f"f{i}" for i in range(p)],
                           test_samples=[f"s{i}" for i in range(n, n + n_test)],
                           min_features=kmin, max_features=kmax)


def porevox_search(n, p, n_test, kmin, kmax, repeat, workers=0) -> dict:
    import contextlib

    from porevox.pipelines import regress as rg

    plan = _plan(n, p, n_test, kmin, kmax)
    ctx = local_cluster(workers, "2GB") if workers else contextlib.nullcontext()
    with ctx as client:
        if not workers:
            rg.PARALLEL_MIN = 10**12          # in this process, whatever the count
        rg.search(_plan(10, 4, 2, 2, 3))      # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ranking = rg.search(plan)
            times.append(time.perf_counter() - t0)
        peaks = worker_peaks(client) if client is not None else []
    return {"time_s": best(times), "times_s": times, "peak": peak(), "workers": peaks,
            "models": len(ranking), "rmse": dict(zip(ranking["features"], ranking["loocv_rmse"]))}


def reference_search(n, p, n_test, kmin, kmax, sample: int | None, repeat) -> dict:
    import itertools

    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, xt, yt = _table(n, p, n_test)
    subsets = [c for k in range(kmin, kmax + 1) for c in itertools.combinations(range(p), k)]
    if sample is not None and sample < len(subsets):
        pick = np.random.default_rng(1).choice(len(subsets), sample, replace=False)
        subsets = [subsets[i] for i in sorted(pick)]
    names = [" + ".join(f"f{i}" for i in c) for c in subsets]
    times = []
    for _ in range(repeat):
        rmse = {}
        t0 = time.perf_counter()
        for name, c in zip(names, subsets):
            model = make_pipeline(StandardScaler(), LinearRegression())
            loo = cross_val_predict(model, x[:, c], y, cv=LeaveOneOut())
            pred = model.fit(x[:, c], y).predict(xt[:, c])
            rmse[name] = math.sqrt(mean_squared_error(y, loo))
            r2_score(y, loo), mean_squared_error(yt, pred), r2_score(yt, pred)
        times.append(time.perf_counter() - t0)
    return {"time_s": best(times), "times_s": times, "peak": peak(), "rmse": rmse, "ran": len(subsets)}


def run(cfg) -> list[dict]:
    cases = [  # name, n, p, n_test, kmin, kmax, reference sample, porevox workers
        ("paper", 18, 8, 3, 2, 8, None, 0),
        ("wide", 40, 16, 3, 2, 4, cfg.pick(250, 50), 0),
        ("cluster", 18, cfg.pick(24, 20), 3, 2, cfg.pick(5, 4), cfg.pick(250, 50), 2),
    ]
    rows = []
    for name, n, p, n_test, kmin, kmax, sample, workers in cases:
        total = sum(math.comb(p, k) for k in range(kmin, kmax + 1))
        log(f"  regression {name}: {total} models of {kmin}-{kmax} of {p} features, {n} samples")
        pv = isolated(porevox_search, n, p, n_test, kmin, kmax, cfg.repeat, workers, timeout=cfg.timeout)
        ref = isolated(reference_search, n, p, n_test, kmin, kmax, sample, 1 if sample else cfg.repeat,
                       timeout=cfg.timeout)
        notes = f"{n} training + {n_test} test samples; {total} models"
        if ref.get("ran") and ref["ran"] < total:
            measured = ref["time_s"]
            ref["time_s"] = measured * total / ref["ran"]
            notes += f"; reference ran {ref['ran']} random models in {measured:.3g} s, scaled to all"
        if workers:
            one = isolated(porevox_search, n, p, n_test, kmin, kmax, cfg.repeat, 0, timeout=cfg.timeout)
            notes += (f"; {workers}-worker LocalCluster (1 thread each); porevox in one process: "
                      f"{one.get('time_s', float('nan')):.3g} s")
        worst = None
        if pv.get("rmse") and ref.get("rmse"):
            worst = max(abs(pv["rmse"][k] - v) / v for k, v in ref["rmse"].items())
        rows.append(row("regression", f"MVLR search {name}", shape=(total,), dtype="float64", pv=pv,
                        ref=ref, reference="scikit-learn: cross_val_predict(StandardScaler + "
                                           "LinearRegression, LeaveOneOut()) + fit/predict per subset",
                        check=f"LOOCV RMSE max rel diff {worst:.1e}" if worst is not None else "",
                        equal=bool(worst is not None and worst < 1e-8), notes=notes))
    return rows
