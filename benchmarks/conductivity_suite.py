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
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from .harness import best, isolated, log, peak, prepared, row

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
    return [_case(cfg, n) for n in cfg.pick((128, 256), (64,))]


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
