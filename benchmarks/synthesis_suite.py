"""Suite ``synthesis``: digital-twin throughput, 1 vs 2 workers.

One twin sample (HPA at 250 °C: particles, calibrated density, FIB-SEM image,
truth and annotation) of 96 x 256 x 256 voxels (quick: 48 x 128 x 128), rendered
block by block by ``porevox.pipelines.synth.sample_arrays`` on a fresh LocalCluster
of 1 and of 2 workers (1 thread each), against the plain serial call
``render_box`` on the whole volume in one process. Particle generation and the
density / threshold calibration run once, outside the timings, and are reported.
"""

from __future__ import annotations

import time

import numpy as np

from .harness import best, graph_size, isolated, local_cluster, log, peak, row, worker_peaks

SPEC = ("HPA", 250)


def _prepared(shape):
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel

    model = FibSemModel()
    t0 = time.perf_counter()
    ms, threshold = prepare(SampleSpec(*SPEC, 0, "demo", 0), model, shape)
    return model, ms, threshold, time.perf_counter() - t0


def porevox_synthesis(shape, n_workers: int, repeat: int) -> dict:
    from porevox.pipelines.synth import sample_arrays

    model, ms, threshold, prep_s = _prepared(shape)
    with local_cluster(n_workers, "4GB") as client:
        sample_arrays(ms, model, 1, threshold, chunks=(16, 32, 32))[:, :16, :32, :32].compute()
        times, graph_times, out = [], [], None
        for _ in range(repeat):
            del out
            t0 = time.perf_counter()
            arr = sample_arrays(ms, model, 1, threshold, chunks=(48, 128, 128))
            n_tasks = graph_size(arr)
            t1 = time.perf_counter()
            out = arr.compute()
            times.append(time.perf_counter() - t0)
            graph_times.append(t1 - t0)
            log(f"    porevox synthesis, {n_workers} worker(s): {times[-1]:.2f} s")
        workers = worker_peaks(client)
    return {"time_s": best(times), "times_s": times, "graph_s": best(graph_times),
            "compute_s": best(times) - best(graph_times), "peak": peak(), "workers": workers,
            "n_tasks": n_tasks, "prepare_s": prep_s, "checksum": int(out.astype(np.int64).sum())}


def reference_synthesis(shape, repeat: int) -> dict:
    from porevox.synthetic.fibsem import render_box

    model, ms, threshold, prep_s = _prepared(shape)
    render_box(ms, model, 1, (slice(0, 16), slice(0, 32), slice(0, 32)), threshold)   # JIT
    times, out = [], None
    for _ in range(repeat):
        del out
        t0 = time.perf_counter()
        out = render_box(ms, model, 1, tuple(slice(0, n) for n in shape), threshold)
        times.append(time.perf_counter() - t0)
    return {"time_s": best(times), "times_s": times, "peak": peak(), "prepare_s": prep_s,
            "checksum": int(out.astype(np.int64).sum())}


def run(cfg) -> list[dict]:
    shape = cfg.pick((96, 256, 256), (48, 128, 128))
    log(f"  twin sample {SPEC[0]} {SPEC[1]} °C, {shape}: reference (one process, whole volume)")
    ref = isolated(reference_synthesis, shape, cfg.repeat, timeout=cfg.timeout)
    rows = []
    for n in (1, 2):
        pv = isolated(porevox_synthesis, shape, n, cfg.repeat, timeout=cfg.timeout)
        same = pv.get("checksum") == ref.get("checksum")
        rows.append(row(
            "synthesis", f"twin sample, {n} worker{'s' if n > 1 else ''}", shape=shape,
            dtype="uint8", pv=pv, ref=ref,
            reference="render_box on the whole volume, one process",
            check=f"same voxels as the whole-volume render: {str(same).lower()}",
            notes=(f"{pv.get('n_tasks')} tasks of 48x128x128; particles + calibration "
                   f"{pv.get('prepare_s', 0):.2f} s once, not timed; 3 outputs per voxel "
                   "(image, truth, annotation)")))
    return rows
