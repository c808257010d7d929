"""Suite ``study`` (runs only when named): many tomograms through ``porevox run``.

A twin study of 12 tomograms of 96 x 256 x 256 (all three pastes; quick: 6 of
48 x 128 x 128) goes through preprocess, Otsu and hybrid segmentation, scoring against the truth and
quantification of the truth (every feature), on a LocalCluster of 1 worker x 1
thread and of 2 workers x 1 thread (2 GB each), each from a fresh copy of the
study. The ratio is the study's throughput on two workers against one (the target
on two cores: >= 1.7). The task stream (what the dashboard's task-stream panel
shows) gives the fraction of the run's wall time x worker threads during which a
task was computing: the busy fraction.
"""

from __future__ import annotations

import shutil
import time

import yaml

from .harness import isolated, log, peak, row, worker_peaks

STAGES = {"unet": False, "regress": False, "report": False,
          "quantify": {"labels": ["truth"]}}


def make_study(folder: str, n: int, shape: tuple[int, int, int]) -> dict:
    """`n` twin tomograms of `shape` (pastes and temperatures in turn), rendered
    block by block on a cluster, and their study.yaml."""
    import dask.array as da

    from porevox.engine.cluster import cluster, compute
    from porevox.engine.storage import LABELS, create_volume, dense_array
    from porevox.pipelines.synth import PRESETS, SampleSpec, _seed, prepare, sample_arrays
    from porevox.synthetic.fibsem import FibSemModel
    from porevox.synthetic.microstructure import PASTES, TEMPERATURES

    model, rows = FibSemModel(), []
    specs = [SampleSpec(PASTES[i % 3], TEMPERATURES[(i // 3) % 6], i // 18, "demo", 0) for i in range(n)]
    with cluster(n_workers=2, threads_per_worker=1, memory_limit="2GB", dashboard_address="127.0.0.1:0"):
        for spec in specs:
            ms, threshold = prepare(spec, model, shape=shape)
            data = sample_arrays(ms, model, _seed(spec), threshold, "uint8")
            chunks = tuple(c[0] for c in data.chunks[1:])
            vol = create_volume(f"{folder}/{spec.id}.zarr", shape, "uint8", PRESETS["demo"].voxel_size,
                                chunks=chunks)
            truth = dense_array(vol.group, f"{LABELS}/truth", shape=shape, dtype="uint8", chunks=chunks)
            compute(da.store([data[2], data[0].astype("uint8")], [vol.image, truth], lock=False,
                             compute=False))
            rows.append({"id": spec.id, "path": f"{spec.id}.zarr", "paste": spec.paste,
                         "temperature_c": spec.temperature_c, "voi": spec.voi})
    with open(f"{folder}/study.yaml", "w") as f:
        yaml.safe_dump({"name": "study benchmark", "samples": rows, "stages": STAGES}, f, sort_keys=False)
    return {"samples": n, "shape": list(shape)}


def run_study_on(folder: str, n_workers: int) -> dict:
    from distributed import get_task_stream

    from porevox.engine.cluster import cluster
    from porevox.pipelines.run import run_study

    floor = peak()["ru_maxrss_mib"]
    with cluster(n_workers=n_workers, threads_per_worker=1, memory_limit="2GB",
                 dashboard_address="127.0.0.1:0") as client:
        t0 = time.perf_counter()
        with get_task_stream(client) as ts:
            record = run_study(folder)
        seconds = time.perf_counter() - t0
        busy = sum(max(0.0, s["stop"] - s["start"]) for t in ts.data for s in t["startstops"]
                   if s["action"] == "compute")
        workers = worker_peaks(client)
    return {"time_s": seconds, "times_s": [seconds], "peak": peak(), "floor_mib": floor,
            "workers": workers, "busy_fraction": busy / (seconds * n_workers),
            "tasks": len(ts.data), "steps": len(record["steps"]), "ran": record["ran"]}


def run(cfg) -> list[dict]:
    n, shape = cfg.pick((12, (96, 256, 256)), (6, (48, 128, 128)))
    rows = []
    with cfg.scratch("study") as tmp:
        made = isolated(make_study, str(tmp / "base"), n, shape, timeout=1800)
        if made.get("error"):
            raise RuntimeError(f"making the study failed: {made['error']}")
        shape = (made["samples"] * made["shape"][0], *made["shape"][1:])
        sides = {}
        for workers in (1, 2):
            folder = tmp / f"run{workers}"
            shutil.copytree(tmp / "base", folder)
            log(f"  porevox run: {made['samples']} tomograms on {workers} worker(s) x 1 thread")
            sides[workers] = isolated(run_study_on, str(folder), workers, timeout=3600)
            shutil.rmtree(folder, ignore_errors=True)
        one, two = sides[1], sides[2]
        notes = (f"{made['samples']} tomograms of {tuple(made['shape'])}, {two.get('steps')} steps: "
                 "preprocess, segment otsu + hybrid, score, quantify truth; busy fraction "
                 f"(task stream) {one.get('busy_fraction', 0):.2f} on 1 worker, "
                 f"{two.get('busy_fraction', 0):.2f} on 2; ratio = time on 1 worker / time on 2")
        rows.append(row("study", "porevox run, 2 workers vs 1", shape=shape, dtype="uint8", pv=two, ref=one,
                        reference="the same run on 1 worker x 1 thread", notes=notes,
                        busy_fraction_1=one.get("busy_fraction"), busy_fraction_2=two.get("busy_fraction"),
                        tomograms=made["samples"]))
    return rows
