"""Suite ``voi`` (runs only when named): every feature of the paper at the paper's VOI
size, as a user would run it, against the plain serial script in the same run.

    porevox bench voi --out bench-voi [--quick]

The volume: the twin's HPA 250 °C truth at **400 x 538 x 538** voxels (116 M; the
paper's VOI; quick: 100 x 134 x 134) of the demo voxel size, in a porevox volume
with the chunks porevox's ingest gives it. Three timings, each in its own process:

* ``porevox quantify VOL.zarr --labels truth --directions paper --force``: the CLI
  on its default embedded LocalCluster (this machine's layout), start-up included;
* ``pv.quantify(array, voxel_size=..., directions="paper")`` on the same volume as a
  NumPy array, on a LocalCluster of 2 workers x 6 GB;
* the reference: the serial script of every feature (the ``quantify`` suite's
  references in turn, one τ direction) on the whole array in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from .harness import isolated, local_cluster, log, peak, prepared, row, worker_peaks
from .quantify_suite import reference_all, setup

SHAPE = (400, 538, 538)
QUICK = (100, 134, 134)


def _setup(path: str, shape) -> dict:
    from porevox.engine.storage import choose_chunks

    chunks = choose_chunks(shape, np.uint8)
    made = setup(path, shape, chunks)
    return {**made, "chunks": list(chunks)}


def porevox_cli(path: str) -> dict:
    cmd = [os.path.join(os.path.dirname(sys.executable), "porevox"), "-q", "quantify", path,
           "--labels", "truth", "--directions", "paper", "--force"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    log(f"    porevox quantify (CLI): {seconds:.1f} s{' FAILED ' + error if error else ''}")
    return {"time_s": seconds, "times_s": [seconds], "peak": peak(), "error": error,
            "command": " ".join(cmd[1:])}


def porevox_api(npy: str, vs) -> dict:
    import porevox as pv

    solid = np.load(npy)
    with local_cluster(2, "6GB") as client:
        client.run(exec, "import porevox.pipelines.quantify")
        t0 = time.perf_counter()
        out = pv.quantify(solid, voxel_size=vs, directions="paper")
        seconds = time.perf_counter() - t0
        workers = worker_peaks(client)
    log(f"    pv.quantify (NumPy array, 2 workers x 6 GB): {seconds:.1f} s")
    keys = ("relative_density", "specific_surface_area", "strut_diameter_mean", "tortuosity",
            "mean_curvature_mean")
    return {"time_s": seconds, "times_s": [seconds], "peak": peak(), "workers": workers,
            "values": {k: out.get(k) for k in keys}}


def reference(npy: str, vs) -> dict:
    solid = np.load(npy) != 0
    reference_all(np.ascontiguousarray(solid[:24, :24, :24]), vs)   # warm-up
    t0 = time.perf_counter()
    out = reference_all(solid, vs)
    seconds = time.perf_counter() - t0
    log(f"    reference (serial script, every feature, one τ direction): {seconds:.1f} s")
    return {"time_s": seconds, "times_s": [seconds], "peak": peak(), "values": out}


def run(cfg) -> list[dict]:
    shape = cfg.pick(SHAPE, QUICK)
    rows = []
    with cfg.scratch("voi") as tmp:
        path = str(tmp / "voi.zarr")
        made = prepared("writing the VOI twin", _setup, path, shape, timeout=3600)
        vs = tuple(made["voxel_size"])
        ref = isolated(reference, path + ".npy", vs, timeout=7200)
        cli = isolated(porevox_cli, path, timeout=7200)
        api = isolated(porevox_api, path + ".npy", vs, timeout=7200)
        values = api.get("values") or {}
        refv = ref.get("values") or {}
        check = "; ".join(f"{k} {values.get(k) or float('nan'):.5g} vs {refv.get(k, float('nan')):.5g}"
                          for k in values)
        common = dict(shape=shape, dtype="uint8", ref=ref,
                      reference="the serial script of every feature (one τ direction), one process")
        rows.append(row("voi", "porevox quantify --directions paper (CLI, default cluster)", pv=cli,
                        check="goal: <= 5 minutes on two cores",
                        notes=f"chunks {made['chunks']}; D = {made['density']:.3f}; the CLI's start-up and "
                              "its LocalCluster included; five τ directions against the reference's one",
                        **common))
        rows.append(row("voi", "pv.quantify(NumPy array), 2 workers x 6 GB", pv=api, check=check,
                        notes="the array is embedded in the graph (a NumPy input); five τ directions "
                              "against the reference's one", **common))
    return rows


__all__ = ["run"]
