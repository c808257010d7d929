"""Suite ``scale`` (runs only when named): every feature of the paper on a twin far
larger than the workers, and the block efficiency of each.

    porevox bench scale --out bench-scale [--quick]

The run: the tiled twin of the ``outofcore`` suite (HPA 250 °C, the demo voxel size)
at **1024³** (``$POREVOX_BENCH_SCALE_SHAPE`` = ``ZxYxX``; quick: 128³) rendered on a
LocalCluster of 2 workers x 1 thread x **1 GiB** (``$POREVOX_BENCH_SCALE_MEMORY``),
then ``quantify_volume(labels="truth", features=[group], directions="paper")`` once
per feature group — density, surface, slices, curvature, struts (the distance
transform included) and tortuosity along the paper's five directions — each a stage
with its time, the workers' peaks against their limit, kills and restarts, and the
driver's peak. Every group's stage also runs the local pass (density: connected
components), whose own stage time is subtracted for the group's share.

The reference: the same kernel on the whole of a 256³ crop of the twin in one process
(``components.block_components``, ``integral.surface_counts`` + ``euler_counts``,
``descriptors2d.slice_counts``, ``curvature.interface_curvature``,
``struts.strut_diameters``, ``tortuosity.direction_tortuosity`` per direction).
The block efficiency of a feature = its M voxels/s per worker core in blocks over
the whole kernel's M voxels/s on one core (1: blocks cost nothing; goal >= 0.5).
The projection to 2048³ on 64 workers scales each group's measured per-core rate by
8x the voxels over 32x the cores (perfect scaling across blocks; the tortuosity
solver's front bounds its parallelism, so its projection is a lower bound).

Notes (2 shared cores, the twin HPA 250 °C, 2 x 1 GiB):

* 512³, before 2026-12-07: 1023 s for every feature; struts 365 s in 512 blocks of
  64³ with halos up to 43 x 56 x 56 (efficiency 0.07: the thinning's halo of two
  radii makes a block ~17 times its core), tortuosity 603 s (0.07; +z alone took
  2 809 visits of 32 blocks, re-marching blocks for round-off drops).
* 512³, 2026-12-07, after (a) the struts blocks read the features and smooth the
  solid only where the core's chords reach (``struts.ray_depth``, about half the
  thinning's halo), so a task's budget holds blocks of 64 x 128 x 128 (128 blocks;
  the per-voxel need 52 -> 18 bytes in the thinning's box and 34 in the chords'), and
  (b) the fast-marching update re-opening a voxel only for a drop above a relative
  1e-12: 314 s; struts 149 s (0.18), tortuosity 113 s (0.39), density 0.42, surface
  0.87, slices 1.07, curvature 0.74. Worker peaks up to 891 MiB of 1024.
* 1024³, 2026-12-07 (the default run): 2530 s (42 min); no worker killed, peaks
  401-519 MiB, driver 347 MiB. Efficiency density 0.46, surface 0.79, slices 1.58,
  curvature 0.67, struts 0.17 (1211 s: the transform, then 1024 blocks of 128 x 128
  x 64), tortuosity 0.36 (915 s; four directions together, then +z, as the scratch's
  disk held four). The first attempt stopped in the distance transform: Dask's
  in-memory rechunk between its passes had the workers killed (KilledWorker on a
  ``rechunk-split`` task); the passes now go through the volume's store.
* What bounds struts: a block's thinning must see two radii beyond its core (its
  result there is scikit-image's whole-volume skeleton only then), and the thinning
  is two thirds of the kernel; at 1 GiB a task holds ~9 M voxels of thinning box, so
  the core is 1/9 of it. Reaching 0.5 at this memory needs the thinning itself to
  run across blocks (a wavefront of slabs per sub-iteration, each slab's state kept
  on a worker), not a larger halo. The 1024³ run's blocks used about half the memory
  they were sized for (peaks 519 MiB against ~640 planned): cores of 128³ would fit.
* What bounds tortuosity: the voxels accepted are 1.07 x the whole solve's, but each
  of the ~6 visits of a block passes over its whole box (read, frame, write), 2.4 x
  the whole solve's time per voxel in all.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .harness import isolated, local_cluster, log, peak, row
from .outofcore_suite import Monitor, _stage, _workers_now, prepare_tile, render_twin

MEMORY_ENV = "POREVOX_BENCH_SCALE_MEMORY"
SHAPE_ENV = "POREVOX_BENCH_SCALE_SHAPE"
TIMEOUT_ENV = "POREVOX_BENCH_SCALE_TIMEOUT_S"
N_WORKERS = 2
GROUPS = ("density", "surface", "slices", "curvature", "struts", "tortuosity")
REFERENCE_SIDE = 256
MiB, GiB = 2**20, 2**30


def settings(cfg) -> dict:
    from dask.utils import parse_bytes

    memory = int(parse_bytes(os.environ.get(MEMORY_ENV) or "1GiB"))
    if os.environ.get(SHAPE_ENV):
        shape = tuple(int(s) for s in os.environ[SHAPE_ENV].lower().split("x"))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"${SHAPE_ENV} must be ZxYxX; got {os.environ[SHAPE_ENV]!r}")
    else:
        shape = cfg.pick((1024, 1024, 1024), (128, 128, 128))
    return {"memory": memory, "shape": shape,
            "timeout": float(os.environ.get(TIMEOUT_ENV) or 3 * 3600)}


def _reference(path: str, side: int) -> dict:
    """Each group's kernel on the whole ``side``³ crop of the twin's truth, here."""
    from porevox.engine import open_volume
    from porevox.kernels import components, curvature, descriptors2d, integral, struts
    from porevox.pipelines.quantify import PAPER_DIRECTIONS
    from porevox.pipelines.tortuosity import direction_tortuosity

    vol = open_volume(path, mode="r")
    truth = vol.array("labels/truth")
    n = tuple(min(side, s) for s in truth.shape)
    solid = np.asarray(truth[tuple(slice(0, k) for k in n)])
    vs = tuple(vol.voxel_size)
    sigma = curvature.default_sigma(vs)
    runs = {
        "density": lambda: components.merge_components([components.block_components(solid)]),
        "surface": lambda: (integral.surface_counts(solid), integral.euler_counts(solid)),
        "slices": lambda: descriptors2d.slice_counts(solid),
        "curvature": lambda: curvature.interface_curvature(
            solid, voxel_size=vs, sigma=sigma, edges=curvature.curvature_edges(vs, sigma)),
        "struts": lambda: struts.strut_diameters(solid, voxel_size=vs, values=False),
        "tortuosity": lambda: [direction_tortuosity(solid, direction=d, voxel_size=vs, order=2,
                                                    last_fraction=0.25) for d in PAPER_DIRECTIONS],
    }
    struts.strut_diameters(solid[:32, :32, :32], voxel_size=vs)        # compile outside the timing
    out = {"shape": list(n), "seconds": {}}
    for group, func in runs.items():
        t0 = time.perf_counter()
        func()
        out["seconds"][group] = time.perf_counter() - t0
        log(f"  reference {group} (whole {'x'.join(map(str, n))}, one process): "
            f"{out['seconds'][group]:.2f} s")
    out["peak"] = peak()
    return out


def run_scale(path: str, shape, memory: int) -> dict:
    """The measuring process: render the twin, quantify it group by group."""
    from porevox.pipelines.quantify import quantify_volume

    logs, model, ms, threshold, _ = prepare_tile(shape)
    shape = tuple(int(s) for s in shape)
    stages = []
    with local_cluster(N_WORKERS, memory) as client:
        client.run(exec, "import porevox.pipelines.quantify, porevox.synthetic.fibsem")
        monitor = Monitor(client)
        monitor.start()
        try:
            render = _stage(client, monitor, logs, "render twin (set-up)",
                            lambda: render_twin(path, shape, ms, model, threshold, 0))
            stages.append(render)
            if not render["error"]:
                for group in GROUPS:
                    st = _stage(client, monitor, logs, f"quantify {group}",
                                lambda g=group: quantify_volume(path, labels="truth", features=[g],
                                                                directions="paper", force=True))
                    st["group"] = group
                    stages.append(st)
        finally:
            monitor.halt.set()
            monitor.join(timeout=5)
        workers_end = _workers_now(client)
    for st in stages:
        v = st.pop("value", None)
        if isinstance(v, dict):
            st["result"] = {k: val for k, val in v.items() if not isinstance(val, (list, dict))
                            or k == "tortuosity_by_axis"}
    return {"stages": stages, "peak": peak(), "workers_end": {k: list(v) for k, v in workers_end.items()}}


def run(cfg) -> list[dict]:
    s = settings(cfg)
    shape, memory = s["shape"], s["memory"]
    voxels = math.prod(shape)
    log(f"  scale: twin {'x'.join(map(str, shape))} ({voxels / GiB:.2f} G voxels) on {N_WORKERS} workers "
        f"x 1 thread x {memory / MiB:.0f} MiB; every feature, tortuosity along the paper's five directions")
    with cfg.scratch("scale") as tmp:
        path = str(tmp / "twin.zarr")
        out = isolated(run_scale, path, shape, memory, timeout=s["timeout"])
        ref = isolated(_reference, path, REFERENCE_SIDE, timeout=3600) if out.get("stages") else {}
    if out.get("error") and not out.get("stages"):
        return [row("scale", "(run)", shape=shape, dtype="uint8", pv=out, ref={},
                    reference="the same kernels whole on 256³ in one process")]
    stages = {st.get("group", st["stage"]): st for st in out["stages"]}
    local_s = stages["density"]["time_s"] if "density" in stages else 0.0
    ref_voxels = math.prod(ref.get("shape") or [1])
    rows, total_s, killed = [], 0.0, 0
    for group in GROUPS:
        st = stages.get(group)
        if st is None:
            continue
        own = st["time_s"] - (0.0 if group == "density" else local_s)
        total_s += st["time_s"]
        workers = st["workers"]
        peak_mib = max([w["vmhwm_mib"] or 0 for w in workers] + [w["sampled_rss_max_mib"] for w in workers],
                       default=0)
        killed += st["workers_killed"]
        ref_s = (ref.get("seconds") or {}).get(group)
        rate = voxels / own / N_WORKERS if own > 0 else None              # per core, in blocks
        ref_rate = ref_voxels / ref_s if ref_s else None                  # one core, whole
        efficiency = rate / ref_rate if rate and ref_rate else None
        projected = (own * 8 * N_WORKERS / 64) if own > 0 else None
        result = st.get("result") or {}
        keys = ("relative_density", "percolating_fraction", "specific_surface_area", "specific_perimeter_2d",
                "mean_curvature_mean", "gaussian_curvature_mean", "strut_diameter_mean",
                "strut_unmeasured_solid_fraction", "tortuosity")
        check = "; ".join(f"{k} {result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float)))
        if isinstance(result.get("tortuosity_by_axis"), dict):
            check += "; τ by direction " + ", ".join(f"{d} {t:.4f}" for d, t in
                                                      result["tortuosity_by_axis"].items())
        rows.append(row(
            "scale", f"quantify {group}", shape=shape, dtype="uint8",
            pv={"time_s": st["time_s"], "times_s": [st["time_s"]], "peak": st["driver_peak"],
                "workers": workers, "error": st["error"]},
            ref={}, reference=f"the same kernel whole on {'x'.join(map(str, ref.get('shape') or []))} in one "
                              f"process: {ref_s:.2f} s" if ref_s else "the same kernel whole (not run)",
            check=check,
            notes="; ".join(filter(None, [
                f"own time {own:.1f} s (the stage less the local pass's {local_s:.1f} s)"
                if group != "density" else "",
                f"block efficiency {efficiency:.2f} (M voxels/s per core in blocks {rate / 1e6:.2f} over "
                f"whole {ref_rate / 1e6:.2f})" if efficiency else "",
                f"worker peak {peak_mib:.0f} of {memory / MiB:.0f} MiB; "
                f"killed/restarted {st['workers_killed']}",
                f"driver RSS max {st['driver_rss_max_mib']:.0f} MiB",
                f"projected 2048³ on 64 workers: {projected / 60:.1f} min" if projected else "",
                "HUNG: " + " | ".join(st["stalls"]) if st.get("stalls") else "",
                " | ".join(line[:200] for line in st["porevox_log"] if any(
                    k in line for k in ("struts", "tortuosity", "distance")))[:800],
            ])),
            block_efficiency=efficiency, own_s=own, per_core_voxels_per_s=rate,
            reference_voxels_per_s_one_core=ref_rate, projected_2048_64_workers_s=projected,
            worker_peak_mib=peak_mib, memory_limit_mib=memory / MiB, workers_killed=st["workers_killed"],
            driver_rss_max_mib=st["driver_rss_max_mib"], result=result))
    rows.append(row(
        "scale", "total: every feature", shape=shape, dtype="uint8",
        pv={"time_s": total_s, "times_s": [total_s], "peak": out.get("peak")}, ref={},
        reference="goal: <= 1.5 h on two cores, no worker killed",
        check=f"workers killed/restarted for memory: {killed}",
        notes=f"driver ru_maxrss {(out.get('peak') or {}).get('ru_maxrss_mib', 0):.0f} MiB; one run on 2 "
              "shared cores; the render (set-up) not counted",
        workers_killed=killed))
    return rows


__all__ = ["run", "run_scale", "settings"]
