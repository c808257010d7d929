"""Suite ``outofcore`` (runs only when named): segment + quantify of a twin volume
whose float32 working set is at least four times the memory of all the workers.

The claim measured (DESIGN.md, Scale: "memory per worker is bounded by chunk size,
not volume size"): a volume of N voxels, ``4 N`` bytes as float32, goes through
``segment_volume(path, "otsu")``, ``segment_volume(path, "hybrid")`` and
``quantify_volume(path, labels="hybrid")`` on a LocalCluster of 2 workers x 1 thread
x M memory limit with ``4 N >= 4 x 2 M`` — with no worker killed or restarted for
memory. There is no reference implementation to ratio against: the reference is the
memory limit, and every stage reports its peak per worker over that limit.

Sizes (defaults; see "Choices" below for why):

* workers: 2 x 1 thread x **512 MiB** (``$POREVOX_BENCH_OOC_MEMORY``, e.g. ``1GiB``);
* volume: **1024 x 1024 x 1024 uint8** (1 GiB on disk before compression; float32
  working set 4 GiB = 4.0 x the workers' 1 GiB). By default the depth is the
  smallest multiple of the slab (below) with voxels >= total worker memory in
  bytes, i.e. float32 working set >= 4 x; ``$POREVOX_BENCH_OOC_SHAPE`` (``ZxYxX``)
  overrides it. Quick (``--quick``): 2 x 512 MiB and 64 x 512 x 512 (a smoke test:
  its ratio is far below 4);
* features quantified: ``density, surface, slices, curvature`` — the local and
  halo passes (``$POREVOX_BENCH_OOC_FEATURES``: a comma list, or ``all``);
* segmentations: ``otsu,hybrid`` (``$POREVOX_BENCH_OOC_METHODS``); quantify reads the
  last one's labels (``$POREVOX_BENCH_OOC_LABELS`` overrides).

The volume. A digital twin (HPA paste, 250 °C, the demo voxel size) rendered block
by block on the same cluster and written as a porevox volume (``image`` and
``labels/truth``) with the chunks porevox's ingest gives a volume of this shape on
these workers (``choose_chunks(shape, uint8, chunk_bytes_budget())``); no process
ever holds it whole. ``porevox.pipelines.synth.sample_arrays`` cannot make it at
this size: it passes the sample's whole particle list to every block (one Dask key
that every worker holds), and the list grows with the volume — about 0.7 M
particles (21 MB pickled) for 32 x 1024 x 1024 voxels, so about 23 M (0.7 GB) for
1024^3, more than a 512 MiB worker holds, and every block filters all of it (an
(N, 3) float64 temporary per comparison); its preparation (``prepare``: particle
placement, density calibration, image threshold) also took 43 s for the 32-slice
slab on this machine. So the suite prepares **one slab** of ``SLAB`` = 32 slices x
the full plane and tiles it along z, every other slab mirrored in z (the structure
is continuous across slab faces: reflection-periodic with period 64 slices) and
each slab with its own noise seed (``render_box(..., seed + k)``); the render
blocks (``choose_chunks(slab, float64, chunk_bytes_budget() // 4)``, as
``sample_arrays`` sizes them) are rechunked to the storage chunks before the write.

Measured per stage (render; segment otsu; segment hybrid; quantify) — the first is
the set-up, reported for completeness:

* wall seconds (one run: this suite runs each stage once) and voxels/s;
* peak memory per worker: the kernel's ``VmHWM`` of each worker process, reset at
  the stage's start (``/proc/self/clear_refs``), so it is that stage's own peak;
  the RSS sampled every 0.5 s by ``psutil`` from the driver (the max kept); Dask's
  own view (the scheduler's ``WorkerState.memory``: process, managed, spilled;
  max over the samples); and the lifetime ``ru_maxrss`` at the stage's end;
* peak / limit (the reference of this suite);
* workers killed or restarted: the worker pids seen per worker name over the
  stage (a nanny restart gives a new pid and address), the scheduler's worker set
  before and after, ``KilledWorker`` or other errors of the stage, and the
  worker/nanny log lines about memory (pauses, "exceeded ... budget", restarts,
  spills: ``harness.worker_memory_events``), new in the stage;
* spill to disk: bytes the workers' spill buffers wrote in the stage
  (``SpillBuffer.cumulative_metrics["disk-write", "bytes"]``) and the largest
  number of bytes held on disk at a sample;
* the driver's peak (``ru_maxrss``, lifetime) — quantify merges the per-block
  results there;
* checks: each segmentation's voxel agreement with the twin's truth, and the
  quantified values (untimed, after the stage's peaks are taken).

Global operators. ``quantify_volume`` decides per operator whether the whole volume
fits one task (``_fits_one_task``: need <= 60 % of a worker's memory limit). At
this size nothing global fits: tortuosity would run the block-decomposed fast
marching (:class:`porevox.pipelines.tortuosity.BlockSolver`: blocks of ~2.3 M voxels
at 512 MiB, iterated to convergence, two float64 scratch arrays per direction on
disk, 16 GB at 1024^3), and struts run in blocks with halos of twice the largest
radius, regrown where short. Both are in ``all`` but not in the default features,
because measured on this machine with 2 x 512 MiB workers they run at about 0.04-0.05
M voxels/s (struts: 209 s for 128 x 256 x 256; block tortuosity: 156 s for
32 x 512 x 512, 58 iterations) — some 6-7 hours each at 1024^3. The notes of the
quantify row give the plan quantify makes for them at this size.

Choices. The issue asks for 2 x 1 GB workers (float32 working set >= 8 GiB, 2.1 G
voxels). Measured throughput on these 2 shared cores (other jobs running; numbers
noisy): rendering ~1-4.6 M voxels/s, otsu ~15-50, hybrid ~2-5, quantify's local
pass ~2.4-5.5, curvature ~0.8-3 — at 2.1 G voxels well over an hour. 2 x 512 MiB
halves the volume to the smallest that still gives 4 x; less than 512 MiB is not
realistic: an idle worker with porevox's kernels imported holds ~160 MiB and the
quantify kernels' workers peak at 370-440 MiB at 512 MiB (Dask pauses a worker at
80 % and kills it at 95 % of its limit). Even so a full run is far beyond 15
minutes here (see the report in results.md).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time

import numpy as np

from .harness import (
    GiB,
    MiB,
    isolated,
    local_cluster,
    log,
    peak,
    row,
    summarize_memory_events,
    worker_memory_events,
)

MEMORY_ENV = "POREVOX_BENCH_OOC_MEMORY"
SHAPE_ENV = "POREVOX_BENCH_OOC_SHAPE"
FEATURES_ENV = "POREVOX_BENCH_OOC_FEATURES"
METHODS_ENV = "POREVOX_BENCH_OOC_METHODS"
LABELS_ENV = "POREVOX_BENCH_OOC_LABELS"
TIMEOUT_ENV = "POREVOX_BENCH_OOC_TIMEOUT_S"

N_WORKERS = 2
SLAB = 32                      # slices of the prepared twin slab (a power of two)
SPEC = ("HPA", 250)
DEFAULT_FEATURES = ("density", "surface", "slices", "curvature")
DEFAULT_METHODS = ("otsu", "hybrid")
SAMPLE_S = 0.5


# --------------------------------------------------------------------------- config
def settings(cfg) -> dict:
    """Worker memory, shape, methods, features and labels of this run (env overrides)."""
    from dask.utils import parse_bytes

    memory = int(parse_bytes(os.environ.get(MEMORY_ENV) or "512MiB"))
    plane = cfg.pick((1024, 1024), (512, 512))
    if os.environ.get(SHAPE_ENV):
        shape = tuple(int(s) for s in os.environ[SHAPE_ENV].lower().split("x"))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"${SHAPE_ENV} must be ZxYxX; got {os.environ[SHAPE_ENV]!r}")
    elif cfg.quick:
        shape = (64, *plane)
    else:   # voxels >= total worker memory in bytes: float32 working set >= 4 x
        nz = -(-N_WORKERS * memory // (plane[0] * plane[1]))
        shape = (-(-nz // SLAB) * SLAB, *plane)
    methods = tuple(m.strip() for m in (os.environ.get(METHODS_ENV) or ",".join(DEFAULT_METHODS))
                    .split(",") if m.strip())
    raw = os.environ.get(FEATURES_ENV) or ",".join(DEFAULT_FEATURES)
    from porevox.pipelines.quantify import FEATURES

    features = FEATURES if raw.strip() == "all" else tuple(f.strip() for f in raw.split(",")
                                                             if f.strip())
    labels = os.environ.get(LABELS_ENV) or (methods[-1] if methods else "truth")
    timeout = float(os.environ.get(TIMEOUT_ENV) or 4 * 3600)
    return {"memory": memory, "shape": shape, "methods": methods, "features": tuple(features),
            "labels": labels, "timeout": timeout}


# --------------------------------------------------------------------------- the twin
def _render_slab_block(ms, model, threshold, slab, seed, block_info=None):
    """One block of the tiled twin: slab k = z // slab of the prepared slab `ms`,
    mirrored in z for odd k (so the structure is continuous across slab faces),
    noise seeded by ``seed + k``. Returns (3, z, y, x): truth, annotation, image."""
    from porevox.synthetic.fibsem import render_box

    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
    k = z0 // slab
    a, b = z0 - k * slab, z1 - k * slab
    mirror = k % 2 == 1
    if mirror:
        a, b = slab - b, slab - a
    out = render_box(ms, model, seed + k, (slice(a, b), slice(y0, y1), slice(x0, x1)),
                     threshold, "uint8")
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def render_twin(path: str, shape, ms, model, threshold, seed: int) -> dict:
    """Write the tiled twin at `path` (``image``, ``labels/truth``) block by block on
    the active cluster; returns the chunks used."""
    import dask.array as da

    from porevox.engine import create_volume
    from porevox.engine.cluster import chunk_bytes_budget, compute
    from porevox.engine.storage import AXES, LABELS, choose_chunks

    slab = ms.shape[0]
    render = choose_chunks(ms.shape, np.float64, chunk_bytes_budget() // 4)
    if slab % render[0]:
        render = (slab, *render[1:])
    storage = choose_chunks(shape, np.uint8, chunk_bytes_budget())
    chunks = da.core.normalize_chunks(render, tuple(shape))
    data = da.map_blocks(_render_slab_block, ms, model, threshold, slab, seed,
                         chunks=((3,), *chunks), dtype=np.uint8,
                         meta=np.empty((0, 0, 0, 0), np.uint8))
    vol = create_volume(path, shape, "uint8", ms.voxel_size, chunks=storage,
                        sample={"material": "sintered porous copper (digital twin, tiled slabs)",
                                "paste": SPEC[0], "temperature_c": SPEC[1]})
    truth = vol.group.create_array(f"{LABELS}/truth", shape=tuple(shape), dtype="uint8",
                                   chunks=storage, fill_value=0, dimension_names=AXES)
    compute(da.store([data[2].rechunk(storage), data[0].rechunk(storage)], [vol.image, truth],
                     lock=False, compute=False))
    return {"render_chunks": list(render), "storage_chunks": list(storage),
            "render_tasks": int(np.prod([len(c) for c in chunks]))}


# --------------------------------------------------------------------------- monitor
def _scheduler_view(dask_scheduler=None) -> dict:
    """Per worker address: name, pid, limit and Dask's memory view (bytes)."""
    out = {}
    for addr, ws in dask_scheduler.workers.items():
        mem = ws.memory
        out[addr] = {"name": str(ws.name), "pid": ws.pid, "limit": ws.memory_limit,
                     "process": mem.process, "managed": mem.managed, "spilled": mem.spilled,
                     "unmanaged": mem.unmanaged}
    return out


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next reading is a stage's own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _spill_metrics(dask_worker=None) -> dict:
    data = getattr(dask_worker, "data", None)
    metrics = getattr(data, "cumulative_metrics", None) or {}
    return {f"{label}/{unit}": float(v) for (label, unit), v in metrics.items()}


class Monitor(threading.Thread):
    """Samples every worker's RSS (psutil, by the pid the scheduler knows), Dask's
    memory view and the driver's RSS every `interval` s; keeps per-stage maxima and
    every pid seen per worker name."""

    def __init__(self, client, interval: float = SAMPLE_S):
        super().__init__(daemon=True, name="porevox-bench-monitor")
        import psutil

        self.client, self.interval, self.psutil = client, interval, psutil
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.pids: dict[str, set] = collections.defaultdict(set)
        self.addresses: dict[str, set] = collections.defaultdict(set)
        self.samples = 0
        self.errors = 0
        self._procs: dict[int, object] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.stage = collections.defaultdict(lambda: collections.defaultdict(int))
            self.driver_max = 0
            self.min_workers = None
            self.stage_samples = 0

    def _rss(self, pid):
        try:
            proc = self._procs.get(pid) or self.psutil.Process(pid)
            self._procs[pid] = proc
            return proc.memory_info().rss
        except Exception:   # gone (killed / restarted)
            return None

    def sample(self) -> None:
        try:
            view = self.client.run_on_scheduler(_scheduler_view)
        except Exception:
            self.errors += 1
            return
        driver = self.psutil.Process().memory_info().rss
        with self.lock:
            self.samples += 1
            self.stage_samples += 1
            self.driver_max = max(self.driver_max, driver)
            n = len(view)
            self.min_workers = n if self.min_workers is None else min(self.min_workers, n)
            for addr, w in view.items():
                name = w["name"]
                if w["pid"]:
                    self.pids[name].add(w["pid"])
                self.addresses[name].add(addr)
                s = self.stage[name]
                rss = self._rss(w["pid"]) if w["pid"] else None
                if rss is not None:
                    s["rss"] = max(s["rss"], rss)
                for k in ("process", "managed", "spilled", "unmanaged"):
                    s[k] = max(s[k], int(w[k] or 0))
                s["limit"] = int(w["limit"] or 0)

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def snapshot(self) -> dict:
        with self.lock:
            return {"workers": {k: dict(v) for k, v in sorted(self.stage.items())},
                    "driver_max": self.driver_max, "min_workers": self.min_workers,
                    "samples": self.stage_samples,
                    "pids": {k: sorted(v) for k, v in sorted(self.pids.items())},
                    "addresses": {k: sorted(v) for k, v in sorted(self.addresses.items())}}


class LogCapture(logging.Handler):
    """porevox's INFO log lines (its automatic choices), kept and echoed to stderr."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        text = record.getMessage()
        self.lines.append(f"{record.name}: {text}")
        log(f"      [{record.name.rsplit('.', 1)[-1]}] {text[:300]}")


# --------------------------------------------------------------------------- the run
def _workers_now(client) -> dict:
    return {w["name"]: (addr, w.get("pid")) for addr, w in
            client.run_on_scheduler(_scheduler_view).items()}


def _stage(client, monitor: Monitor, logs: LogCapture, name: str, func) -> dict:
    """Run `func` as stage `name`: time it and take its memory, spill and restart record."""
    before = _workers_now(client)
    spill_before = client.run(_spill_metrics)
    events_before = collections.Counter(worker_memory_events(client))
    client.run(_reset_hwm)
    time.sleep(2 * SAMPLE_S + 1)   # let the heartbeats bring Dask's view up to date
    monitor.reset()
    monitor.sample()
    n_logs = len(logs.lines)
    log(f"  [{name}] start")
    t0 = time.perf_counter()
    error, value = None, None
    try:
        value = func()
    except Exception as err:   # KilledWorker and any other failure of the stage
        import traceback

        error = f"{type(err).__name__}: {err}"
        log(traceback.format_exc())
    seconds = time.perf_counter() - t0
    monitor.sample()
    snap = monitor.snapshot()
    try:
        peaks = client.run(peak)
    except Exception as err:
        peaks, error = {}, error or f"reading worker peaks failed: {err}"
    after = _workers_now(client)
    spill_after = client.run(_spill_metrics)
    events = list((collections.Counter(worker_memory_events(client)) - events_before).elements())
    key = "disk-write/bytes"
    spilled_written = sum(spill_after.get(a, {}).get(key, 0.0) - spill_before.get(a, {}).get(key, 0.0)
                          for a in spill_after)
    restarted = {n: p for n, p in snap["pids"].items() if len(p) > 1}
    changed = sorted(set(before.values()) ^ set(after.values()))
    killed_lines = [e for e in events if any(k in e.lower() for k in
                                               ("exceeded", "restart", "killed", "terminat"))]
    workers = []
    for wname in sorted(after):
        addr, _pid = after[wname]
        p = peaks.get(addr, {})
        s = snap["workers"].get(wname, {})
        workers.append({
            "name": wname, "address": addr,
            "ru_maxrss_mib": p.get("ru_maxrss_mib"),          # lifetime, at the stage's end
            "vmhwm_mib": p.get("vmhwm_mib"),                  # this stage (reset at its start)
            "sampled_rss_max_mib": s.get("rss", 0) / MiB,
            "dask_process_max_mib": s.get("process", 0) / MiB,
            "dask_managed_max_mib": s.get("managed", 0) / MiB,
            "dask_unmanaged_max_mib": s.get("unmanaged", 0) / MiB,
            "dask_spilled_max_mib": s.get("spilled", 0) / MiB,
            "limit_mib": s.get("limit", 0) / MiB,
        })
    n_restarts = sum(len(p) - 1 for p in restarted.values())
    log(f"  [{name}] {'FAILED ' + error if error else 'done'} in {seconds:.1f} s; worker peaks MiB "
        f"{[round(w['vmhwm_mib'] or 0) for w in workers]} (limit "
        f"{workers[0]['limit_mib'] if workers else '?'}); restarts {n_restarts}")
    return {"stage": name, "time_s": seconds, "error": error, "value": value, "workers": workers,
            "driver_rss_max_mib": snap["driver_max"] / MiB, "driver_peak": peak(),
            "samples": snap["samples"], "min_workers": snap["min_workers"],
            "pids": snap["pids"], "restarted": restarted, "workers_changed": [list(c) for c in changed],
            "workers_killed": sum(len(p) - 1 for p in restarted.values()) or (len(changed) // 2),
            "memory_events": events, "kill_events": killed_lines,
            "spilled_written_bytes": spilled_written, "porevox_log": logs.lines[n_logs:]}


def _agreement(path: str, name: str) -> dict:
    """Voxel agreement of labels/<name> with the twin's truth, and both densities."""
    import dask.array as da

    from porevox.engine import open_volume

    vol = open_volume(path, mode="r")
    seg = vol.to_dask(f"labels/{name}") != 0
    truth = vol.to_dask("labels/truth") != 0
    agree, d_seg, d_truth = da.compute((seg == truth).mean(), seg.mean(), truth.mean())
    return {"agreement": float(agree), "density": float(d_seg), "truth_density": float(d_truth)}


def _global_plan(shape) -> dict:
    """What quantify chooses for its global operators at this size on these workers."""
    from porevox.kernels import fmm
    from porevox.pipelines import tortuosity as tp
    from porevox.pipelines.quantify import BYTES_PER_VOXEL, _fits_one_task

    voxels = math.prod(shape)
    need_t = fmm.memory_estimate(shape) + 2 * voxels
    fits_t, room = _fits_one_task(need_t)
    need_s = voxels * BYTES_PER_VOXEL["struts"]
    fits_s, _ = _fits_one_task(need_s)
    blocks = tp.block_chunks(shape, None, tp.fast_marching_depth(2))
    n_blocks = math.prod(-(-n // c) for n, c in zip(shape, blocks))
    return {"tortuosity": "whole" if fits_t else "blocks", "tortuosity_need_bytes": need_t,
            "struts": "whole" if fits_s else "blocks", "struts_need_bytes": need_s, "room": room,
            "tortuosity_blocks": list(blocks), "tortuosity_n_blocks": n_blocks,
            "tortuosity_scratch_bytes_per_direction": 2 * 8 * voxels + voxels}


def run_outofcore(path: str, shape, memory: int, methods, features, labels: str, seed: int = 0) -> dict:
    """The measuring process: prepare the slab, start the cluster, run the stages."""
    from porevox.pipelines import segment_volume
    from porevox.pipelines.quantify import quantify_volume
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel

    logs = LogCapture()
    plog = logging.getLogger("porevox")
    plog.setLevel(logging.INFO)
    plog.addHandler(logs)

    shape = tuple(int(s) for s in shape)
    slab = min(SLAB, shape[0])
    model = FibSemModel()
    t0 = time.perf_counter()
    ms, threshold = prepare(SampleSpec(*SPEC, 0, "demo", seed), model, shape=(slab, *shape[1:]))
    prepare_s = time.perf_counter() - t0
    log(f"  prepared the {slab}-slice slab in {prepare_s:.1f} s: {ms.radii.size} particles")
    particles = int(ms.radii.size)
    driver_before_cluster = peak()
    stages, checks = [], {}
    with local_cluster(N_WORKERS, memory) as client:
        client.run(exec, "import porevox.pipelines.segment, porevox.pipelines.quantify, "
                         "porevox.synthetic.fibsem")
        workers_start = _workers_now(client)
        monitor = Monitor(client)
        monitor.start()
        try:
            render = _stage(client, monitor, logs, "render twin (set-up)",
                            lambda: render_twin(path, shape, ms, model, threshold, seed))
            stages.append(render)
            done = []
            if not render["error"]:
                for method in methods:
                    st = _stage(client, monitor, logs, f"segment {method}",
                                lambda m=method: segment_volume(path, m, force=True))
                    stages.append(st)
                    if not st["error"]:
                        done.append(method)
                        checks[method] = _agreement(path, method)
                        log(f"    check {method}: {checks[method]}")
            use = labels if labels in done or labels == "truth" else (done[-1] if done else None)
            plan = _global_plan(shape)
            if use is not None and not render["error"]:
                st = _stage(client, monitor, logs, f"quantify labels/{use}",
                            lambda: quantify_volume(path, labels=use, features=list(features),
                                                    force=True))
                st["labels"], st["plan"] = use, plan
                stages.append(st)
        finally:
            monitor.halt.set()
            monitor.join(timeout=5)
        workers_end = _workers_now(client)
        events = worker_memory_events(client)
        try:
            scheduler_lines = [m for _lvl, m in client.get_scheduler_logs()
                               if any(k in m for k in ("KilledWorker", "exceeded", "Restarting",
                                                       "Remove worker"))]
        except Exception:
            scheduler_lines = []
    for st in stages:   # values JSON-friendly and small
        v = st.pop("value", None)
        if isinstance(v, dict):
            st["result"] = {k: val for k, val in v.items() if not isinstance(val, (list, dict))
                            or k in ("thresholds", "written", "tortuosity_by_axis", "shape",
                                     "render_chunks", "storage_chunks")}
    return {"stages": stages, "checks": checks, "prepare_s": prepare_s, "particles": particles,
            "threshold": float(threshold), "peak": peak(), "driver_before_cluster": driver_before_cluster,
            "workers_start": {k: list(v) for k, v in workers_start.items()},
            "workers_end": {k: list(v) for k, v in workers_end.items()},
            "memory_events": events, "scheduler_lines": scheduler_lines[-50:]}


# --------------------------------------------------------------------------- rows
def _stage_row(st: dict, out: dict, s: dict, shape) -> dict:
    limit_mib = s["memory"] / MiB
    voxels = math.prod(shape)
    workers = st["workers"]
    hwm = [w["vmhwm_mib"] or 0 for w in workers]
    sampled = [w["sampled_rss_max_mib"] for w in workers]
    stage_peak = max(hwm + sampled, default=None)
    per_worker = ", ".join(f"{w['name']}: {w['vmhwm_mib'] or 0:.0f} (sampled {w['sampled_rss_max_mib']:.0f}, "
                           f"Dask {w['dask_process_max_mib']:.0f}, managed {w['dask_managed_max_mib']:.0f})"
                           for w in workers)
    killed = st["workers_killed"]
    parts = [
        f"2 workers x 1 thread x {limit_mib:.0f} MiB; stage peak per worker MiB (VmHWM reset at the "
        f"stage start; sampled RSS max; Dask process max; Dask managed max) [{per_worker}]; "
        f"peak/limit {stage_peak / limit_mib:.2f}" if stage_peak else "no worker peaks",
        f"workers killed/restarted: {killed}" + (f" ({st['restarted']}, {st['workers_changed']})"
                                                 if killed else ""),
        f"spilled to disk: {st['spilled_written_bytes'] / MiB:.0f} MiB written, at most "
        f"{max((w['dask_spilled_max_mib'] for w in workers), default=0):.0f} MiB held",
        f"driver RSS max in stage {st['driver_rss_max_mib']:.0f} MiB; {st['samples']} samples",
    ]
    if st["memory_events"]:
        parts.append(summarize_memory_events(st["memory_events"]))
    if st["kill_events"]:
        parts.append("KILL/RESTART LINES: " + " | ".join(st["kill_events"][:5]))
    choices = [line for line in st["porevox_log"] if any(k in line for k in (
        "tortuosity", "struts", "rechunk", "SLIC", "Otsu", "whole", "block"))]
    if choices:
        parts.append("porevox chose: " + " | ".join(c[:240] for c in choices[:6]))
    if st.get("plan"):
        p = st["plan"]
        parts.append(
            f"global operators at this size ({p['room']}): tortuosity -> {p['tortuosity']} (a "
            f"whole-volume solve needs {p['tortuosity_need_bytes'] / GiB:.1f} GiB; block solver: "
            f"{p['tortuosity_n_blocks']} blocks of {'x'.join(map(str, p['tortuosity_blocks']))}, "
            f"{p['tortuosity_scratch_bytes_per_direction'] / GiB:.1f} GiB scratch per direction), "
            f"struts -> {p['struts']} (whole needs {p['struts_need_bytes'] / GiB:.1f} GiB)")
    check = ""
    stage = st["stage"]
    if stage.startswith("segment "):
        c = out["checks"].get(stage.split()[1])
        if c:
            check = (f"agreement with truth {c['agreement']:.4f}; D {c['density']:.3f} vs truth "
                     f"{c['truth_density']:.3f}")
    elif stage.startswith("quantify"):
        r = st.get("result") or {}
        keys = ("relative_density", "percolating_fraction", "specific_surface_area",
                "specific_perimeter_2d", "mean_curvature_mean", "strut_diameter_mean", "tortuosity")
        check = "; ".join(f"{k} {r[k]:.4g}" for k in keys if isinstance(r.get(k), (int, float)))
    elif stage.startswith("render"):
        r = st.get("result") or {}
        check = (f"render chunks {r.get('render_chunks')}, storage chunks {r.get('storage_chunks')}; "
                 f"slab prepared in {out['prepare_s']:.1f} s")
    pv = {"time_s": st["time_s"], "times_s": [st["time_s"]], "peak": st["driver_peak"],
          "workers": workers, "error": st["error"]}
    return row("outofcore", stage, shape=shape, dtype="uint8", pv=pv, ref={},
               reference="the workers' memory limit (peak / limit)", check=check,
               notes="; ".join(parts),
               porevox_worker_peak_mib=stage_peak,
               porevox_worker_vmhwm_mib=max(hwm, default=None),
               memory_limit_mib=limit_mib, n_workers=N_WORKERS,
               peak_over_limit=(stage_peak / limit_mib) if stage_peak else None,
               worker_stage_vmhwm_mib=hwm, worker_stage_sampled_rss_mib=sampled,
               dask_process_max_mib=[w["dask_process_max_mib"] for w in workers],
               dask_managed_max_mib=[w["dask_managed_max_mib"] for w in workers],
               spilled_written_bytes=st["spilled_written_bytes"],
               spilled_max_mib=max((w["dask_spilled_max_mib"] for w in workers), default=0),
               workers_killed=killed, worker_pids=st["pids"], memory_events=st["memory_events"],
               kill_events=st["kill_events"], porevox_log=st["porevox_log"],
               working_set_bytes=4 * voxels,
               working_set_ratio=4 * voxels / (N_WORKERS * s["memory"]),
               driver_rss_max_mib=st["driver_rss_max_mib"], result=st.get("result"),
               plan=st.get("plan"))


def run(cfg) -> list[dict]:
    s = settings(cfg)
    shape = s["shape"]
    voxels = math.prod(shape)
    ratio = 4 * voxels / (N_WORKERS * s["memory"])
    log(f"  twin {'x'.join(map(str, shape))} uint8 ({voxels / GiB:.2f} GiB; float32 working set "
        f"{4 * voxels / GiB:.2f} GiB = {ratio:.2f} x the workers' {N_WORKERS} x "
        f"{s['memory'] / MiB:.0f} MiB); segment {', '.join(s['methods'])}; quantify labels/"
        f"{s['labels']} features {', '.join(s['features'])}")
    with cfg.scratch("outofcore") as tmp:
        out = isolated(run_outofcore, str(tmp / "twin.zarr"), shape, s["memory"], s["methods"],
                       s["features"], s["labels"], timeout=s["timeout"])
        stored = sum(f.stat().st_size for f in (tmp / "twin.zarr").rglob("*") if f.is_file()) \
            if (tmp / "twin.zarr").exists() else 0
    if out.get("error") and not out.get("stages"):
        return [row("outofcore", "(run)", shape=shape, dtype="uint8", pv=out, ref={},
                    reference="the workers' memory limit (peak / limit)",
                    notes=f"working set ratio {ratio:.2f}")]
    rows = [_stage_row(st, out, s, shape) for st in out["stages"]]
    measured = [st for st in out["stages"] if not st["stage"].startswith("render")]
    total_s = sum(st["time_s"] for st in measured)
    killed = sum(st["workers_killed"] for st in out["stages"])
    peaks = [r["porevox_worker_peak_mib"] for r in rows[1:] if r.get("porevox_worker_peak_mib")]
    errors = [f"{st['stage']}: {st['error']}" for st in out["stages"] if st["error"]]
    total = row("outofcore", "total: segment + quantify", shape=shape, dtype="uint8",
                pv={"time_s": total_s, "times_s": [total_s], "peak": out.get("peak"),
                    "error": "; ".join(errors) or None},
                ref={}, reference="the workers' memory limit (peak / limit)",
                check=f"workers killed/restarted over the whole run: {killed}",
                notes="; ".join(filter(None, [
                    f"float32 working set {4 * voxels / GiB:.2f} GiB = {ratio:.2f} x the workers' "
                    f"total {N_WORKERS * s['memory'] / GiB:.2f} GiB",
                    f"max stage peak per worker {max(peaks, default=0):.0f} MiB of "
                    f"{s['memory'] / MiB:.0f} MiB" if peaks else "",
                    f"volume on disk {stored / GiB:.2f} GiB (image, truth and labels, Zarr default "
                    "codecs)" if stored else "",
                    f"features {', '.join(s['features'])}",
                    f"driver ru_maxrss {((out.get('peak') or {}).get('ru_maxrss_mib') or 0):.0f} MiB",
                    "timings on 2 shared cores (other jobs running): noisy, one run each",
                    summarize_memory_events(out.get("memory_events")),
                    ("scheduler: " + " | ".join(out["scheduler_lines"][:5]))
                    if out.get("scheduler_lines") else "",
                ])),
                porevox_worker_peak_mib=max(peaks, default=None), memory_limit_mib=s["memory"] / MiB,
                peak_over_limit=max(peaks, default=0) / (s["memory"] / MiB) if peaks else None,
                workers_killed=killed, working_set_bytes=4 * voxels, working_set_ratio=ratio,
                stored_bytes=stored, features=list(s["features"]), methods=list(s["methods"]),
                workers_start=out.get("workers_start"), workers_end=out.get("workers_end"),
                scheduler_lines=out.get("scheduler_lines"), prepare_s=out.get("prepare_s"))
    return [*rows, total]


__all__ = ["run", "run_outofcore", "settings"]
