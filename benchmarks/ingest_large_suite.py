"""Suite ``ingest_large`` (runs only when named): bounded-memory ingest.

Writes a uint16 multi-page TIFF of 2048 MiB (``--large-mib`` / ``$POREVOX_BENCH_LARGE_MIB``;
quick 256 MiB), 1024x1024 pages, streaming page by page (``TiffWriter.write(page,
contiguous=True)``; the writer's own peak memory is in the notes), then ingests it
with porevox on a LocalCluster of 2 workers x 1 thread x ``memory_limit="512MB"``,
once with ingest's default chunks (64 MiB target) and once with 16 MiB chunks, and
checks 5 random slices of each result against the TIFF pages.

Reference: there is no in-memory reference at 2 GB in bounded memory, so the
reference throughput is ``shutil.copyfile`` of the TIFF (read + write of the same
bytes, no decoding or compression).
"""

from __future__ import annotations

import math
import os
import shutil
import time

from .harness import MiB, best, isolated, log, peak, row, write_files
from .io_suite import _ingest_notes, porevox_ingest

SIZE_ENV = "POREVOX_BENCH_LARGE_MIB"
DTYPE = "uint16"
PAGE = (1024, 1024)
MEMORY_LIMIT = "512MB"


def size_mib(cfg) -> int:
    value = os.environ.get(SIZE_ENV)
    return int(value) if value else cfg.pick(2048, 256)


def reference_copy(src: str, dst: str, repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        shutil.copyfile(src, dst)
        times.append(time.perf_counter() - t0)
        os.remove(dst)
    return {"time_s": best(times), "times_s": times, "peak": peak()}


def run(cfg) -> list[dict]:
    mib = size_mib(cfg)
    nz = max(2, math.ceil(mib * MiB / (PAGE[0] * PAGE[1] * 2)))
    shape = (nz, *PAGE)
    timeout = max(cfg.timeout, 900.0)
    rows = []
    with cfg.scratch("ingest_large") as tmp:
        tif = tmp / "large.tif"
        log(f"  writing {shape} {DTYPE} TIFF ({nz * PAGE[0] * PAGE[1] * 2 / MiB:.0f} MiB) "
            "page by page")
        written = isolated(write_files, [("tiff", str(tif), shape, DTYPE)], timeout=3600)
        if written.get("error"):
            raise RuntimeError(f"writing the TIFF failed: {written['error']}")
        info = written["files"][str(tif)]
        writer = (f"TIFF written page by page in {info['seconds']:.1f} s, writer peak "
                  f"{info['peak']['ru_maxrss_mib']:.0f} MiB, file {info['bytes'] / MiB:.0f} MiB")
        log(f"  {writer}")

        log("  reference: shutil.copyfile")
        ref = isolated(reference_copy, str(tif), str(tmp / "copy.tif"), 1, timeout=timeout)

        for label, chunk_bytes in (("default chunks", None), ("16 MiB chunks", 16 * MiB)):
            log(f"  porevox ingest, {label}, workers {MEMORY_LIMIT}")
            pv = isolated(porevox_ingest, str(tif), str(tmp / "work"), chunk_bytes, 1,
                          n_workers=2, memory_limit=MEMORY_LIMIT, split_compute=False,
                          check="slices", timeout=timeout)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            workers = pv.get("workers") or []
            per_worker = ", ".join(f"{w['ru_maxrss_mib']:.0f}" for w in workers)
            notes = "; ".join(filter(None, [
                f"2 workers x 1 thread x {MEMORY_LIMIT}; worker peaks MiB [{per_worker}]",
                _ingest_notes(pv), writer,
                "reference = shutil.copyfile of the TIFF (no in-memory reference at this size "
                "in bounded memory); 1 timed run per side, page cache warm",
            ]))
            rows.append(row("ingest_large", f"ingest tiff, {label}", shape=shape, dtype=DTYPE,
                            pv=pv, ref=ref, reference="shutil.copyfile of the TIFF",
                            check=pv.get("check", ""), notes=notes, chunks=pv.get("chunks"),
                            memory_limit=MEMORY_LIMIT, memory_events=pv.get("memory_events"),
                            workers_restarted=pv.get("workers_restarted"),
                            tiff_write_s=info["seconds"],
                            tiff_writer_peak_mib=info["peak"]["ru_maxrss_mib"]))
    return rows
