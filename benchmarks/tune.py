"""``porevox bench --tune``: measure worker / thread layouts and chunk sizes on the
machine (or cluster) at hand and write the fastest into the tuned configuration
(:mod:`porevox.engine.tuning`) that later runs pick up.

One digital-twin volume (HPA 250 °C at the demo voxel size, uint8, image and truth;
64 x 384 x 384, quick 48 x 192 x 192) is made once. Then, per candidate layout, a
fresh spawned process starts that LocalCluster with
:func:`porevox.engine.cluster.cluster` (with a `scheduler`: attaches to the cluster
as it is, the only candidate) and, per chunk target, writes a fresh copy of the
volume with chunks of that size (untimed) and times the main stages on it:

* ``segment otsu`` and ``segment hybrid`` (:func:`porevox.pipelines.segment_volume`),
* ``quantify`` of the truth labels with the default options
  (:func:`porevox.pipelines.quantify.quantify_volume`).

The chunk target is also the chunk budget the stages size their compute blocks by
(:func:`porevox.engine.cluster.chunk_bytes_budget`): the measuring process points
``POREVOX_CONFIG`` at a candidate file, exactly as a later run reads the tuned one.
Every cluster first runs the stages once on a small crop (imports, numba caches),
untimed. Timings are wall clock, one run per case (``repeat``: the best of more): on a
shared machine they are noisy. The layout and chunk target of the fastest total are
written with :func:`porevox.engine.tuning.save_tuned`; ``tune.md`` (the table, best
marked) and ``tune.json`` go to the output folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .harness import MiB, isolated, log, prepared

SPEC = ("HPA", 250)
SHAPE = (64, 384, 384)
QUICK_SHAPE = (48, 192, 192)
CHUNK_MIB = (8, 16, 32, 64)
QUICK_CHUNK_MIB = (8, 64)
STAGES = ("segment otsu", "segment hybrid", "quantify")
WARM_SHAPE = (16, 64, 64)


# --------------------------------------------------------------------------- candidates
def candidate_layouts(cores: int) -> list[tuple[int, int]]:
    """(workers, threads per worker) using all `cores`: every split up to four of
    them, else 1 x C, C/4 x 4, C/2 x 2 and C x 1 (where they divide) and the
    untuned default layout."""
    cores = max(1, int(cores))
    pairs = [(cores // t, t) for t in range(cores, 0, -1) if cores % t == 0]
    if len(pairs) <= 4:
        return pairs
    n_default = min(cores, 4)
    picks = {(1, cores), (n_default, cores // n_default), (cores, 1)}
    picks |= {(cores // t, t) for t in (4, 2) if cores % t == 0}
    return sorted(picks, key=lambda p: -p[1])


def _memory_per_worker(n_workers: int) -> int:
    """80 % of this machine's memory shared among `n_workers`, as untuned runs do."""
    import psutil

    return int(psutil.virtual_memory().total * 0.8 / n_workers)


# --------------------------------------------------------------------------- data
def make_twin(folder: str, shape) -> dict:
    """The twin's image and truth as ``image.npy`` and ``truth.npy`` in `folder`."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    model = FibSemModel()
    ms, threshold = prepare(SampleSpec(*SPEC, 0, "demo", 0), model, shape=tuple(shape))
    truth, _, image = render_box(ms, model, 0, tuple(slice(0, n) for n in shape), threshold, "uint8")
    np.save(Path(folder) / "image.npy", image.astype(np.uint8))
    np.save(Path(folder) / "truth.npy", truth.astype(np.uint8))
    return {"voxel_size": list(ms.voxel_size), "density": float(truth.mean())}


def write_copy(src: Path, path: Path, voxel_size, target_bytes: int, crop=None) -> tuple[int, ...]:
    """A fresh volume at `path`: the twin's image and ``labels/truth`` (cropped to
    `crop` where given) in chunks of about `target_bytes`. Returns the chunks."""
    from porevox.engine import create_volume
    from porevox.engine.storage import AXES, LABELS, choose_chunks

    image, truth = (np.load(src / name, mmap_mode="r") for name in ("image.npy", "truth.npy"))
    if crop is not None:
        image, truth = (a[tuple(slice(0, n) for n in crop)] for a in (image, truth))
    chunks = choose_chunks(image.shape, np.uint8, target_bytes)
    vol = create_volume(path, image.shape, "uint8", voxel_size, chunks=chunks)
    vol.image[:] = np.asarray(image)
    arr = vol.group.create_array(f"{LABELS}/truth", shape=image.shape, dtype="uint8", chunks=chunks,
                                 fill_value=0, dimension_names=AXES)
    arr[:] = np.asarray(truth)
    return tuple(int(c) for c in chunks)


def run_stages(path: Path) -> dict:
    """Wall seconds of each of ``STAGES`` on the volume at `path` (forced: nothing is
    resumed)."""
    from porevox.pipelines.quantify import quantify_volume
    from porevox.pipelines.segment import segment_volume

    calls = {"segment otsu": lambda: segment_volume(path, "otsu", force=True),
             "segment hybrid": lambda: segment_volume(path, "hybrid", force=True),
             "quantify": lambda: quantify_volume(path, labels="truth", force=True)}
    seconds = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        calls[stage]()
        seconds[stage] = time.perf_counter() - t0
    return seconds


# --------------------------------------------------------------------------- measuring
def measure_layout(src: str, work: str, voxel_size, layout, chunk_mib, scheduler=None,
                   repeat: int = 1) -> dict:
    """In a fresh process: start the layout's LocalCluster (or attach to
    `scheduler`), warm it up, then time :func:`run_stages` per chunk target (the
    best of `repeat` runs per stage)."""
    import warnings

    from porevox.engine import tuning
    from porevox.engine.cluster import chunk_bytes_budget, cluster

    src, work = Path(src), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    candidate = work / "candidate.yaml"
    # the stages size their blocks by chunk_bytes_budget(), whose default is the tuned
    # file's: point this process (and the workers it spawns) at the candidate's
    os.environ[tuning.ENV] = str(candidate)

    def propose(n_workers, threads, mib):
        tuning.save_tuned(tuning.make_config(n_workers, threads, mib * MiB, scheduler), candidate)

    kwargs = {}
    if scheduler is None:
        n_workers, threads = layout
        kwargs = {"n_workers": n_workers, "threads_per_worker": threads,
                  "memory_limit": _memory_per_worker(n_workers)}
        propose(n_workers, threads, chunk_mib[0])
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # FeatureWarnings of the small warm-up crop
        with cluster(scheduler, dashboard_address="127.0.0.1:0", **kwargs) as client:
            if scheduler is None:
                client.wait_for_workers(layout[0], timeout=120)
            else:
                info = client.scheduler_info()["workers"].values()
                layout = (len(info), max((w.get("nthreads", 1) for w in info), default=1))
                propose(*layout, chunk_mib[0])
            memory = min((w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()),
                         default=0)
            warm = work / "warm-up.zarr"
            shutil.rmtree(warm, ignore_errors=True)
            write_copy(src, warm, voxel_size, 8 * MiB, crop=WARM_SHAPE)
            t0 = time.perf_counter()
            run_stages(warm)
            log(f"    {layout[0]} x {layout[1]}: warm-up {time.perf_counter() - t0:.1f} s")
            shutil.rmtree(warm, ignore_errors=True)
            for mib in chunk_mib:
                propose(*layout, mib)
                path = work / f"twin-{layout[0]}x{layout[1]}-{mib}MiB.zarr"
                shutil.rmtree(path, ignore_errors=True)
                chunks = write_copy(src, path, voxel_size, mib * MiB)
                if hasattr(os, "sync"):
                    os.sync()   # untimed: the copy's write-back must not slow the stages
                runs = [run_stages(path) for _ in range(max(1, int(repeat)))]
                seconds = {stage: min(r[stage] for r in runs) for stage in STAGES}
                rows.append({"n_workers": layout[0], "threads_per_worker": layout[1],
                             "chunk_mib": mib, "chunk_bytes": mib * MiB, "chunks": list(chunks),
                             "budget_bytes": chunk_bytes_budget(), "memory_limit": memory,
                             "seconds": seconds, "total_s": sum(seconds.values())})
                log(f"    {layout[0]} x {layout[1]}, {mib} MiB chunks {chunks}: "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
                shutil.rmtree(path, ignore_errors=True)
    return {"rows": rows, "layout": list(layout)}


# --------------------------------------------------------------------------- report
def _rates(row: dict, voxels: int) -> dict:
    row = dict(row)
    row["voxels_per_s"] = {k: voxels / v if v else None for k, v in row["seconds"].items()}
    row["total_voxels_per_s"] = voxels * len(row["seconds"]) / row["total_s"] if row["total_s"] else None
    return row


def _runs(repeat: int) -> str:
    return "one run" if repeat == 1 else f"best of {repeat} runs"


def markdown(result: dict) -> str:
    """The measured table (best marked) with what was measured and how."""
    shape, m = result["shape"], result["machine"]
    lines = ["# porevox bench --tune", "",
             f"Machine {m['hostname']}: {m['cores']} cores, {m['memory'] / 2**30:.1f} GiB"
             + (f"; cluster {result['scheduler']}" if result["scheduler"] else "; LocalCluster per layout")
             + f". Volume: digital twin {SPEC[0]} {SPEC[1]} °C, {'x'.join(map(str, shape))} uint8 "
             f"({math.prod(shape) / MiB:.1f} MiB), image + truth, written afresh per case with "
             "chunks of the target size, which is also the stages' chunk budget.",
             "",
             f"Wall seconds, {_runs(result.get('repeat', 1))} per case after a warm-up in the same "
             "cluster (noisy on a shared machine); Mvox/s = voxels / seconds (total: voxels x stages / total "
             "seconds). Stages: segment otsu, segment hybrid, quantify (labels truth, default "
             "options).", ""]
    head = ["layout (workers x threads)", "chunk target MiB", "stored chunks"]
    for stage in STAGES:
        head += [f"{stage} s", f"{stage} Mvox/s"]
    head += ["total s", "total Mvox/s", "best"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    best = result.get("best")
    for r in result["rows"]:
        cells = [f"{r['n_workers']} x {r['threads_per_worker']}", str(r["chunk_mib"])]
        if r.get("error"):
            cells += ["—"] * (len(head) - 4) + [f"ERROR: {r['error'][:120]}"]
        else:
            cells.append("x".join(map(str, r["chunks"])))
            for stage in STAGES:
                cells += [f"{r['seconds'][stage]:.2f}", f"{r['voxels_per_s'][stage] / 1e6:.2f}"]
            cells += [f"{r['total_s']:.2f}", f"{r['total_voxels_per_s'] / 1e6:.2f}",
                      "**best**" if r is best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is not None:
        where = result.get("config_path") or "not written (dry run)"
        n, t = best["n_workers"], best["threads_per_worker"]
        lines.append(f"Best: {n} worker{'s' * (n != 1)} x {t} thread{'s' * (t != 1)}, "
                     f"chunks of {best['chunk_mib']} MiB ({best['total_s']:.2f} s). "
                     f"Tuned configuration: {where}.")
    return "\n".join(lines) + "\n"


def tune(out_dir, quick: bool = False, scheduler: str | None = None, *, shape=None,
         chunk_mib=None, layouts=None, repeat: int = 1, dry_run: bool = False) -> dict:
    """Measure every candidate layout x chunk target, write the fastest as the tuned
    configuration (unless `dry_run`) and ``tune.md`` / ``tune.json`` in `out_dir`.

    Parameters
    ----------
    out_dir : path
        Folder for the results and the scratch volumes (removed afterwards). With a
        `scheduler`, its workers must reach it (a shared file system).
    quick : bool
        A smaller volume and two chunk targets (8 and 64 MiB).
    scheduler : str or None
        Measure the running cluster at this address as it is (the only layout),
        instead of LocalClusters of :func:`candidate_layouts` on this machine.
    shape, chunk_mib, layouts
        Override the volume shape (z, y, x), the chunk targets (MiB) and the
        (workers, threads) layouts.
    repeat : int
        Runs per case; the best per stage is kept (more runs: less noise, longer).
    dry_run : bool
        Measure and report, but leave the tuned configuration alone.

    Returns
    -------
    dict with ``rows`` (one per layout x chunk target: ``seconds`` and
    ``voxels_per_s`` per stage, ``total_s``, or ``error``), ``best`` (the fastest row),
    ``config`` (what was, or would be, saved), ``config_path`` (None on a dry run),
    ``markdown`` and the paths of ``tune_md`` and ``tune_json``.
    """
    from porevox.engine import tuning
    from porevox.errors import PorevoxError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in (shape or (QUICK_SHAPE if quick else SHAPE)))
    chunk_mib = [int(m) for m in (chunk_mib or (QUICK_CHUNK_MIB if quick else CHUNK_MIB))]
    if scheduler is not None:
        layouts = [None]
    else:
        layouts = [tuple(p) for p in (layouts or candidate_layouts(os.cpu_count() or 1))]
    voxels = math.prod(shape)
    work = out / f"tmp-tune-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    timeout = 300.0 if quick else 1200.0
    rows = []
    try:
        log(f"[tune] twin volume {shape}")
        made = prepared("making the twin volume", make_twin, str(work), shape, timeout=timeout)
        for layout in layouts:
            name = "the cluster" if layout is None else f"{layout[0]} x {layout[1]}"
            log(f"[tune] {name}: chunk targets {', '.join(map(str, chunk_mib))} MiB")
            got = isolated(measure_layout, str(work), str(work / "cases"), made["voxel_size"], layout,
                           chunk_mib, scheduler, repeat, timeout=timeout * max(1, int(repeat)))
            done = {r["chunk_mib"]: r for r in got.get("rows", [])}
            n_workers, threads = got.get("layout") or layout or (0, 0)
            for mib in chunk_mib:
                if mib in done:
                    rows.append(_rates(done[mib], voxels))
                else:
                    rows.append({"n_workers": n_workers, "threads_per_worker": threads,
                                 "chunk_mib": mib, "chunk_bytes": mib * MiB,
                                 "error": got.get("error") or "not measured"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in rows if not r.get("error")]
    best = min(ok, key=lambda r: r["total_s"]) if ok else None
    result = {"shape": list(shape), "quick": quick, "scheduler": scheduler, "machine": tuning.machine(),
              "chunk_mib": chunk_mib, "repeat": max(1, int(repeat)), "rows": rows, "best": best,
              "config": None, "config_path": None}
    if best is not None:
        result["config"] = tuning.make_config(best["n_workers"], best["threads_per_worker"],
                                              best["chunk_bytes"], scheduler)
        if not dry_run:
            result["config_path"] = str(tuning.save_tuned(result["config"]))
    result["markdown"] = markdown(result)
    result["tune_md"] = str(out / "tune.md")
    result["tune_json"] = str(out / "tune.json")
    Path(result["tune_md"]).write_text(result["markdown"])
    Path(result["tune_json"]).write_text(
        json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=str) + "\n")
    if best is None:
        why = rows[0].get("error") if rows else "none ran"
        raise PorevoxError(f"bench --tune: no case finished ({why}); see {result['tune_md']}")
    return result


__all__ = ["CHUNK_MIB", "QUICK_CHUNK_MIB", "STAGES", "candidate_layouts", "markdown", "tune"]
