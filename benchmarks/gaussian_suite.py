"""Suite ``gaussian``: blockwise Gaussian smoothing with halos.

``porevox.engine.map_kernel(porevox.kernels.gaussian, vol.to_dask(),
gaussian_depth(sigma), np.float32, sigma=sigma)`` computed on a fresh 2-worker
LocalCluster (1 thread each), reading the volume from its Zarr store and gathering
the float32 result in the driver, vs ``scipy.ndimage.gaussian_filter(
arr.astype(np.float32), sigma, mode="nearest")`` on the whole volume already in
memory. uint16 256x512x512 (128 MiB; quick 64x256x256), sigma 2 voxels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .harness import (
    best,
    graph_size,
    isolated,
    local_cluster,
    log,
    peak,
    prepared,
    row,
    summarize_memory_events,
    synth_volume,
    worker_memory_events,
    worker_peaks,
    write_npy,
)

DTYPE = "uint16"
SIGMA = 2.0


def setup(npy: str, zarr_path: str, shape, chunk_bytes: int) -> dict:
    """The input as .npy (reference) and as a porevox volume (threaded ingest)."""
    import porevox.engine as pe

    info = write_npy(Path(npy), shape, DTYPE)
    chunks = pe.choose_chunks(shape, DTYPE, chunk_bytes)
    pe.ingest(npy, zarr_path, (1.0, 1.0, 1.0), chunks=chunks)
    return {"npy": info, "chunks": list(chunks)}


def porevox_gaussian(zarr_path: str, sigma: float, repeat: int, result_path: str) -> dict:
    import porevox.engine as pe
    from porevox import kernels

    depth = kernels.gaussian_depth(sigma)
    with local_cluster(2, "4GB") as client:
        client.run(exec, "import scipy.ndimage")  # warm-up: scipy on every worker
        small = synth_volume((24, 32, 32), DTYPE)
        pe.map_kernel(kernels.gaussian, pe.as_dask(small, chunks=(12, 32, 32)), depth, np.float32,
                      sigma=sigma).compute()
        times, graph_times, compute_times, result = [], [], [], None
        for _ in range(repeat):
            del result
            t0 = time.perf_counter()
            vol = pe.open_volume(zarr_path, mode="r")
            darr = pe.map_kernel(kernels.gaussian, vol.to_dask(), depth, np.float32, sigma=sigma)
            n_tasks = graph_size(darr)
            t1 = time.perf_counter()
            result = darr.compute()
            t2 = time.perf_counter()
            times.append(t2 - t0)
            graph_times.append(t1 - t0)
            compute_times.append(t2 - t1)
            log(f"    porevox gaussian: graph {t1 - t0:.2f} s, compute {t2 - t1:.2f} s")
        workers = worker_peaks(client)
        events = worker_memory_events(client)
        chunks = [c[0] for c in darr.chunks]
    driver = peak()
    np.save(result_path, result)
    return {"time_s": best(times), "times_s": times, "graph_s": best(graph_times),
            "compute_s": best(compute_times), "peak": driver, "workers": workers,
            "memory_events": events, "n_tasks": n_tasks, "chunks": chunks,
            "depth": list(depth)}


def reference_gaussian(npy: str, sigma: float, repeat: int, porevox_result: str) -> dict:
    from scipy import ndimage

    arr = np.load(npy)
    ndimage.gaussian_filter(arr[:8, :16, :16].astype(np.float32), sigma, mode="nearest")
    times, ref = [], None
    for _ in range(repeat):
        del ref
        t0 = time.perf_counter()
        ref = ndimage.gaussian_filter(arr.astype(np.float32), sigma, mode="nearest")
        times.append(time.perf_counter() - t0)
    result = {"time_s": best(times), "times_s": times, "peak": peak()}
    # Compare with porevox's result (after the peak is taken), slab by slab.
    if Path(porevox_result).exists():
        pv = np.load(porevox_result, mmap_mode="r")
        if pv.shape == ref.shape:
            result["max_abs_diff"] = max(
                float(np.abs(np.asarray(pv[z:z + 16]) - ref[z:z + 16]).max())
                for z in range(0, ref.shape[0], 16))
            result["max_abs_ref"] = float(np.abs(ref).max())
        else:
            result["max_abs_diff_error"] = f"shapes differ: {pv.shape} vs {ref.shape}"
    return result


def run(cfg) -> list[dict]:
    shape = cfg.pick((256, 512, 512), (64, 256, 256))
    with cfg.scratch("gaussian") as tmp:
        npy, zarr_path, result = tmp / "volume.npy", tmp / "volume.zarr", tmp / "porevox.npy"
        log(f"  writing {shape} {DTYPE} npy and zarr")
        prepared("writing the input", setup, str(npy), str(zarr_path), shape, cfg.chunk_bytes,
                 timeout=cfg.timeout)
        log(f"  gaussian sigma={SIGMA}")
        pv = isolated(porevox_gaussian, str(zarr_path), SIGMA, cfg.repeat, str(result),
                      timeout=cfg.timeout)
        ref = isolated(reference_gaussian, str(npy), SIGMA, cfg.repeat, str(result),
                       timeout=cfg.timeout)
    diff = ref.get("max_abs_diff")
    check = (f"max abs diff {diff:.3g} (of max {ref['max_abs_ref']:.0f})" if diff is not None
             else f"not compared: {ref.get('max_abs_diff_error') or 'no porevox result'}")
    notes = (f"sigma {SIGMA} voxels, halo {pv.get('depth')}, chunks "
             f"{'x'.join(map(str, pv.get('chunks') or []))}, {pv.get('n_tasks')} tasks; "
             "porevox reads the Zarr volume and gathers the float32 result in the driver; "
             "the reference starts from the array in memory; graph s = open_volume + "
             "map_kernel + graph materialisation")
    if pv.get("memory_events"):
        notes += "; " + summarize_memory_events(pv["memory_events"])
    return [row("gaussian", f"gaussian sigma={SIGMA:g}", shape=shape, dtype=DTYPE, pv=pv, ref=ref,
                reference='scipy.ndimage.gaussian_filter(arr.astype(float32), sigma, mode="nearest")',
                check=check, notes=notes, max_abs_diff=diff)]
