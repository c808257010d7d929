"""Suite ``outofcore`` (runs only when named): segment + quantify of a twin volume
whose float32 working set is at least four times the memory of all the workers.

    python -m benchmarks outofcore --out bench-ooc [--quick]

The claim measured (DESIGN.md, Scale: "memory per worker is bounded by chunk size,
not volume size"): a volume of N voxels (``4 N`` bytes as float32) goes through
``segment_volume(path, "otsu")``, ``segment_volume(path, "hybrid")`` and
``quantify_volume(path, labels=...)`` on a LocalCluster (``porevox.engine.cluster``)
of 2 workers x 1 thread x M memory limit with ``4 N >= 4 x 2 M``, with no worker
killed or restarted for memory. There is no reference implementation to ratio
against: the reference is the memory limit, and every stage reports its peak per
worker over that limit.

Defaults (environment variables override them; reasons under "Choices"):

* workers: 2 x 1 thread x **512 MiB** (``$POREVOX_BENCH_OOC_MEMORY``, e.g. ``1GiB``);
* volume: **1024 x 1024 x 1024 uint8** (1 GiB; float32 working set 4 GiB = 4.0 x
  the workers' 1 GiB): the plane is 1024 x 1024 and the depth the smallest multiple
  of 32 with voxels >= the workers' total memory in bytes
  (``$POREVOX_BENCH_OOC_SHAPE`` = ``ZxYxX`` overrides). ``--quick``: 2 x 512 MiB and
  64 x 512 x 512, a smoke test far below 4 x;
* segmentations: ``otsu,hybrid`` (``$POREVOX_BENCH_OOC_METHODS``);
* quantified: ``labels/otsu,hybrid`` (``$POREVOX_BENCH_OOC_LABELS``, a comma list, one
  quantify stage each) with the features ``density, surface, slices`` — the local
  pass, whose connected components are merged globally in the driver
  (``$POREVOX_BENCH_OOC_FEATURES``: a comma list, or ``all``);
* storage chunks: the render blocks, as ``porevox synth`` writes a twin
  (``$POREVOX_BENCH_OOC_CHUNKS=ingest``: those porevox's ingest would choose,
  ``choose_chunks(shape, uint8, chunk_bytes_budget())``; see below);
* ``$POREVOX_BENCH_OOC_TIMEOUT_S``: the measuring process's limit (default 4 h).

The volume. A digital twin (HPA paste, 250 °C, the demo voxel size) rendered block
by block on the same cluster (``porevox.synthetic.fibsem.render_box``) and written
as a porevox volume (``image`` and ``labels/truth``); no process ever holds it
whole. ``porevox.pipelines.synth.sample_arrays`` does not make it at this size:

* it passes the sample's Microstructure (its particle list) to ``map_blocks`` as a
  plain argument; Dask's ``sizeof`` sees a dataclass as ~50 bytes, so the list is
  not made one shared key but embedded in every task, and unpickled by every task.
  Rendering 1024^3 that way (with the slab below), the workers' unmanaged memory
  grew task after task until they sat at Dask's pause threshold for good — at
  2 x 512 MiB after ~2 minutes at 411 MiB (210 MiB heap, 96 MiB anonymous maps, 68
  MiB llvmlite, nothing managed by Dask; ``malloc_trim`` gave back 15 MiB), at
  2 x 1 GiB after ~5 minutes at 820 MiB — and the run hung (no kill, no error).
  Passed as one ``dask.delayed`` key (as here), the same render held 240-270 MiB
  per worker throughout and ran 2.4 x faster;
* the list grows with the volume (0.67 M particles, 21 MB pickled, for
  32 x 1024 x 1024; ~23 M, ~0.7 GB, for 1024^3) — more than a 512 MiB worker holds —
  and every block filters all of it with (N, 3) float64 temporaries; preparing it
  (``prepare``: particles, density calibration, image threshold) took 74 s for a
  64 x 1024 x 1024 slab here.

So the suite prepares one **tile** of 32 x 256 x 256 voxels (55 k particles, ~2 s)
and tiles the volume with it, mirrored along each axis where the tile index is odd
(the structure is continuous across tile faces: reflection-periodic with period
64 x 512 x 512), each tile with its own noise seed. The render blocks are sized as
``sample_arrays`` sizes them (``choose_chunks(tile, float64, chunk_bytes_budget()
// 4)``: 32 x 128 x 256 at 512 MiB) and are the storage chunks. With ingest's chunks
instead (64 x 512 x 1024, 32 MiB, at 512 MiB), the set-up's rechunk-merge-store of
a 32 MiB chunk killed workers (exceeded 95 %) four times and failed with
KilledWorker (with the particle list still embedded per task): a worker that has
run porevox's numba kernels idles at 240-300 MiB (154 MiB before any kernel), while
``chunk_bytes_budget`` assumes 150 MiB of interpreter.

A watchdog (the memory sampler) restarts the workers if all of them stay paused
for over 5 minutes, so a hang ends the stage with an error instead of running into
the process timeout; the stage's notes then say ``HUNG``.

Result at the defaults (2 x 512 MiB, 1024^3; 2026-11-26, on 2 shared cores): render,
segment otsu and hybrid, and quantify of ``labels/otsu`` and ``labels/hybrid`` all
pass with no worker killed or restarted; worker peaks 313 (otsu), 415 (hybrid),
455 and 450 MiB (the two quantifications: workers that had run SLIC idle near
400 MiB; fresh workers quantified a 512 x 1024 x 1024 volume at ~285 MiB).

How quantify got there. It used to HANG about 100 s in, both workers paused at
410-414 MiB with nothing managed by Dask, a stalled worker holding 18.9 k tasks in
its state (~250 MiB of task objects). Each block was a slice of the Dask array
(``image[outer]``): chunk pieces, concatenations and the kernel, ~44 k tasks for
1024 blocks, which Dask's root-task queuing does not bound, so the workers took
the whole local pass at once. Now (``porevox.engine.block_tasks`` on a stored
array, ``Volume.reader``) each task reads its own block with its halo straight
from Zarr and depends only on the array's handle: the scheduler queues the tasks
and hands them out as workers free up, and a worker holds only the blocks it runs
(<= 130 tasks in its state throughout). Compute boxes are grown from the storage
chunks toward a cube within one task's budget (``compute_box``), face label planes
come back in the smallest unsigned type and not at the volume's outer faces, and
``chunk_bytes_budget`` counts a worker's baseline as the measured 256 MiB (it
assumed 150). The truth-agreement check goes through porevox's confusion matrix,
read the same way: comparing the Dask arrays rechunked the slice-wise hybrid
labels against the truth's chunks and hung the same way.

Measured per stage (render; segment otsu; segment hybrid; quantify) — the first is
the set-up, reported for completeness:

* wall seconds (each stage runs once) and voxels/s;
* peak memory per worker: each worker process's ``VmHWM``, reset at the stage's
  start (``/proc/self/clear_refs``), so it is that stage's own peak; its RSS sampled
  every 0.5 s by ``psutil`` from the driver (the max kept); Dask's own view (the
  scheduler's ``WorkerState.memory``: process, managed, spilled; max over the
  samples); the lifetime ``ru_maxrss`` at the stage's end (``workers`` in
  results.json). ``porevox peak MiB (max worker)`` in the table is the stage's
  largest VmHWM or sampled RSS; ``peak_over_limit`` that over the limit;
* workers killed or restarted: the pids seen per worker name during the stage (a
  nanny restart gives a new pid and address), the scheduler's workers before and
  after, the stage's error (e.g. ``KilledWorker``), and the worker and nanny log
  lines about memory new in the stage (pauses, "exceeded 95% memory budget",
  restarts, spills: ``harness.worker_memory_events``);
* spill to disk: bytes the workers' spill buffers wrote during the stage
  (``SpillBuffer.cumulative_metrics["disk-write", "bytes"]``) and the most held on
  disk at a sample;
* the driver's RSS (sampled) and ``ru_maxrss`` — quantify merges the passes'
  results (one per pass, merged on the workers) there;
* checks, untimed, after the stage's peaks are taken: each segmentation's voxel
  agreement with the twin's truth; the quantified values.

Global operators. ``quantify_volume`` decides per operator whether the whole volume
fits one task (``_fits_one_task``: need <= 60 % of a worker's memory limit), and
logs it. At this size nothing global fits: tortuosity runs the block-decomposed
fast marching (:class:`porevox.pipelines.tortuosity.BlockSolver`: 1024 blocks of
64 x 128 x 128 at 512 MiB, each visited 6-8 times, its scratch — each block's float64
box, faces and solid box — inside the volume's folder, ~11 GiB per direction at
1024^3; the quantify row's notes give the figure), and struts run in blocks whose
halos the volume's distance transform sized before they run (``distance/<labels>``,
stored in the volume). Connected components (density, percolation) are merged on the
workers, neighbours first (``tree_reduce``). Struts and tortuosity are in ``all`` but
not in the defaults (``porevox bench scale`` measures every feature: at 1024^3 on
2 x 1 GiB, struts 20 and tortuosity 15 minutes): before issue 21, with 2 x 512 MiB
workers, struts ran at 0.03-0.05 M voxels/s (128 x 256 x 256:
209-280 s, blocks rerun with grown halos) — six to nine hours at 1024^3; block
tortuosity took 255 s against 6 s whole on that twin before the block solver's
rework (below), and now runs at ~2 M voxels/s per direction (128 x 256 x 256 porous
field, +y: 4.1-4.5 s against 1.2 s whole).

Tortuosity's block solver, the measurements behind its schedule (2 shared cores,
LocalCluster of 2 workers x 1 thread, Gaussian-smoothed random fields thresholded at
porosity 0.4, order 2; wall times best of 2, noisy to ~30 %):

* the former solver (rounds of all changed blocks and their 26 neighbours, each a
  full fast-marching re-solve reading 27 neighbour chunks, one client round trip per
  round): 160^3 in 64^3 blocks, +y, 12.8 s against 0.45 s whole (28 x); 128 x 256 x
  256 at 512 MiB (its blocks 64 x 64 x 128) 27.0 s against 1.25 s (22 x).
* schedules simulated serially with the incremental kernel (96^3, blocks of 25-51
  voxels): a queue in front order (layer first) 9-14 visits per block, 1.3-1.9 x the
  whole solve's voxels accepted; columns swept along the axis to convergence between
  lateral exchanges 8-11 rounds, 1.7-3.6 x; a Dijkstra over blocks (the queue keyed by
  the lowest value that dropped) 5-6.5 visits, 1.3-1.7 x; slabs of the whole
  cross-section 2.8-4.5 visits, 1.1-1.5 x, but no parallelism within a direction.
  Marching in distance bands (each visit stops a band above its key) cut the voxels
  accepted to 1.15 x at a quarter-block band but doubled the visits (12.9 per block).
* per visit: a fixed cost of ~3 ms for a 68^3 box in NumPy passes (36 of them) went
  to one numba pass (160^3 in 64^3 blocks, +y, in this process: 1.8 -> 0.72 s against
  0.46 s whole); reading only faces (at most six, `order` layers each) instead of 27
  chunks; the solid's box kept in the scratch after the first visit (a Zarr read and
  the array's unpickling per visit: 3.5 -> 2.5 s on 192^3 in 64^3 blocks).
* never two neighbouring blocks at once: 7.4-8.1 -> 6.4-7.0 visits per block (192^3 in
  64^3 blocks, three directions; 7.9 -> 6.8 s).
* the result (192^3, the paper's five directions): in 96^3 blocks 6.0-7.0 s against
  2.2 s whole (the driver's two threads), process CPU 2.7-3.0 x, the tasks' CPU
  1.6-2.0 x, voxels accepted 1.2 x, 7.5 visits per block; in 64^3 blocks 10.7-12.6 s
  (4.9-5.7 x: Dask's overhead, ~3 ms of CPU per task on these cores, tells). One
  direction (+y): 96^3-128^3 blocks 3.5 x, 64^3 blocks 3.2-5.5 x. τ within 3e-6 of
  the whole solve throughout (order 1: 1e-10).
* the re-open tolerance (2026-12-07): the kernel's update re-opened a known voxel for
  any drop, and order 2's stencil recomputed from other neighbours moves values by
  round-off, so blocks were re-marched for nothing. The twin at 256^3 in 64 x 64 x 128
  blocks, +z: 52.1 M voxels accepted (whole: 10.8 M) and 330 visits; re-opening only
  for a relative drop above 1e-12: 12.8 M and 206 visits (order 1: 12.8 M either
  way; +y 20.9 -> 12.5 M). τ unchanged to 1e-8. At 512^3 (``porevox bench scale``)
  the five directions went from 605 to 115 s; +z had taken 2 809 visits of 32 blocks.
Curvature runs at ~0.85 M voxels/s (20 min at 1024^3); add it with
``$POREVOX_BENCH_OOC_FEATURES``. The quantify row's notes give the plan quantify
makes for tortuosity and struts at this size.

Choices. The issue's example is 2 x 1 GB workers (float32 working set >= 8 GiB,
2.1 G voxels): measured on these 2 shared cores at 64 x 1024 x 1024 with 2 x 512 MiB
(other jobs running: numbers noisy) — render 2.8 M voxels/s (6.6 with the particle
list as one key), otsu 54, hybrid 2.6, quantify's local pass 3.1, curvature 0.85 —
2.1 G voxels would take about 40 minutes. 2 x 512 MiB halves the volume to the
smallest that still gives 4 x (about 15 minutes: render ~3, hybrid ~3, quantify
~6); less is not workable: a warmed worker idles at 240-300 MiB, and at 384 MiB
(pause at 307 MiB) the render stalled with both workers paused at once (with
the particle list still embedded per task).

``labels/hybrid`` is stored in the SLIC stage's chunks, whole slices 1 deep at this
budget (1 x 1024 x 1024). Quantifying it by those chunks held a 5-slice block per
task and returned 8 MiB of uint32 face planes a slice, and at 64 x 1024 x 1024 both
workers exceeded 95 % and quantify raised ``KilledWorker``; the boxes grown toward
a cube (here 128^3 for both label images: a task reads 132 slices of 140 x 140)
avoid both.
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
CHUNKS_ENV = "POREVOX_BENCH_OOC_CHUNKS"

N_WORKERS = 2
TILE = (32, 256, 256)          # the prepared twin tile (powers of two), mirrored
SPEC = ("HPA", 250)
DEFAULT_FEATURES = ("density", "surface", "slices")
DEFAULT_METHODS = ("otsu", "hybrid")
DEFAULT_LABELS = "otsu,hybrid"
SAMPLE_S = 0.5
STALL_S = 300.0   # all workers paused this long: a hang; the watchdog restarts the workers


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
        shape = (-(-nz // TILE[0]) * TILE[0], *plane)
    methods = tuple(m.strip() for m in (os.environ.get(METHODS_ENV) or ",".join(DEFAULT_METHODS))
                    .split(",") if m.strip())
    raw = os.environ.get(FEATURES_ENV) or ",".join(DEFAULT_FEATURES)
    from porevox.pipelines.quantify import FEATURES

    features = FEATURES if raw.strip() == "all" else tuple(f.strip() for f in raw.split(",")
                                                             if f.strip())
    labels = tuple(x.strip() for x in (os.environ.get(LABELS_ENV) or DEFAULT_LABELS).split(",")
                   if x.strip())
    timeout = float(os.environ.get(TIMEOUT_ENV) or 4 * 3600)
    return {"memory": memory, "shape": shape, "methods": methods, "features": tuple(features),
            "labels": labels, "timeout": timeout}


# --------------------------------------------------------------------------- the twin
def _tile_range(lo: int, hi: int, tile: int) -> tuple[int, int, int, bool]:
    """Tile index of the volume range [lo, hi) (inside one tile), and the range in
    the prepared tile: mirrored for odd tiles."""
    k = lo // tile
    a, b = lo - k * tile, hi - k * tile
    if k % 2:
        a, b = tile - b, tile - a
    return k, a, b, bool(k % 2)


def _render_tile_block(ms, model, threshold, seed, grid, block_info=None):
    """One block of the tiled twin: the prepared tile `ms`, mirrored along every
    axis where the block's tile index is odd (so the structure is continuous across
    tile faces), with noise seeded per tile. Returns (3, z, y, x): truth,
    annotation, image."""
    from porevox.synthetic.fibsem import render_box

    loc = block_info[None]["array-location"][1:]
    parts = [_tile_range(lo, hi, t) for (lo, hi), t in zip(loc, ms.shape)]
    tile_seed = seed + 1 + int(np.ravel_multi_index(tuple(p[0] for p in parts), grid))
    out = render_box(ms, model, tile_seed, tuple(slice(a, b) for _, a, b, _ in parts),
                     threshold, "uint8")
    flip = (slice(None),) + tuple(slice(None, None, -1) if m else slice(None) for *_, m in parts)
    return np.ascontiguousarray(out[flip])


def render_twin(path: str, shape, ms, model, threshold, seed: int) -> dict:
    """Write the tiled twin at `path` (``image``, ``labels/truth``) block by block on
    the active cluster; returns the chunks used."""
    import dask
    import dask.array as da

    from porevox.engine import create_volume
    from porevox.engine.cluster import chunk_bytes_budget, compute
    from porevox.engine.storage import AXES, LABELS, choose_chunks

    tile = ms.shape
    # as sample_arrays sizes its blocks, and dividing the tile (blocks never straddle one)
    render = tuple(c if t % c == 0 else t for c, t in
                   zip(choose_chunks(tile, np.float64, chunk_bytes_budget() // 4), tile))
    # storage chunks: the render blocks, as `porevox synth` writes a twin (default), or
    # those porevox's ingest gives this shape on these workers ("ingest")
    storage = (choose_chunks(shape, np.uint8, chunk_bytes_budget())
               if os.environ.get(CHUNKS_ENV, "render") == "ingest" else render)
    grid = tuple(-(-n // t) for n, t in zip(shape, tile))
    chunks = da.core.normalize_chunks(render, tuple(shape))
    # the tile as one Dask key, deserialized once per worker: Dask's sizeof sees a
    # dataclass as ~50 bytes, so passed as is it is embedded in (and unpickled by)
    # every task, like sample_arrays' particle list
    data = da.map_blocks(_render_tile_block, dask.delayed(ms, pure=True), model, threshold, seed, grid,
                         chunks=((3,), *chunks), dtype=np.uint8,
                         meta=np.empty((0, 0, 0, 0), np.uint8))
    vol = create_volume(path, shape, "uint8", ms.voxel_size, chunks=storage,
                        sample={"material": "sintered porous copper (digital twin, mirrored tiles)",
                                "paste": SPEC[0], "temperature_c": SPEC[1]})
    truth = vol.group.create_array(f"{LABELS}/truth", shape=tuple(shape), dtype="uint8",
                                   chunks=storage, fill_value=0, dimension_names=AXES)
    image, solid = data[2], data[0]
    if storage != render:
        image, solid = image.rechunk(storage), solid.rechunk(storage)
    compute(da.store([image, solid], [vol.image, truth], lock=False, compute=False))
    return {"tile": list(tile), "render_chunks": list(render), "storage_chunks": list(storage),
            "render_tasks": int(np.prod([len(c) for c in chunks]))}


# --------------------------------------------------------------------------- monitor
def _scheduler_view(dask_scheduler=None) -> dict:
    """Per worker address: name, pid, limit and Dask's memory view (bytes)."""
    out = {}
    for addr, ws in dask_scheduler.workers.items():
        mem = ws.memory
        out[addr] = {"name": str(ws.name), "pid": ws.pid, "limit": ws.memory_limit,
                     "paused": str(ws.status).endswith("paused"),
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
        self.paused_since: float | None = None
        self.stalls: list[str] = []
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
            if view and all(w.get("paused") for w in view.values()):
                self.paused_since = self.paused_since or time.monotonic()
            else:
                self.paused_since = None
            stalled = (self.paused_since is not None
                       and time.monotonic() - self.paused_since > STALL_S)
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
        if stalled:   # every worker paused for good: restart them so the stage fails
            mem = ", ".join(f"{w['process'] / MiB:.0f}" for w in view.values())
            what = (f"all workers paused for over {STALL_S:.0f} s (process memory {mem} MiB); "
                    "the suite's watchdog restarted them")
            log(f"  ! {what}")
            self.stalls.append(what)
            self.paused_since = None
            try:
                self.client.restart(wait_for_workers=False)
            except Exception as err:
                self.stalls.append(f"restart failed: {err}")

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
    n_logs, n_stalls = len(logs.lines), len(monitor.stalls)
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
    hung = bool(monitor.stalls[n_stalls:])
    if hung:   # the watchdog restarted the workers: their own peaks are gone, keep the sampled
        try:
            client.wait_for_workers(N_WORKERS, timeout=120)
        except Exception:
            pass
    try:
        peaks = {} if hung else client.run(peak)
    except Exception as err:
        peaks, error = {}, error or f"reading worker peaks failed: {err}"
    after = _workers_now(client)
    spill_after = client.run(_spill_metrics)
    events = list((collections.Counter(worker_memory_events(client)) - events_before).elements())
    key = "disk-write/bytes"
    spilled_written = sum(max(0.0, spill_after.get(a, {}).get(key, 0.0)
                              - spill_before.get(a, {}).get(key, 0.0)) for a in spill_after)
    restarted = {n: p for n, p in snap["pids"].items() if len(p) > 1}
    changed = sorted(set(before.values()) ^ set(after.values()))
    killed_lines = [e for e in events if any(k in e.lower() for k in
                                               ("exceeded", "restart", "killed", "terminat"))]
    workers = []
    for wname in sorted(set(after) | set(snap["workers"])):
        addr, _pid = after.get(wname, (None, None))
        p = peaks.get(addr, {})
        s = snap["workers"].get(wname, {})
        workers.append({
            "name": wname, "address": addr,
            # lifetime, at the stage's end (after a watchdog restart: the sampled max)
            "ru_maxrss_mib": p.get("ru_maxrss_mib") if p else s.get("rss", 0) / MiB,
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
            # a watchdog restart (after a hang) is not a kill for memory: count those apart
            "workers_killed": (sum("exceeded" in e.lower() for e in events)
                               if monitor.stalls[n_stalls:] else
                               max(sum(len(p) - 1 for p in restarted.values()) or len(changed) // 2,
                                   sum("exceeded" in e.lower() for e in events))),
            "watchdog_restarts": len(monitor.stalls[n_stalls:]),
            "memory_events": events, "kill_events": killed_lines,
            "spilled_written_bytes": spilled_written, "porevox_log": logs.lines[n_logs:],
            "stalls": monitor.stalls[n_stalls:]}


def _agreement(path: str, name: str) -> dict:
    """Voxel agreement of labels/<name> with the twin's truth, and both densities, from
    porevox's confusion matrix (tasks read their boxes of both label images; comparing
    the Dask arrays instead rechunks the slice-wise hybrid labels against the truth's
    chunks, ~30 k tasks that hung both workers at the pause threshold)."""
    from porevox.engine import open_volume
    from porevox.pipelines.score import confusion

    vol = open_volume(path, mode="r")
    cm = confusion(vol.reader(f"labels/{name}"), vol.reader("labels/truth")).astype(np.float64)
    total = cm.sum()
    return {"agreement": float(np.trace(cm) / total), "density": float(cm[:, 1].sum() / total),
            "truth_density": float(cm[1, :].sum() / total)}


def _global_plan(shape) -> dict:
    """What quantify chooses for its global operators at this size on these workers."""
    from porevox.kernels import fmm
    from porevox.pipelines import tortuosity as tp
    from porevox.pipelines.quantify import _fits_one_task, struts_whole_bytes

    voxels = math.prod(shape)
    need_t = fmm.memory_estimate(shape) + 2 * voxels
    fits_t, room = _fits_one_task(need_t)
    need_s = struts_whole_bytes(shape)
    fits_s, _ = _fits_one_task(need_s)
    depth = tp.fast_marching_depth(2)
    blocks = tp.block_chunks(shape, None, depth)
    cuts = [tp._cuts(n, c, depth) for n, c in zip(shape, blocks)]
    n_blocks = math.prod(len(c) - 1 for c in cuts)
    # per block: its float64 box (core and a halo of `depth` on inner sides), its faces,
    # and its uint8 box of the solid (shared by the directions)
    sizes = [[b - a + depth * ((a > 0) + (b < n)) for a, b in zip(c, c[1:])] for c, n in zip(cuts, shape)]
    boxes = math.prod(sum(s) for s in sizes)
    faces = sum(2 * depth * (len(c) - 2) * math.prod(n for k, n in enumerate(shape) if k != a)
                for a, c in enumerate(cuts))
    return {"tortuosity": "whole" if fits_t else "blocks", "tortuosity_need_bytes": need_t,
            "struts": "whole" if fits_s else "blocks", "struts_need_bytes": need_s, "room": room,
            "tortuosity_blocks": list(blocks), "tortuosity_n_blocks": n_blocks,
            "tortuosity_scratch_bytes_per_direction": 8 * boxes + 8 * faces + boxes}


def prepare_tile(shape, seed: int = 0):
    """The measuring process's set-up: porevox's log captured, and the twin tile
    (at most :data:`TILE`) prepared. Returns (logs, model, tile, threshold, seconds)."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel

    logs = LogCapture()
    plog = logging.getLogger("porevox")
    plog.setLevel(logging.INFO)
    plog.addHandler(logs)
    tile = tuple(min(t, int(n)) for t, n in zip(TILE, shape))
    model = FibSemModel()
    t0 = time.perf_counter()
    ms, threshold = prepare(SampleSpec(*SPEC, 0, "demo", seed), model, shape=tile)
    return logs, model, ms, threshold, time.perf_counter() - t0


def run_outofcore(path: str, shape, memory: int, methods, features, labels, seed: int = 0) -> dict:
    """The measuring process: prepare the slab, start the cluster, run the stages."""
    from porevox.pipelines import segment_volume
    from porevox.pipelines.quantify import quantify_volume

    logs, model, ms, threshold, prepare_s = prepare_tile(shape, seed)
    shape = tuple(int(s) for s in shape)
    tile = ms.shape
    log(f"  prepared the {'x'.join(map(str, tile))} tile in {prepare_s:.1f} s: {ms.radii.size} "
        "particles")
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
            plan = _global_plan(shape)
            for use in labels:
                if render["error"] or (use not in done and use != "truth"):
                    log(f"  quantify labels/{use}: skipped (no such segmentation made)")
                    continue
                st = _stage(client, monitor, logs, f"quantify labels/{use}",
                            lambda u=use: quantify_volume(path, labels=u, features=list(features),
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
                                     "tile", "render_chunks", "storage_chunks")}
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
        (f"workers restarted by the suite's watchdog after the hang: all; killed for memory: {killed}"
         if st.get("watchdog_restarts") else f"workers killed/restarted: {killed}")
        + (f" ({st['restarted']}, {st['workers_changed']})"
                                                 if killed else ""),
        f"spilled to disk: {st['spilled_written_bytes'] / MiB:.0f} MiB written, at most "
        f"{max((w['dask_spilled_max_mib'] for w in workers), default=0):.0f} MiB held",
        f"driver RSS max in stage {st['driver_rss_max_mib']:.0f} MiB; {st['samples']} samples",
    ]
    if st.get("stalls"):
        parts.append("HUNG: " + " | ".join(st["stalls"]))
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
        check = (f"tile {r.get('tile')} ({out['particles']} particles, prepared in "
                 f"{out['prepare_s']:.1f} s), render chunks {r.get('render_chunks')}, storage "
                 f"chunks {r.get('storage_chunks')}")
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
        f"{', '.join(s['labels'])} features {', '.join(s['features'])}")
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
                check=f"workers killed/restarted for memory over the whole run: {killed}"
                      + ("; HUNG (all workers paused), restarted by the watchdog in: " + ", ".join(
                          st["stage"] for st in out["stages"] if st.get("watchdog_restarts"))
                         if any(st.get("watchdog_restarts") for st in out["stages"]) else ""),
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
