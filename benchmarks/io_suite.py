"""Suite ``io``: ingest (TIFF, npy) and read-back throughput.

Cases (one uint16 volume, 256x512x512 = 128 MiB; quick 128x256x256):

* ``ingest tiff``: ``porevox.engine.ingest`` of a multi-page TIFF on a 2-worker
  LocalCluster vs ``tifffile.imread`` + ``np.save`` (the plain conversion; the
  ``np.save`` time alone is in the notes).
* ``ingest npy``: the same from ``.npy`` vs ``np.load`` + ``np.save``.
* ``read dask``: ``open_volume(...).to_dask().compute()`` (threaded scheduler, no
  cluster) vs ``np.load``.
* ``read zarr``: ``open_volume(...).image[...]`` (zarr reading the whole array) vs
  ``np.load``.

Files are fresh in the page cache on both sides; nothing is fsynced.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
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
    row,
    summarize_memory_events,
    synth_volume,
    worker_memory_events,
    worker_peaks,
)

VOXEL = (1.0, 1.0, 1.0)
DTYPE = "uint16"


# --------------------------------------------------------------------------- children
def _read_source(src: str, z0: int, z1: int) -> np.ndarray:
    """Planes z0:z1 of the source file, read without porevox."""
    if src.endswith(".npy"):
        return np.asarray(np.load(src, mmap_mode="r")[z0:z1])
    import tifffile

    with tifffile.TiffFile(src) as tif:
        return np.stack([tif.pages[z].asarray() for z in range(z0, z1)])


def _warm_up_ingest(work: Path, kind: str) -> None:
    """A tiny ingest of the same kind: imports tifffile/zarr on the workers."""
    import tifffile

    import porevox.engine as pe

    small = synth_volume((4, 32, 32), DTYPE)
    src = work / ("warm.tif" if kind == "tiff" else "warm.npy")
    if kind == "tiff":
        tifffile.imwrite(src, small, photometric="minisblack")
    else:
        np.save(src, small)
    pe.ingest(src, work / "warm.zarr", VOXEL, chunks=(2, 32, 32))
    shutil.rmtree(work / "warm.zarr")
    src.unlink()


def porevox_ingest(src: str, work: str, chunk_bytes: int | None, repeat: int, *,
                   n_workers: int = 2, memory_limit: str | int = "4GB",
                   split_compute: bool = True, keep: str | None = None,
                   check: str = "full", seed: int = 0) -> dict:
    """Time ``porevox.engine.ingest(src, ...)`` on a fresh LocalCluster.

    `chunk_bytes` None: ingest's default chunks. graph_s / compute_s come from a
    separate build (and, with `split_compute`, execution) of the same graph ingest
    builds inside: ``source_to_dask`` + ``da.store(..., compute=False)``.
    """
    import dask.array as da

    import porevox.engine as pe

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    source = pe.open_source(src)
    chunk_arg = (None if chunk_bytes is None
                 else pe.choose_chunks(source.shape, source.dtype, chunk_bytes))
    driver_before_cluster = peak()
    with local_cluster(n_workers, memory_limit) as client:
        workers_before = sorted(client.scheduler_info()["workers"])
        _warm_up_ingest(work, source.kind)

        times, out = [], None
        for i in range(repeat):
            if out is not None:
                shutil.rmtree(out)
            out = work / f"ingest-{i}.zarr"
            t0 = time.perf_counter()
            pe.ingest(src, out, VOXEL, chunks=chunk_arg)
            times.append(time.perf_counter() - t0)
            log(f"    porevox ingest {Path(src).name}: {times[-1]:.2f} s")
        chunks = pe.open_volume(out, mode="r").image.chunks   # what ingest chose or was given

        # Graph construction apart from compute: the graph ingest() builds inside,
        # built (and with `split_compute` run) again on its own, best of `repeat`.
        graph_times, compute_times = [], []
        for _ in range(repeat if split_compute else 1):
            split = work / "split.zarr"
            t0 = time.perf_counter()
            darr = pe.source_to_dask(source, chunks)
            vol = pe.create_volume(split, source.shape, source.dtype, VOXEL, chunks=chunks)
            stored = da.store(darr, vol.image, lock=False, compute=False)
            n_tasks = graph_size(stored)
            graph_times.append(time.perf_counter() - t0)
            if split_compute:
                t0 = time.perf_counter()
                stored.compute()
                compute_times.append(time.perf_counter() - t0)
            del darr, vol, stored
            shutil.rmtree(split)
        graph_s = best(graph_times)
        compute_s = best(compute_times) if compute_times else None
        workers = worker_peaks(client)
        events = worker_memory_events(client)
        workers_after = sorted(client.scheduler_info()["workers"])
    driver = peak()

    # Checks (after the peaks are taken).
    vol = pe.open_volume(out, mode="r")
    img = vol.image
    if check == "full":
        equal = all(
            np.array_equal(img[z:z + chunks[0]], _read_source(src, z, min(z + chunks[0], img.shape[0])))
            for z in range(0, img.shape[0], chunks[0]))
        check_text = f"equal to source: {str(equal).lower()}"
    else:
        rng = random.Random(seed)
        zs = sorted(rng.sample(range(img.shape[0]), min(5, img.shape[0])))
        equal = all(np.array_equal(img[z], _read_source(src, z, z + 1)[0]) for z in zs)
        check_text = f"slices {zs} equal to TIFF pages: {str(equal).lower()}"
    stored_bytes = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    if keep:
        shutil.rmtree(keep, ignore_errors=True)
        os.rename(out, keep)
    else:
        shutil.rmtree(out)
    return {
        "time_s": best(times), "times_s": times, "graph_s": graph_s, "compute_s": compute_s,
        "graph_times_s": graph_times, "compute_times_s": compute_times, "n_tasks": n_tasks,
        "chunks": list(chunks), "peak": driver, "workers": workers,
        "driver_before_cluster": driver_before_cluster, "memory_events": events,
        "workers_restarted": workers_before != workers_after, "equal": bool(equal),
        "check": check_text, "stored_bytes": stored_bytes,
    }


def reference_convert(src: str, dst: str, repeat: int) -> dict:
    """Plain conversion: read the whole stack (tifffile.imread / np.load), np.save it."""
    import tifffile

    times, save_times, read_times = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        arr = tifffile.imread(src) if src.endswith((".tif", ".tiff")) else np.load(src)
        t1 = time.perf_counter()
        np.save(dst, arr)
        t2 = time.perf_counter()
        del arr
        os.remove(dst)
        times.append(t2 - t0)
        read_times.append(t1 - t0)
        save_times.append(t2 - t1)
    return {"time_s": best(times), "times_s": times, "read_s": best(read_times),
            "save_s": best(save_times), "peak": peak()}


def _digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).data, digest_size=16).hexdigest()


def porevox_read(path: str, repeat: int, how: str) -> dict:
    """Read a whole volume back: ``to_dask().compute()`` (threads) or ``image[...]``."""
    import porevox.engine as pe

    pe.open_volume(path, mode="r").image[0, :8, :8]  # warm-up: imports, codecs
    times, graph_times, compute_times, arr = [], [], [], None
    for _ in range(repeat):
        del arr
        t0 = time.perf_counter()
        vol = pe.open_volume(path, mode="r")
        if how == "dask":
            darr = vol.to_dask()
            graph_size(darr)
            t1 = time.perf_counter()
            arr = darr.compute(scheduler="threads")
        else:
            t1 = time.perf_counter()
            arr = vol.image[...]
        t2 = time.perf_counter()
        times.append(t2 - t0)
        graph_times.append(t1 - t0)
        compute_times.append(t2 - t1)
    result = {"time_s": best(times), "times_s": times, "peak": peak(),
              "chunks": list(pe.open_volume(path, mode="r").image.chunks)}
    if how == "dask":
        result["graph_s"] = best(graph_times)
        result["compute_s"] = best(compute_times)
    result["digest"] = _digest(arr)
    return result


def reference_load(path: str, repeat: int) -> dict:
    times, arr = [], None
    for _ in range(repeat):
        del arr
        t0 = time.perf_counter()
        arr = np.load(path)
        times.append(time.perf_counter() - t0)
    result = {"time_s": best(times), "times_s": times, "peak": peak()}
    result["digest"] = _digest(arr)
    return result


# --------------------------------------------------------------------------- suite
def _ingest_notes(pv: dict, ref: dict | None = None) -> str:
    parts = []
    if pv.get("compute_s") is not None:
        parts.append("graph s / compute s: ingest's graph (source_to_dask + da.store) built "
                     "and run apart from the timed ingest() calls, best of the repeats")
    if pv.get("chunks"):
        parts.append(f"chunks {'x'.join(map(str, pv['chunks']))}, {pv.get('n_tasks')} tasks")
    if pv.get("compute_s") is None and pv.get("graph_s") is not None:
        parts.append("graph s is the build of ingest's graph measured apart (not run); "
                     "the ingest() total includes it")
    if pv.get("workers_restarted"):
        parts.append("A WORKER WAS RESTARTED during the run")
    if pv.get("memory_events"):
        parts.append(summarize_memory_events(pv["memory_events"]))
    if pv.get("stored_bytes"):
        parts.append(f"stored {pv['stored_bytes'] / 2**20:.0f} MiB (zarr default codecs)")
    if ref and ref.get("save_s") is not None:
        parts.append(f"reference np.save alone {ref['save_s']:.3g} s, read {ref['read_s']:.3g} s")
    return "; ".join(parts)


def run(cfg) -> list[dict]:
    shape = cfg.pick((256, 512, 512), (128, 256, 256))
    chunk_bytes = None if not cfg.quick else cfg.chunk_bytes  # full run: ingest's default
    rows = []
    with cfg.scratch("io") as tmp:
        tif, npy, kept = tmp / "volume.tif", tmp / "volume.npy", tmp / "volume.zarr"
        log(f"  writing {shape} {DTYPE} TIFF and npy")
        setup = isolated(_write_inputs, str(tif), str(npy), shape, timeout=cfg.timeout)
        if setup.get("error"):
            raise RuntimeError(f"writing the input files failed: {setup['error']}")

        for kind, src in (("tiff", tif), ("npy", npy)):
            log(f"  ingest {kind}")
            pv = isolated(porevox_ingest, str(src), str(tmp / f"work-{kind}"), chunk_bytes,
                          cfg.repeat, keep=str(kept) if kind == "tiff" else None,
                          timeout=cfg.timeout)
            ref = isolated(reference_convert, str(src), str(tmp / "ref-out.npy"), cfg.repeat,
                           timeout=cfg.timeout)
            reader = "tifffile.imread" if kind == "tiff" else "np.load"
            rows.append(row("io", f"ingest {kind}", shape=shape, dtype=DTYPE, pv=pv, ref=ref,
                            reference=f"{reader} + np.save (whole array)",
                            check=pv.get("check", ""), notes=_ingest_notes(pv, ref),
                            chunks=pv.get("chunks"), memory_events=pv.get("memory_events")))

        log("  read back")
        ref = isolated(reference_load, str(npy), cfg.repeat, timeout=cfg.timeout)
        for how, case in (("dask", "read to_dask().compute()"), ("zarr", "read zarr image[...]")):
            if not kept.exists():
                rows.append(row("io", case, shape=shape, dtype=DTYPE,
                                pv={"error": "no ingested volume to read (ingest tiff failed)"},
                                ref=ref, reference="np.load"))
                continue
            pv = isolated(porevox_read, str(kept), cfg.repeat, how, timeout=cfg.timeout)
            same = pv.get("digest") is not None and pv.get("digest") == ref.get("digest")
            notes = (f"chunks {'x'.join(map(str, pv.get('chunks') or []))}; "
                     + ("threaded scheduler (2 threads), no cluster" if how == "dask"
                        else "zarr's own threads; no Dask graph"))
            rows.append(row("io", case, shape=shape, dtype=DTYPE, pv=pv, ref=ref,
                            reference="np.load (whole array)",
                            check=f"same bytes as np.load: {str(same).lower()}", notes=notes))
    return rows


def _write_inputs(tif: str, npy: str, shape) -> dict:
    from .harness import write_npy, write_tiff

    return {"tiff": write_tiff(Path(tif), shape, DTYPE), "npy": write_npy(Path(npy), shape, DTYPE)}
