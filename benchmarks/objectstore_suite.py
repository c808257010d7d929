"""Suite ``objectstore`` (runs only when named, ~2 minutes): volumes in S3-compatible
object storage against the same volumes on local disk, in one run.

    porevox bench objectstore --out bench-s3 [--quick]

The object store is moto's server mode on 127.0.0.1 (the server the tests use),
started by the suite; the measuring processes and their LocalCluster workers reach
it through s3fs with the usual ``AWS_*`` variables. moto keeps objects in its own
Python process's memory and answers one request at a time, so its throughput is not
a cloud store's: these ratios measure what porevox's object-storage path costs over
the local one with the store's own speed largely left out (no network), not what S3
will do.

A synthetic 256³ uint8 image (quick: 128³) as .npy, chunks 32³ in shards of 128³
(8 objects of the image instead of 512 files). Each side in its own process, with 2
workers x 1 thread, 2 GB, an untimed warm-up ingest first:

* ingest: ``porevox.ingest(npy, URL-or-path, chunks=32³, shards=128³)``: the image,
  its pyramid, the build moved into place (object storage: copied, ``zarr.json``
  last) and the provenance. porevox on S3 vs porevox on local disk.
* segment + quantify: ``segment_volume(..., "otsu")`` then
  ``quantify_volume(..., labels="otsu", features=[density, surface, struts])`` with
  the struts in blocks after the stored distance transform (every array these
  stages write is published into the volume). S3 vs local disk; every scalar feature
  must agree to rel 1e-12.
* shards vs chunk objects on S3: the same ingest into S3 without shards (512 chunk
  objects of the image) against the sharded one.

ratio = reference (local disk; for the last row, unsharded) time / porevox time; < 1:
the object store is slower by that factor.

Notes (2 cores; 2 workers x 1 thread x 2 GB):

* 2026-12-07, the default run (256³), nothing else running: 4 min for the suite.

  - Ingest: S3 6.67 s (repeats 6.67-8.15), local 0.78 s (0.78-1.03): 0.12. Otsu +
    quantify: S3 19.3 s (19.3-21.2), local 7.27 s: 0.38; 14 scalar features
    identical (largest relative difference 0).
  - Unsharded S3 ingest (512 chunk objects of the image instead of 8): 15.6 s, 2.34 x
    the sharded one's.
  - Worker peaks: 671 MiB with S3 (s3fs/aiobotocore pools and buffers), ~250 MiB
    local; drivers 247 and 195 MiB.
  - Profiled apart (one process, threads, 45 x 70 x 83 uint16, 12 shards): of a 2.0 s
    ingest into S3, the pyramid's tasks took 1.1 s and the copies into place
    (``location.move``) 0.29 s; the rest is moto answering the tasks' requests.
  - zarr 3.1.6's sharding codec reads a shard before writing it even when the write
    covers it whole (one GET per shard, a 404 for a new array): measured with
    zarr's ``LoggingStore``. porevox's tasks each write whole shards of their own,
    so this costs a request, never a race.
* Quick run (128³): 0.11 and 0.42; unsharded 1.69 x slower (64 objects against 1).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

from .harness import best, isolated, local_cluster, log, peak, prepared, row, worker_peaks, write_npy

VOXEL = (1.0, 1.0, 1.0)
MEMORY = "2GB"
CHUNK, SHARD = 32, 128
FEATURES = ["density", "surface", "struts"]
REL = 1e-12


def measure(npy: str, where: str, shards: bool, repeat: int, quantify: bool) -> dict:
    """`repeat` ingests of `npy` into new volumes under `where` (a folder or an S3
    prefix), each followed (where `quantify`) by Otsu and the features; best times."""
    import porevox.engine as pe
    from porevox.engine.location import location, remove
    from porevox.pipelines import quantify as q
    from porevox.pipelines.quantify import quantify_volume
    from porevox.pipelines.segment import segment_volume

    q.STRUTS_SPLIT_VOXELS = 1          # struts in blocks, as for a volume larger than a task
    layout = {"chunks": (CHUNK,) * 3, "shards": (SHARD,) * 3 if shards else None}
    ingest_times, quantify_times, values = [], [], {}
    with local_cluster(2, MEMORY) as client:
        warm = f"{where}/warm.zarr"
        pe.ingest(npy, warm, VOXEL, **layout)
        segment_volume(warm, "otsu")
        remove(location(warm))
        for i in range(repeat):
            target = f"{where}/v-{i}-{uuid.uuid4().hex[:6]}.zarr"
            if "://" not in where:
                os.sync()
            t0 = time.perf_counter()
            pe.ingest(npy, target, VOXEL, **layout)
            t1 = time.perf_counter()
            ingest_times.append(t1 - t0)
            if quantify:
                segment_volume(target, "otsu")
                r = quantify_volume(target, labels="otsu", features=FEATURES)
                quantify_times.append(time.perf_counter() - t1)
                values = {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "seconds"}
            kind = "sharded" if shards else "chunks"
            log(f"    {where.split('/')[0]} {kind}: ingest {ingest_times[-1]:.2f} s"
                + (f", otsu + quantify {quantify_times[-1]:.2f} s" if quantify else ""))
            objects = _count(location(target) / "image" / "c")
            remove(location(target))
        workers = worker_peaks(client)
    return {"ingest": {"time_s": best(ingest_times), "times_s": ingest_times},
            "quantify": {"time_s": best(quantify_times) if quantify_times else None,
                         "times_s": quantify_times},
            "values": values, "objects": objects, "peak": peak(), "workers": workers}


def _count(folder) -> int:
    if hasattr(folder, "fs") and "://" in str(folder):
        folder.fs.invalidate_cache()
        return len(folder.fs.find(folder.path))
    return sum(len(files) for _, _, files in os.walk(folder))


def _server() -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, env
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)


def _side(result: dict, part: str) -> dict:
    """One part of a measuring process's result, shaped for :func:`row`."""
    if result.get("error"):
        return {"error": result["error"]}
    return {**result[part], "peak": result.get("peak"), "workers": result.get("workers"),
            "floor_mib": result.get("floor_mib")}


def run(cfg) -> list[dict]:
    n = cfg.pick(256, 128)
    shape = (n, n, n)
    proc, env = _server()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # the measuring processes and their workers inherit them
    try:
        import s3fs

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        with cfg.scratch("objectstore") as tmp:
            npy = tmp / "gray.npy"
            log(f"  writing {shape} uint8 image")
            prepared("writing the input", write_npy, npy, shape, "uint8", timeout=cfg.timeout)
            local = tmp / "local"
            local.mkdir()
            url, t = f"s3://{bucket}", cfg.timeout
            s3 = isolated(measure, str(npy), url, True, cfg.repeat, True, timeout=t)
            disk = isolated(measure, str(npy), str(local), True, cfg.repeat, True, timeout=t)
            flat = isolated(measure, str(npy), url, False, cfg.repeat, False, timeout=t)
            shutil.rmtree(local, ignore_errors=True)
    finally:
        proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    a, b = s3.get("values") or {}, disk.get("values") or {}
    worst = max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-300) for k in b if k in a), default=float("nan"))
    same = bool(a) and a.keys() == b.keys() and worst <= REL
    common = (f"chunks {CHUNK}³ in shards {SHARD}³ ({s3.get('objects')} objects of the image; "
              f"{flat.get('objects')} unsharded); moto server on 127.0.0.1 (in-memory, one Python process); "
              f"2 workers x 1 thread, {MEMORY}")
    return [
        row("objectstore", "ingest into S3 (moto) vs local disk", shape=shape, dtype="uint8",
            pv=_side(s3, "ingest"), ref=_side(disk, "ingest"),
            reference="the same porevox.ingest into a local folder, same run",
            check="image equal to the .npy in the tests (tests/engine/test_s3.py)",
            notes=f"image + pyramid + build copied into place (zarr.json last) + provenance; {common}"),
        row("objectstore", "otsu + quantify from S3 (moto) vs local disk", shape=shape, dtype="uint8",
            pv=_side(s3, "quantify"), ref=_side(disk, "quantify"),
            reference="the same segment_volume + quantify_volume on the local volume, same run",
            check=f"{len(b)} scalar features equal (rel {REL:g}): {str(same).lower()}, largest rel. diff "
                  f"{worst:.1e}",
            notes=f"features {FEATURES}, struts in blocks after the stored distance transform; {common}"),
        row("objectstore", "ingest into S3: shards vs one object per chunk", shape=shape, dtype="uint8",
            pv=_side(s3, "ingest"), ref=_side(flat, "ingest"),
            reference=f"the same ingest into S3 without shards ({CHUNK}³ chunks, one object each)",
            check=f"objects of the image: {s3.get('objects')} sharded, {flat.get('objects')} unsharded",
            notes=common),
    ]
