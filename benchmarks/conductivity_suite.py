"""Suite ``conductivity``: the effective-conductivity solver vs TauFactor.

``porevox.pipelines.transport.conductivity(solid, axis=0)`` (matrix-free CG with a
geometric-multigrid V-cycle, numba, float64, relative residual 1e-8; in the measuring
process, no cluster) vs ``taufactor.Solver(solid, device="cpu").solve()`` (TauFactor's
red-black over-relaxation in torch, float32, its default stop: flux spread across the
layers < 1 % and τ changing < 2e-3 per 100 iterations), both along the first axis
(TauFactor's conduction axis), on the same seeded structure: Gaussian-smoothed noise
(σ = 2 voxels) thresholded at 40 % porosity, 128³ and 256³ (quick: 64³). Both sides start from
the uint8 array in memory and use all cores (numba's threads; torch's intra-op
threads). Reported: times, τ (tortuosity factor) from each and their relative
difference, voxels/s, peak memory of each measuring process (ru_maxrss, which
includes the libraries: torch alone is a few hundred MiB) and, in the notes, the
growth of the peak during the solves (peak after the solves minus the process's
resident memory with its libraries imported, the input loaded and a warm-up done).

Then the solve in blocks (``method="distributed"``, 2 workers x 1 thread, read from a
Zarr array) against the whole solve in one process with both cores, in the same run:
256³ and 384³ on 4 GiB workers (goal: within 3x of the whole solve's time); 512³ on
2 x 1 GiB workers, whose whole solve needs 4.5 GiB (completes with no worker
restarted; its σ against the whole solve run with the machine's memory); and the
iterations for 1, 8, 64 and 512 blocks of one 256³ structure (quick: 96³, 192³ on
2 x 512 MiB, 64³).
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from .harness import GiB, MiB, best, isolated, log, peak, prepared, row, summarize_memory_events

DTYPE = "uint8"
POROSITY = 0.4
SIGMA = 2.0
SEED = 42
TIGHT = 1e-4  # TauFactor's conv_crit for the untimed accuracy check


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def make_structure(npy: str, shape) -> dict:
    """The seeded porous structure (1 = solid) as .npy; returns its solid fraction."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(SEED)
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), SIGMA)
    solid = (field > np.quantile(field, POROSITY)).astype(np.uint8)
    np.save(npy, solid)
    return {"solid_fraction": float(solid.mean())}


def porevox_conductivity(npy: str, repeat: int) -> dict:
    from porevox.pipelines.transport import conductivity

    solid = np.load(npy)
    conductivity(solid[:24, :24, :24], axis=0)  # warm-up: numba's cache, threads
    before = _rss_mib()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = conductivity(solid, axis=0)
        times.append(time.perf_counter() - t0)
        log(f"    porevox: {times[-1]:.2f} s, {out['iterations']} iterations, "
            f"tau {out['tortuosity_factor']:.6f}")
    return {"time_s": best(times), "times_s": times, "peak": peak(), "rss_before_mib": before,
            "tau": out["tortuosity_factor"], "relative_conductivity": out["relative_conductivity"],
            "iterations": out["iterations"], "residual": out["residual"],
            "flux_imbalance": out["flux_imbalance"], "method": out["method"]}


def taufactor_solve(npy: str, repeat: int, tight: bool) -> dict:
    from importlib.metadata import version

    import taufactor
    import torch

    solid = np.load(npy)
    small = taufactor.Solver(solid[:24, :24, :24], device="cpu")  # warm-up
    small.solve(verbose=False)
    before = _rss_mib()
    times, solver = [], None
    for _ in range(repeat):
        del solver
        t0 = time.perf_counter()
        solver = taufactor.Solver(solid, device="cpu")
        solver.solve(verbose=False)
        times.append(time.perf_counter() - t0)
        log(f"    taufactor: {times[-1]:.2f} s, {solver.iter} iterations, "
            f"tau {float(solver.tau[0]):.6f}")
    result = {"time_s": best(times), "times_s": times, "peak": peak(), "rss_before_mib": before}
    if tight:
        # Untimed, after the peak is taken: the same solve run on to a tight stop, to see
        # how much of the difference to porevox is TauFactor's default stopping tolerance.
        more = taufactor.Solver(solid, device="cpu")
        more.solve(verbose=False, conv_crit=TIGHT, iter_limit=100_000)
        result.update(tight_tau=float(more.tau[0]), tight_iterations=int(more.iter))
    return {**result,
            "tau": float(solver.tau[0]), "D_eff": float(solver.D_eff[0]),
            "iterations": int(solver.iter), "converged": bool(solver.converged),
            "torch_threads": torch.get_num_threads(), "version": version("taufactor")}


def run(cfg) -> list[dict]:
    rows = [_case(cfg, n) for n in cfg.pick((128, 256), (64,))]
    rows += [_blocks_case(cfg, n) for n in cfg.pick((256, 384), (96,))]
    rows.append(_beyond_memory_case(cfg, cfg.pick(512, 192), cfg.pick(GiB, 512 * MiB)))
    rows.append(_iterations_case(cfg, cfg.pick(256, 64)))
    return rows


# --------------------------------------------------------------------------- in blocks
# The solve in blocks on a LocalCluster (2 workers x 1 thread) against the whole solve
# in one process with both cores (numba's 2 threads), on the same structure read from
# the same Zarr array; then a volume whose blocks outgrow the workers' memory; then the
# iteration count for 1, 8, 64 and 512 blocks of one volume.
WORKERS = 2


def write_zarr(npy: str, path: str) -> dict:
    import zarr

    solid = np.load(npy)
    arr = zarr.create_array(path, shape=solid.shape, dtype="uint8", chunks=(128, 128, 128))
    arr[...] = solid
    return {"solid_fraction": float(solid.mean())}


def whole_solve(path: str, repeat: int) -> dict:
    import zarr

    from porevox.pipelines.transport import conductivity

    arr = zarr.open_array(path, mode="r")
    conductivity(arr[:24, :24, :24], axis=0)  # warm-up
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = conductivity(arr, axis=0, method="mg")
        times.append(time.perf_counter() - t0)
        log(f"    whole: {times[-1]:.2f} s, {out['iterations']} iterations")
    return {"time_s": best(times), "times_s": times, "peak": peak(), **_answer(out)}


def blocks_solve(path: str, repeat: int, memory: int, block_shape=None) -> dict:
    import os

    import zarr

    from porevox.pipelines.transport import conductivity

    from .harness import local_cluster, worker_memory_events, worker_peaks

    arr = zarr.open_array(path, mode="r")
    with local_cluster(WORKERS, memory) as client:
        client.run(exec, "import porevox.pipelines.transport_blocks")
        conductivity(arr[:32, :32, :32], axis=0, method="distributed", block_shape=(16, 16, 16))
        pids = client.run(os.getpid)
        times, out = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = conductivity(arr, axis=0, method="distributed", block_shape=block_shape)
            times.append(time.perf_counter() - t0)
            log(f"    in blocks: {times[-1]:.2f} s, {out['iterations']} iterations, {out['blocks']} blocks")
        after = client.run(os.getpid)
        spilled = client.run_on_scheduler(
            lambda dask_scheduler: sum(ws.memory.spilled for ws in dask_scheduler.workers.values()))
        return {"time_s": best(times), "times_s": times, "peak": peak(), "workers": worker_peaks(client),
                "memory_events": worker_memory_events(client), "blocks": out["blocks"],
                "restarted": sorted(set(pids.values()) - set(after.values())),
                "spilled_at_end_mib": spilled / MiB, "memory_limit_mib": memory / MiB, **_answer(out)}


def _answer(out: dict) -> dict:
    return {k: out[k] for k in ("relative_conductivity", "tortuosity_factor", "iterations", "residual",
                                "flux_imbalance", "method")}


def _structure(cfg, tmp, n):
    npy, path = tmp / "solid.npy", tmp / "solid.zarr"
    log(f"  writing the {n}^3 structure (porosity {POROSITY}, sigma {SIGMA}, seed {SEED})")
    prepared("writing the input", make_structure, str(npy), (n, n, n), timeout=cfg.timeout)
    made = prepared("writing the Zarr array", write_zarr, str(npy), str(path), timeout=cfg.timeout)
    return npy, path, made


def _blocks_case(cfg, n: int) -> dict:
    with cfg.scratch("conductivity-blocks") as tmp:
        _, path, made = _structure(cfg, tmp, n)
        log("  whole solve, one process")
        ref = isolated(whole_solve, str(path), cfg.repeat, timeout=cfg.timeout)
        log(f"  in blocks, {WORKERS} workers x 1 thread")
        pv = isolated(blocks_solve, str(path), cfg.repeat, 4 * GiB, timeout=cfg.timeout)
    diff = _diff(pv, ref)
    return row("conductivity", f"conductivity in blocks {n}^3 vs whole", shape=(n, n, n), dtype=DTYPE,
               pv=pv, ref=ref, reference="the whole solve (method='mg') in one process, 2 numba threads",
               check=f"sigma rel diff {diff:+.1e}" if diff is not None else "not compared",
               notes=(f"solid fraction {made.get('solid_fraction', float('nan')):.3f}; {pv.get('blocks')} "
                      f"blocks on {WORKERS} workers x 1 thread (4 GiB each), {pv.get('iterations')} "
                      f"iterations vs the whole solve's {ref.get('iterations')}; goal: within 3x of "
                      "the whole solve's time"),
               blocks=pv.get("blocks"), porevox_iterations=pv.get("iterations"),
               whole_iterations=ref.get("iterations"), sigma_rel_diff=diff)


def _diff(pv, ref):
    a, b = pv.get("relative_conductivity"), ref.get("relative_conductivity")
    return a / b - 1 if a and b else None


def _beyond_memory_case(cfg, n: int, memory: int) -> dict:
    with cfg.scratch("conductivity-big") as tmp:
        _, path, made = _structure(cfg, tmp, n)
        log(f"  in blocks, {WORKERS} workers x {memory / MiB:.0f} MiB")
        pv = isolated(blocks_solve, str(path), 1, memory, timeout=3 * 3600)
        log("  whole solve, one process (the answer to compare)")
        ref = isolated(whole_solve, str(path), 1, timeout=cfg.timeout)
    diff = _diff(pv, ref)
    need = 36 * n**3
    return row("conductivity", f"conductivity in blocks {n}^3, {WORKERS} workers x {memory / MiB:.0f} MiB",
               shape=(n, n, n), dtype=DTYPE, pv=pv, ref=ref,
               reference="the whole solve (method='mg') in one process with the machine's memory",
               check=(f"sigma rel diff {diff:+.1e}; workers restarted: {len(pv.get('restarted') or [])}"
                      if diff is not None else "not compared"),
               notes=(f"the whole solve needs {need / GiB:.1f} GiB, {need / (WORKERS * memory):.1f}x the "
                      f"workers' {WORKERS * memory / GiB:.1f} GiB; {pv.get('blocks')} blocks, "
                      f"{pv.get('iterations')} iterations (whole: {ref.get('iterations')}); spilled at the "
                      f"end {pv.get('spilled_at_end_mib', float('nan')):.0f} MiB; "
                      f"{summarize_memory_events(pv.get('memory_events'))}"),
               blocks=pv.get("blocks"), restarted=pv.get("restarted"), sigma_rel_diff=diff,
               porevox_iterations=pv.get("iterations"), whole_iterations=ref.get("iterations"))


def iterations_in_blocks(npy: str) -> dict:
    """Iterations of the solve in blocks (in this process: the count does not depend
    on where the blocks run) for 1, 8, 64 and 512 blocks."""
    from porevox.kernels.conductivity import effective_conductivity
    from porevox.pipelines.transport_blocks import conductivity_blocks

    solid = np.load(npy)
    ref = effective_conductivity(solid, axis=0)
    out = {"whole_iterations": ref.iterations, "by_blocks": {}}
    for parts in (1, 2, 4, 8):
        edge = -(-solid.shape[0] // parts)
        t0 = time.perf_counter()
        got, _ = conductivity_blocks(solid, (1.0, 1.0, 1.0), 0, edges=(edge,) * 3)
        out["by_blocks"][got["blocks"]] = {
            "iterations": got["iterations"], "s": time.perf_counter() - t0,
            "sigma_rel_diff": got["relative_conductivity"] / ref.relative_conductivity - 1}
        log(f"    {got['blocks']} blocks: {got['iterations']} iterations")
    return out


def _iterations_case(cfg, n: int) -> dict:
    with cfg.scratch("conductivity-iterations") as tmp:
        npy, _, _ = _structure(cfg, tmp, n)
        log("  iterations for 1, 8, 64 and 512 blocks")
        pv = isolated(iterations_in_blocks, str(npy), timeout=3600)
    by = pv.get("by_blocks") or {}
    text = ", ".join(f"{b} blocks: {v['iterations']}" for b, v in sorted(by.items()))
    worst = max((abs(v["sigma_rel_diff"]) for v in by.values()), default=float("nan"))
    return row("conductivity", f"conductivity in blocks {n}^3: iterations by blocks", shape=(n, n, n),
               dtype=DTYPE, pv={}, ref={}, reference="the whole solve's iterations",
               check=f"{text}; whole: {pv.get('whole_iterations')}; largest sigma rel diff {worst:.1e}",
               notes="CG to relative residual 1e-8; blocks of n/1, n/2, n/4, n/8 per axis, in one process",
               iterations_by_blocks={str(k): v for k, v in by.items()},
               whole_iterations=pv.get("whole_iterations"))


def _case(cfg, n: int) -> dict:
    shape = (n, n, n)
    with cfg.scratch("conductivity") as tmp:
        npy = tmp / "solid.npy"
        log(f"  writing the {n}^3 structure (porosity {POROSITY}, sigma {SIGMA}, seed {SEED})")
        made = prepared("writing the input", make_structure, str(npy), shape, timeout=cfg.timeout)
        log("  porevox conductivity")
        pv = isolated(porevox_conductivity, str(npy), cfg.repeat, timeout=cfg.timeout)
        if importlib.util.find_spec("taufactor") is None:  # not imported here: torch is big
            log("  taufactor is not installed (pip install taufactor, or porevox[peers]); skipped")
            ref = {"skipped": "TauFactor not installed (pip install taufactor, or porevox[peers])"}
        else:
            log("  taufactor")
            # TauFactor takes ~95 s per 256³ solve on 2 cores: one run there, and the
            # untimed tight-tolerance check only on the smaller sizes.
            big = n > 128
            ref = isolated(taufactor_solve, str(npy), 1 if big else cfg.repeat, not big,
                           timeout=cfg.timeout)
    tau_pv, tau_ref = pv.get("tau"), ref.get("tau")
    if tau_pv is not None and tau_ref is not None:
        diff = tau_pv / tau_ref - 1
        check = f"tau {tau_pv:.5f} vs TauFactor {tau_ref:.5f} (rel diff {diff:+.2e})"
    else:
        diff, check = None, f"not compared: {ref.get('skipped') or 'a side failed'}"
    tight = ref.get("tight_tau")
    tight_note = (f"; TauFactor run on to conv_crit {TIGHT} (untimed, {ref.get('tight_iterations')} "
                  f"iterations): tau {tight:.5f}, rel diff to porevox {tau_pv / tight - 1:+.2e}"
                  if tight and tau_pv else "")

    def growth(side):
        if "peak" not in side or side.get("rss_before_mib") is None:
            return "?"
        return f"{side['peak']['ru_maxrss_mib'] - side['rss_before_mib']:.0f} MiB"

    notes = (f"solid fraction {made.get('solid_fraction', float('nan')):.3f}; porevox: "
             f"{pv.get('method')} CG, {pv.get('iterations')} iterations to relative residual "
             f"{pv.get('residual', float('nan')):.1e}, flux imbalance "
             f"{pv.get('flux_imbalance', float('nan')):.1e}, peak growth during the solves "
             f"{growth(pv)}; TauFactor {ref.get('version')}: {ref.get('iterations')} iterations "
             f"(converged: {ref.get('converged')}), {ref.get('torch_threads')} torch threads, "
             f"peak growth {growth(ref)}, {len(ref.get('times_s') or [])} timed run(s){tight_note}; "
             "both along axis 0, from the array in memory")
    return row("conductivity", f"conductivity {n}^3", shape=shape, dtype=DTYPE, pv=pv, ref=ref,
               reference='taufactor.Solver(solid, device="cpu").solve() (defaults)',
               check=check, notes=notes, tau_porevox=tau_pv, tau_taufactor=tau_ref,
               tau_rel_diff=diff, tau_taufactor_tight=tight,
               porevox_iterations=pv.get("iterations"), taufactor_iterations=ref.get("iterations"))


__all__ = ["run"]
