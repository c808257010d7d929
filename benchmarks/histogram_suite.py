"""Suite ``histogram``: whole-volume gray-value histogram.

``porevox.engine.histogram(dask_array)`` (numba per-block bincount, tree sum; Dask's
threaded scheduler, 2 threads) vs ``np.histogram(arr, bins=2**bits,
range=(0, 2**bits))`` on the whole in-memory array, for a uint8 and a uint16 volume
of 128 MiB each (quick: 8 MiB), chunked 64 MiB (quick: 2 MiB). Both sides start from
the array in memory (loaded before timing); the counts must be equal.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .harness import best, graph_size, isolated, log, peak, row, write_npy


def porevox_histogram(npy: str, chunk_bytes: int, repeat: int) -> dict:
    import dask.array as da

    import porevox.engine as pe

    arr = np.load(npy)
    chunks = pe.choose_chunks(arr.shape, arr.dtype, chunk_bytes)
    pe.histogram(da.from_array(arr[:2, :16, :16], chunks=(1, 16, 16)))  # warm-up: numba JIT/cache
    times, graph_times, compute_times = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        darr = da.from_array(arr, chunks=chunks)
        graph_size(darr)
        t1 = time.perf_counter()
        counts, _edges = pe.histogram(darr)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        graph_times.append(t1 - t0)
        compute_times.append(t2 - t1)
    return {"time_s": best(times), "times_s": times, "graph_s": best(graph_times),
            "compute_s": best(compute_times), "peak": peak(), "counts": counts,
            "chunks": list(chunks), "n_chunks": int(np.prod(darr.numblocks))}


def reference_histogram(npy: str, repeat: int) -> dict:
    arr = np.load(npy)
    nbins = 1 << (8 * arr.dtype.itemsize)
    np.histogram(arr[:2, :16, :16], bins=nbins, range=(0, nbins))  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        counts, _edges = np.histogram(arr, bins=nbins, range=(0, nbins))
        times.append(time.perf_counter() - t0)
    result = {"time_s": best(times), "times_s": times, "peak": peak(), "counts": counts}
    # A second plain reference, after the peak is taken: np.bincount (casts to intp).
    bincount_times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.bincount(arr.ravel(), minlength=nbins)
        bincount_times.append(time.perf_counter() - t0)
    result["bincount_s"] = best(bincount_times)
    return result


def _write_inputs(jobs) -> dict:
    return {p: write_npy(Path(p), shape, dtype) for p, shape, dtype in jobs}


def run(cfg) -> list[dict]:
    cases = {
        "uint8": cfg.pick((512, 512, 512), (128, 256, 256)),
        "uint16": cfg.pick((256, 512, 512), (64, 256, 256)),
    }
    rows = []
    with cfg.scratch("histogram") as tmp:
        files = {dt: tmp / f"volume-{dt}.npy" for dt in cases}
        log(f"  writing {', '.join(f'{s} {d}' for d, s in cases.items())}")
        setup = isolated(_write_inputs, [(str(files[d]), s, d) for d, s in cases.items()],
                         timeout=cfg.timeout)
        if setup.get("error"):
            raise RuntimeError(f"writing the input files failed: {setup['error']}")
        for dtype, shape in cases.items():
            log(f"  histogram {dtype}")
            pv = isolated(porevox_histogram, str(files[dtype]), cfg.chunk_bytes, cfg.repeat,
                          timeout=cfg.timeout)
            ref = isolated(reference_histogram, str(files[dtype]), cfg.repeat, timeout=cfg.timeout)
            equal = (pv.get("counts") is not None and ref.get("counts") is not None
                     and np.array_equal(pv["counts"], ref["counts"]))
            bits = 8 * np.dtype(dtype).itemsize
            rows.append(row(
                "histogram", f"histogram {dtype}", shape=shape, dtype=dtype, pv=pv, ref=ref,
                reference=f"np.histogram(arr, bins={1 << bits}, range=(0, {1 << bits}))",
                check=f"equal: {str(equal).lower()}", equal=bool(equal),
                notes=(f"chunks {'x'.join(map(str, pv.get('chunks') or []))} "
                       f"({pv.get('n_chunks')} blocks); Dask threaded scheduler, 2 threads; "
                       "graph s = da.from_array (which copies the in-memory array: Dask "
                       "copies array-likes it wraps) + graph, compute s = the histogram() "
                       "call (its own small reduction graph included); np.bincount(arr."
                       f"ravel(), minlength={1 << bits}) takes "
                       + (f"{ref['bincount_s']:.3g} s" if ref.get("bincount_s") else "?")),
            ))
    return rows
