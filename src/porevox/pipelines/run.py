"""`porevox run STUDY.yaml`: every stage for every tomogram of a study, resumable,
with a report.

The study file (:mod:`.studyfile`) is validated before anything runs. The run is
a graph of steps (:mod:`porevox.engine.steps`) ordered by their data, not by a
fixed loop: each tomogram is ingested (where the study names a source, with its own
segmentations where it names them),
preprocessed and segmented (Otsu, the hybrid annotation) as soon as it can be;
the U-Nets train once the training tomograms' annotations exist, and each
tomogram is segmented by them, scored against its truth where it has one and
quantified; the study steps follow (Table 1, the feature table and its figures,
regression per label set, generation where the study asks for it). Steps of
different tomograms run at the same time and share the cluster.

Everything lands beside the study file: the volumes' arrays and provenance, the
tables and figures of each stage, and ``run/``: the done markers
(``run/done/``), ``run.json`` (versions, parameters, cluster, every step's time),
one Dask performance report per run (``run/dask-performance-*.html``) and
``report.html`` beside the study file. A run killed at any moment and started
again redoes only the steps that had not finished; a finished step's outputs are
published before its marker is written.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from .._version import __version__
from ..engine import open_volume
from ..engine.cluster import active_client, cluster_workers, in_task, trains_on_workers
from ..engine.provenance import versions, write_json
from ..engine.steps import Step, StepRecord, run_steps
from ..engine.storage import remove_partial_writes
from ..errors import StudyFileError
from .studyfile import Study, claim_outputs, load_study

logger = logging.getLogger(__name__)

#: Label images each segmenting step makes, by step stage.
PRODUCERS = {"otsu": "segment-otsu", "hybrid": "segment-hybrid", "unet": "segment-unet",
             "unet_cta": "segment-unet_cta"}
RUN_DIR = "run"


def _on(stages: dict, name: str) -> bool:
    return stages.get(name) is not None


# --------------------------------------------------------------------------- step bodies
# Each runs in a thread of this process and returns a small JSON-able summary.
def _ingest(sample, study: Study) -> dict:
    from .volumes import ingest_volume, plan_ingest

    plan = plan_ingest(sample.source, sample.path, sample.voxel_size, unit=study.unit,
                       sample={"id": sample.id, **sample.meta}, box=sample.box)
    summary = ingest_volume(plan)
    return {"ingested": summary["ingested"], "shape": summary.get("shape")}


def _ingest_labels(sample, study: Study, name: str, source: Path, names: dict, new: bool) -> dict:
    from .volumes import ingest_labels, plan_label_ingest

    plan = plan_label_ingest(source, sample.path, name, phase_names=names, box=sample.box, new=new,
                             voxel_size=sample.voxel_size if new else None, unit=study.unit,
                             sample={"id": sample.id, **sample.meta})
    r = ingest_labels(plan)
    return {"ingested": r["ingested"], "phases": r["phases"]}


def _preprocess(path: Path, params: dict) -> dict:
    from .preprocess import preprocess

    result = preprocess(path, **params)
    return {"skipped": result.skipped}


def _segment(path: Path, method: str, name: str | None = None, model: Path | None = None) -> dict:
    from .segment import segment_volume

    segment_volume(path, method, name=name, model=model)
    return {"labels": name or method}


def _train(paths: list[Path], out: Path, labels: str, params: dict, on_worker: bool = False) -> dict:
    """Train a U-Net in this process on every core, or (`on_worker`) on as many
    threads as a worker has: as a task on a worker where the cluster has room for it
    (:func:`~porevox.engine.cluster.trains_on_workers`), else here. The weights depend
    on the thread count, which is thus the same wherever it trains (a worker killed
    meanwhile leaves the cluster one short for a moment)."""
    kwargs = {"labels": labels, "every": params["every"], "epochs": params["epochs"],
              "patience": params["patience"], "seed": params["seed"], "progress": False}
    from .train import train_unet_volumes

    workers = cluster_workers() if on_worker else {}
    threads = min((w["nthreads"] for w in workers.values()), default=os.cpu_count())
    if trains_on_workers(workers):
        r = active_client().submit(in_task, train_unet_volumes, paths, out, threads=threads, pure=False,
                                   **kwargs).result()
    else:
        r = train_unet_volumes(paths, out, threads=threads, **kwargs)
    return {k: r[k] for k in ("model", "slices", "epochs_run", "best_epoch", "val_accuracy", "seconds")}


def _score(path: Path, methods: list[tuple[str, str]], truth: str) -> dict:
    from .score import score_volume

    return {row: score_volume(path, labels=labels, truth=truth) for row, labels in methods}


def _table1(folder: Path, inputs: dict) -> dict:
    """Table 1 from the score steps' results."""
    from .segmentation_study import summarize, write_tables

    per_sample = [{"id": key.split("/", 1)[1], **scores} for key, scores in inputs.items()]
    result = {"table": summarize(per_sample), "samples": per_sample}
    write_tables(folder, result)
    return {"samples": len(per_sample), "table": result["table"]}


def _quantify(path: Path, labels: str, axis: str, with_conductivity: bool, phases=None) -> dict:
    from .quantify import quantify_phases

    keep = ("phase", "relative_density", "relative_conductivity", "tortuosity_factor")
    rs = quantify_phases(path, labels=labels, phases=phases, axis=axis, with_conductivity=with_conductivity)
    out = [{k: r[k] for k in keep if k in r} for r in rs]
    return out[0] if phases is None else {"phases": out}


def _features(study_path: Path, labels: list[str], axis: str, phases=None) -> dict:
    from .feature_study import quantify_study

    r = quantify_study(study_path, labels=labels, phase=phases, axis=axis)
    return {"csv": r["csv"], "figures": r["figures"]}


def _regress(features_csv: Path, labels: str, target: str) -> dict:
    import pandas as pd

    from .regress import regress

    table = pd.read_csv(features_csv)
    rows = table[table["labels"].astype(str) == labels] if "labels" in table.columns else table
    phase = None
    if "phase" in rows.columns and rows["phase"].astype(str).nunique() > 1:
        phase = str(rows["phase"].iloc[0])       # the study's first phase
        logger.info("regress: labels/%s has features of %d phases; regressing phase %s", labels,
                    rows["phase"].nunique(), phase)
    r = regress(features_csv, labels=labels, phase=phase, target=target, drop_nan=True, out="auto")
    best = r.get("best", {})
    return {"best": {k: best.get(k) for k in ("features", "loocv_r2", "test_r2")},
            "files": r.get("files", {})}


def _generate(study_path: Path, params: dict) -> dict:
    from .generation_study import generation_stage

    r = generation_stage(study_path, kinds=params["kinds"], minutes=params["minutes"],
                         steps=params["steps"], n=params["n"], seed=params["seed"],
                         targets=params["design"])
    keep = ("target", "predicted", "error", "relative_error", "flag")
    return {"training": {k: {"steps": t.get("steps"), "seconds": t.get("seconds")}
                         for k, t in r["training"].items()},
            "table3": r["evaluation"].get("table3"),
            "design": [{k: t.get(k) for k in keep} for t in (r["design"] or {}).get("targets", [])]}


# --------------------------------------------------------------------------- the graph
def plan_steps(study: Study) -> list[Step]:
    """The steps of a run over `study` (see the module)."""
    st = study.stages
    steps: list[Step] = []
    produced: dict[str, dict[str, str]] = {s.id: {} for s in study.samples}   # id -> label -> step key
    has: dict[str, set[str]] = {}
    last: dict[str, list[str]] = {}
    for s in study.samples:
        has[s.id] = set(open_volume(s.path, mode="r").labels) if s.path.exists() and not s.source else set()
        deps: list[str] = []
        if s.source is not None:
            steps.append(Step("ingest", s.id, partial(_ingest, s, study), (),
                              {"source": str(s.source), "box": s.box, "voxel_size": s.voxel_size}))
            deps = [f"ingest/{s.id}"]
        new = s.source is None and not s.path.exists()     # a volume of label images only
        for i, (name, source, names) in enumerate(s.labels):
            steps.append(Step(f"labels-{name}", s.id,
                              partial(_ingest_labels, s, study, name, source, names, new and i == 0), deps,
                              {"source": str(source), "phase_names": {str(k): v for k, v in names.items()},
                               "box": s.box}))
            produced[s.id][name] = f"labels-{name}/{s.id}"
            if new:
                deps = [f"labels-{name}/{s.id}"]    # the first creates the volume
        if _on(st, "preprocess"):
            steps.append(Step("preprocess", s.id, partial(_preprocess, s.path, dict(st["preprocess"])),
                              deps, dict(st["preprocess"])))
            deps = [f"preprocess/{s.id}"]
        last[s.id] = deps
        if _on(st, "segment"):
            for m in st["segment"]["methods"]:
                steps.append(Step(f"segment-{m}", s.id, partial(_segment, s.path, m), deps, {"method": m}))
                produced[s.id][m] = f"segment-{m}/{s.id}"
                if m == "hybrid":
                    produced[s.id]["hybrid_annotation"] = f"segment-hybrid/{s.id}"

    models = study.folder / "models"
    if _on(st, "unet"):
        p = dict(st["unet"])
        train = [s for s in study.samples if not s.held_out]
        if not train:
            raise StudyFileError(f"{study.path}: stages.unet: every sample is held_out; the U-Net "
                                 "needs training samples: mark some held_out: false")
        nets = [("unet", "unet-hybrid", "hybrid_annotation")]
        if p.get("cta", True):
            nets.append(("unet_cta", "unet-cta", "otsu"))
        first: list[str] = []
        for k, (name, model, labels) in enumerate(nets):
            out = models / f"{model}.pt"
            deps = [produced[s.id][labels] for s in train if labels in produced[s.id]]
            # The U-Net Hybrid trains in this process on every core: the features,
            # regression and generation wait on it. Table 1 alone waits on the U-Net
            # CTA: it trains as a task on a worker where the cluster has room (see
            # _train), beside it — torch on two threads keeps two cores ~70 % busy, the
            # worker's thread takes up the rest — from when the first network's inputs
            # are there too (the hybrid segmentations need both workers before).
            first = first or deps
            steps.append(Step(f"train-{model}", None,
                              partial(_train, [s.path for s in train], out, labels, p, bool(k)),
                              sorted(set(deps + first)) if k else deps,
                              {**p, "labels": labels, "train": [s.id for s in train]},
                              exclusive=not k))
            for s in study.samples:
                steps.append(Step(f"segment-{name}", s.id, partial(_segment, s.path, "unet", name, out),
                                  [f"train-{model}", *last[s.id]], {"model": model}))
                produced[s.id][name] = f"segment-{name}/{s.id}"

    if _on(st, "score"):
        truth = st["score"]["truth"]
        from .segmentation_study import ROWS

        scored = [s for s in study.samples if truth in has[s.id] or truth in produced[s.id]]
        methods = [(row, labels) for row, labels in ROWS
                   if scored and all(labels in produced[s.id] or labels in has[s.id] for s in scored)]
        if scored and methods:
            for s in scored:
                deps = [produced[s.id][lab] for _, lab in methods if lab in produced[s.id]]
                steps.append(Step("score", s.id, partial(_score, s.path, methods, truth), deps,
                                  {"truth": truth, "methods": methods}))
            steps.append(Step("table1", None, partial(_table1, study.folder),
                              [f"score/{s.id}" for s in scored], {"truth": truth}, exclusive=True,
                              uses_inputs=True))
        else:
            logger.info("run: no sample has labels/%s; nothing to score", truth)

    quantified: list[str] = []
    if _on(st, "quantify"):
        q = st["quantify"]
        for labels in q["labels"]:
            where = [s for s in study.samples if labels in produced[s.id] or labels in has[s.id]]
            if len(where) < len(study.samples):
                logger.info("run: labels/%s exists in %d of %d samples; %s", labels, len(where),
                            len(study.samples), "not quantified" if not where else
                            "quantified where it exists, left out of the feature table")
            for s in where:
                dep = [produced[s.id][labels]] if labels in produced[s.id] else last[s.id]
                phase = {"phase": q["phase"]} if q["phase"] is not None else {}
                body = partial(_quantify, s.path, labels, q["axis"], q["conductivity"], q["phase"])
                steps.append(Step(f"quantify-{labels}", s.id, body, dep,
                                  {"axis": q["axis"], "conductivity": q["conductivity"], **phase}))
            if len(where) == len(study.samples):
                quantified.append(labels)
        if quantified:
            phase = {"phase": q["phase"]} if q["phase"] is not None else {}
            steps.append(Step("features", None,
                              partial(_features, study.path, quantified, q["axis"], q["phase"]),
                              [f"quantify-{lab}/{s.id}" for lab in quantified for s in study.samples],
                              {"labels": quantified, "axis": q["axis"], **phase}, exclusive=True))

    if _on(st, "regress") and quantified:
        r = st["regress"]
        for labels in r["labels"]:
            if labels not in quantified:
                logger.info("run: labels/%s not in the feature table; not regressed", labels)
                continue
            steps.append(Step(f"regress-{labels}", None,
                              partial(_regress, study.folder / "features.csv", labels, r["target"]),
                              ["features"], {"target": r["target"]}, exclusive=True))

    if _on(st, "generate"):
        g = dict(st["generate"])
        labels = "unet"
        if not all(labels in produced[s.id] or labels in has[s.id] for s in study.samples):
            raise StudyFileError(f"{study.path}: stages.generate: trains on labels/unet, which the "
                                 "run does not make; enable the unet stage")
        deps = [produced[s.id][labels] for s in study.samples if labels in produced[s.id]]
        if g["design"] and "features" not in {s.key for s in steps}:
            raise StudyFileError(f"{study.path}: stages.generate.design: inverse design needs the "
                                 "feature table; enable the quantify stage or set design: []")
        deps += ["features"] if g["design"] else []
        steps.append(Step("generate", None, partial(_generate, study.path, g), deps, g, exclusive=True))
    return steps


# --------------------------------------------------------------------------- progress
class Display:
    """Progress of a run on stderr: a bar per stage (rich) where stderr is a
    terminal, else one log line per finished step."""

    def __init__(self, steps: list[Step], live: bool):
        self.total: dict[str, int] = {}
        for s in steps:
            self.total[s.stage] = self.total.get(s.stage, 0) + 1
        self.count = 0
        self.n = len(steps)
        self.progress = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=False)
            self.tasks = {stage: self.progress.add_task(stage, total=n) for stage, n in self.total.items()}

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, kind: str, step: Step, record: StepRecord | None) -> None:
        if kind == "start":
            logger.debug("run: %s started", step.key)
            return
        self.count += 1
        if self.progress is not None:
            self.progress.advance(self.tasks[step.stage])
        how = "done before" if kind == "skipped" else f"{record.seconds:.1f} s"
        logger.info("run [%d/%d] %s: %s", self.count, self.n, step.key, how)


# --------------------------------------------------------------------------- the run
def _cluster_info(client) -> dict | None:
    if client is None:
        return None
    workers = client.scheduler_info()["workers"].values()
    limits = [w.get("memory_limit") or 0 for w in workers]
    return {"scheduler": client.scheduler.address, "dashboard": client.dashboard_link,
            "workers": len(limits), "threads": sum(w.get("nthreads", 1) for w in workers),
            "memory_limit": min(limits) if limits else None}


def _conductivity_table(folder: Path, records: list[StepRecord]) -> Path | None:
    """``conductivity.csv``: one row per tomogram, labels and phase solved; none (and
    an earlier run's removed) where this study solves none."""
    rows = [{"id": r.tomogram, "labels": r.stage.removeprefix("quantify-"), **part}
            for r in records if r.stage.startswith("quantify-") and r.result
            for part in r.result.get("phases", [r.result]) if "relative_conductivity" in part]
    path = folder / "conductivity.csv"
    if not rows:
        path.unlink(missing_ok=True)     # claimed by the run: porevox's own
        return None
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def run_study(study: str | os.PathLike, *, parallel: int | None = None, progress: bool = False,
              report: bool = True) -> dict:
    """Run every stage of `study` (a ``study.yaml`` or its folder) on the active
    cluster; return the run record (also ``run/run.json``)."""
    import dask
    from distributed import performance_report

    study = load_study(study)
    claim_outputs(study)
    for sample in study.samples:   # before any step writes: what a killed run half-wrote
        if sample.path.is_dir():
            remove_partial_writes(sample.path)
    steps = plan_steps(study)
    rundir = study.folder / RUN_DIR
    rundir.mkdir(parents=True, exist_ok=True)
    client = active_client()
    cluster = _cluster_info(client)
    if parallel is None:   # enough steps in flight to keep every worker thread busy
        parallel = min(8, max(2, 2 * (cluster["threads"] if cluster else (os.cpu_count() or 1))))
    started = time.time()
    stamp = datetime.fromtimestamp(started, tz=UTC).strftime("%Y%m%dT%H%M%S")
    perf = rundir / f"dask-performance-{stamp}.html"
    logger.info("run: %s, %d tomograms, %d steps, %d at a time", study.path, len(study.samples),
                len(steps), parallel)
    if cluster:
        logger.info("run: Dask dashboard %s", cluster["dashboard"])
    reporting = performance_report(filename=str(perf)) if client is not None else contextlib.nullcontext()
    pinned = {"porevox.progress": False, "porevox.threads": cluster["threads"] if cluster else None}
    with dask.config.set(pinned), reporting, \
            Display(steps, progress and sys.stderr.isatty()) as display:
        records = run_steps(steps, rundir / "done", parallel=parallel, on_event=display)
    finished = time.time()
    conductivity = _conductivity_table(study.folder, records)
    reports = sorted(str(p.relative_to(study.folder)) for p in rundir.glob("dask-performance-*.html"))
    record = {"study": str(study.path), "name": study.name, "tomograms": len(study.samples),
              "started": datetime.fromtimestamp(started, tz=UTC).isoformat(timespec="seconds"),
              "finished": datetime.fromtimestamp(finished, tz=UTC).isoformat(timespec="seconds"),
              "seconds": round(finished - started, 1), "porevox_version": __version__,
              "versions": versions(), "cluster": cluster, "parallel": parallel,
              "stages": study.stages, "steps": [r.as_dict() for r in records],
              "ran": sum(r.status == "done" for r in records),
              "skipped": sum(r.status == "skipped" for r in records),
              "results": {r.key: r.result for r in records if r.result is not None},
              "performance_reports": reports,
              "conductivity_csv": str(conductivity) if conductivity else None}
    write_json(rundir / "run.json", record)
    if report and _on(study.stages, "report"):
        from .report import write_report

        record["report"] = str(write_report(study.folder, run=record))
    logger.info("run: %d steps ran, %d were done before, %.0f s", record["ran"], record["skipped"],
                record["seconds"])
    return record


__all__ = ["plan_steps", "run_study"]
