"""Suite ``ome`` (runs only when named, ~2 minutes): what the OME-Zarr pyramids cost,
and what reading a phase costs.

    porevox bench ome --out bench-ome [--quick]

Volumes are OME-Zarr 0.5 images: the gray image and every uint8 / uint16 label image
carry a multiscale pyramid, written blockwise on the cluster
(:mod:`porevox.engine.ome`). Two questions, on porevox's LocalCluster of 2 workers ×
1 thread (4 GB each):

* **Pyramid write vs base write.** A 512³ uint8 image in 64³ chunks (quick: 256³)
  and its binary label image (gray > 120: the synthetic pattern's solid). Per
  image, four measuring processes:

  - porevox, base level: what ``porevox ingest`` writes for level 0 — the stack read
    by ``source_to_dask`` and ``da.store``-d into the volume's ``image`` (for the
    labels: into the temporary level 0 of ``labels/seg``, ``tmp_array``), exactly as
    ``run_ingest`` / ``store`` do; the volume's creation is not timed.
  - porevox, pyramid: ``ome.write_image_pyramid(volume)`` (levels 1-3, each
    published, and the root's ``multiscales``); for the labels,
    ``storage.publish_array`` of that temporary group: ``finish_labels`` (levels 1-3
    by the mode, level 0's values counted on the way, the ``image-label`` metadata),
    the ``labels`` list and the rename. Reported also as a fraction of the base
    level's time: the issue asks for "the pyramid's write time against the base
    level's".
  - reference, base level: plain Dask on the same cluster — one task per chunk
    reading its box of the ``.npy`` (``np.load(mmap_mode="r")``) — stored with
    ``da.to_zarr`` into a fresh Zarr v3 array in the same chunks (zarr's default
    codecs, as porevox's).
  - reference, pyramid: per level, ``da.from_zarr`` of the level before in
    128³ chunks, ``da.coarsen(np.mean, ..., {0: 2, 1: 2, 2: 2})`` rounded half up
    (``da.floor(m + 0.5)``, porevox's rule for integer images) for the gray image,
    ``da.coarsen`` of ``scipy.stats.mode`` over each 2 × 2 × 2 window (ties to the
    smaller value, porevox's rule) for the labels, each stored with ``da.to_zarr``
    in 64³ chunks. No metadata, no counts.

  Checked in a separate process: level 0 equal to the ``.npy``; every porevox level
  equal to the reference's (gray: exactly, both rounding half up; the notes give how
  many voxels of level 1 a plain ``astype`` of the mean, which truncates, would get
  wrong); the label counts recorded in ``image-label`` equal to ``np.bincount`` of
  the ``.npy``. ``porevox.ingest`` and ``run_label_ingest`` of the same stacks
  (base + pyramid + provenance in one call) are timed too (best of the repeats, in
  the pyramid's process after its peaks are taken), for the notes.

* **A phase of a multi-phase label image vs its binary image.** A 192³ three-phase
  structure like the tests' (``tests/pipelines/test_phases.py``: 0 pore, 1 "LSM",
  2 "YSZ", smoothed noise thresholded twice) ingested with its image (gray = 90 ×
  label) in 96³ chunks; the same volume also holds ``labels/binary``, the
  pre-computed binary image of phase 1+2. ``pv.quantify(volume, labels="three",
  phase="1+2")`` (a :class:`~porevox.engine.phases.PhaseView` selecting the phase in
  every block it reads) against ``pv.quantify(volume, labels="binary")``, both with
  ``features=["density", "surface", "curvature"]``, each in its own process after an
  untimed warm-up call; every scalar feature must agree to rel 1e-12.
  ratio = binary time / phase time (< 1: the phase costs that much more).

Before each timed run the process flushes dirty pages (``os.sync``, untimed), so
one repeat's write-back does not land in the next; nothing is fsynced.

Notes (2 cores, shared with another engineer's test runs; 2 workers x 1 thread x 4 GB):

* 2026-12-07, the default run (512³ in 64³ chunks; phases 192³ in 96³ chunks), in a
  quiet window (no test run; load 1.2 when it started): 110 s for the suite, so it
  runs only when named.

  - Gray image: base level 1.02 s (the plain Dask reference 1.39 s); the pyramid
    (levels 256³, 128³, 64³) **0.63 s = 0.61 x the base write** (the reference's
    1.20 s = 0.86 x its own base; porevox 1.92x faster). The whole
    ``porevox.ingest`` of the same .npy took 1.78 s: base + pyramid + 0.13 s of
    volume creation, provenance and rename. Every level equal to the reference's
    bit for bit; a truncating mean (``astype`` without porevox's half-up rounding)
    would change 50.0 % of level 1's voxels.
  - Binary label image: base level 1.20 s (reference 1.54 s); levels + counts +
    ``image-label`` metadata **1.00 s = 0.84 x the base write** (the reference's
    ``scipy.stats.mode`` levels alone: 2.05 s, 2.04x). ``run_label_ingest`` whole:
    2.13 s. Levels equal to the reference; the counts recorded (76 021 222 zeros,
    58 196 506 ones) equal to ``np.bincount`` of the .npy.
  - Memory: every worker's VmHWM stayed at 161-166 MiB, its imported libraries: a
    pyramid task holds one output chunk (256 KiB here) and one chunk-sized piece of
    the level before at a time. Drivers 178-186 MiB (ru_maxrss, floor 165).
  - Why 0.6 x for 1/7 of the voxels written (1/8 + 1/64 + 1/512): the pyramid reads
    and decompresses all of level 0 again, and pools it. Measured apart in one
    process (2026-12-07): level 1's kernel over 64 blocks of 128³ takes 0.23 s of
    CPU (``mean_pool``; ``mode_pool`` on the binary image 0.31 s), reading the 512³
    level 0 back from Zarr 0.16 s — about a third of the pyramid's ~1.25
    worker-seconds. The rest is presumably the levels' sequence: each level is its
    own computation, started when the level before is published, and levels 2 and 3
    have 8 and 1 tasks for 2 workers. The plain ``reshape(...).mean(axis=(1, 3, 5))``
    over the same blocks takes 0.98 s: most of the reference's extra time.
  - Phase 1+2 of the three-phase image through a ``PhaseView`` 2.27 s against 2.23 s
    for its pre-computed binary image: **+1.8 %**, within the repeats' spread
    (2.27-2.34 vs 2.23-2.31 s); all 16 scalar features bit-identical (largest
    relative difference 0).

* The same day, a first full run while the other test suite started mid-run (load
  up to 4.6): base writes 2.42 s (gray) and 1.46 s (labels), the pyramids 0.64 and
  1.02 s (so 0.26 and 0.70 x base), the phase overhead +8.9 %; the repeats rose
  steadily (gray base 2.42, 2.73, 3.47 s). Not used.
* Quick run (256³, load ~2): pyramid 1.11 x base for the gray image (0.19 vs
  0.17 s) and 0.76 x for the labels: at 16 MiB the per-level fixed costs (a
  computation, a publish and metadata per level) are presumably most of it. Phase overhead
  within noise (-3.9 % at 96³).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
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
    synth_slice,
    synth_volume,
    worker_memory_events,
    worker_peaks,
    write_npy,
)

VOXEL = (1.0, 1.0, 1.0)
LABEL = "seg"
#: The untouched level 0 of labels/seg, kept hidden in the volume between repeats
#: (a name ``remove_stale_tmp`` does not match).
PRISTINE = ".tmp-pristine-seg"
#: Between the synthetic pore (≤ 100) and solid (≥ 140) gray values.
THRESHOLD = 120
MEMORY = "4GB"

PHASE = "1+2"
PHASE_NAMES = "0=pore,1=LSM,2=YSZ"
PHASE_VOXEL = (0.5, 0.4, 0.4)
FEATURES = ("density", "surface", "curvature")
REL = 1e-12


# --------------------------------------------------------------------------- inputs
def write_inputs(gray: str, seg: str, shape) -> dict:
    """The synthetic uint8 image and its binary label image as .npy, slice by slice."""
    made = write_npy(Path(gray), shape, "uint8")
    with open(seg, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)})
        solid = 0
        for z in range(shape[0]):
            s = (synth_slice(z, shape[1], shape[2], "uint8") > THRESHOLD).astype(np.uint8)
            solid += int(s.sum())
            fh.write(s.tobytes())
    return {"gray": made, "solid_fraction": solid / float(np.prod(shape))}


def _warm_up(work: Path) -> None:
    """A tiny ingest and label ingest (pyramids included): imports on the workers."""
    import porevox.engine as pe

    small = synth_volume((8, 32, 32), "uint8")
    np.save(work / "warm.npy", small)
    np.save(work / "warm-seg.npy", (small > THRESHOLD).astype(np.uint8))
    vol, _ = pe.ingest(work / "warm.npy", work / "warm.zarr", VOXEL, chunks=(4, 16, 16))
    pe.run_label_ingest(pe.plan_label_ingest(work / "warm-seg.npy", vol.path, LABEL))
    shutil.rmtree(work / "warm.zarr")
    for f in ("warm.npy", "warm-seg.npy"):
        (work / f).unlink()


# --------------------------------------------------------------------------- porevox
def porevox_base(npy: str, work: str, kind: str, chunk: int, repeat: int, keep: str) -> dict:
    """Level 0 as ingest writes it (kind "image"), or as a label ingest writes
    ``labels/seg`` (kind "labels": into its temporary group, not published). The
    last repeat's volume is kept at `keep` for the pyramid (the labels' level 0
    under the hidden name :data:`PRISTINE`)."""
    import dask.array as da

    import porevox.engine as pe
    from porevox.engine.cluster import compute
    from porevox.engine.storage import LABELS, create_volume, tmp_array

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    source = pe.open_source(npy)
    shape, chunks = tuple(source.shape), (chunk,) * 3
    with local_cluster(2, MEMORY) as client:
        _warm_up(work)
        times, graph_times, compute_times, path, tmp = [], [], [], None, None
        for i in range(repeat):
            if path is not None:
                shutil.rmtree(path)
            path = work / f"base-{i}.zarr"
            vol = create_volume(path, shape, source.dtype, VOXEL, chunks=chunks, image=kind == "image")
            os.sync()
            t0 = time.perf_counter()
            if kind == "image":
                target = vol.image
            else:
                target, tmp = tmp_array(vol, f"{LABELS}/{LABEL}", shape, source.dtype, chunks)
            stored = da.store(pe.source_to_dask(source, chunks), target, lock=False, compute=False)
            n_tasks = graph_size(stored)
            t1 = time.perf_counter()
            compute(stored)
            t2 = time.perf_counter()
            times.append(t2 - t0)
            graph_times.append(t1 - t0)
            compute_times.append(t2 - t1)
            log(f"    porevox base {kind}: {times[-1]:.2f} s")
        workers = worker_peaks(client)
        events = worker_memory_events(client)
    driver = peak()
    if tmp is not None:
        os.rename(path / tmp, path / LABELS / PRISTINE)
    shutil.rmtree(keep, ignore_errors=True)
    os.rename(path, keep)
    return {"time_s": best(times), "times_s": times, "graph_s": best(graph_times),
            "compute_s": best(compute_times), "n_tasks": n_tasks, "peak": driver,
            "workers": workers, "memory_events": events}


def porevox_levels(kept: str, work: str, kind: str, repeat: int, npy: str) -> dict:
    """The pyramid of the kept volume's image (``write_image_pyramid``) or labels
    (``publish_array`` of a copy of its pristine level 0), `repeat` times, each on a
    clean slate (untimed); then the whole ingest of `npy` (best of `repeat`), for the notes."""
    import porevox.engine as pe
    from porevox.engine import ome
    from porevox.engine.storage import LABELS, open_volume, publish_array

    kept, work = Path(kept), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with local_cluster(2, MEMORY) as client:
        _warm_up(work)
        times = []
        for _ in range(repeat):
            if kind == "image":
                shutil.rmtree(kept / ome.LEVELS, ignore_errors=True)
            else:
                shutil.rmtree(kept / LABELS / LABEL, ignore_errors=True)
                tmp = f"{LABELS}/.tmp-{LABEL}-{uuid.uuid4().hex[:12]}"
                shutil.copytree(kept / LABELS / PRISTINE, kept / tmp)
            vol = open_volume(kept)
            os.sync()
            t0 = time.perf_counter()
            if kind == "image":
                ome.write_image_pyramid(vol)
            else:
                publish_array(vol, tmp, f"{LABELS}/{LABEL}")
            times.append(time.perf_counter() - t0)
            log(f"    porevox pyramid {kind}: {times[-1]:.2f} s")
        workers = worker_peaks(client)
        events = worker_memory_events(client)
        driver = peak()

        # For the notes: the whole command (base + pyramid + provenance), after the
        # peaks are taken.
        whole, whole_times = work / "whole.zarr", []
        chunks = open_volume(kept, mode="r").chunks
        for _ in range(repeat):
            shutil.rmtree(whole, ignore_errors=True)
            os.sync()
            t0 = time.perf_counter()
            if kind == "image":
                pe.ingest(npy, whole, VOXEL, chunks=chunks)
            else:
                pe.run_label_ingest(pe.plan_label_ingest(npy, whole, LABEL, new=True, voxel_size=VOXEL,
                                                         chunks=chunks))
            whole_times.append(time.perf_counter() - t0)
        shutil.rmtree(whole)

    vol = open_volume(kept, mode="r")
    levels = ome.pyramid(vol, "image" if kind == "image" else f"{LABELS}/{LABEL}")
    return {"time_s": best(times), "times_s": times, "peak": driver, "workers": workers,
            "memory_events": events, "whole_s": best(whole_times), "whole_times_s": whole_times,
            "levels": [list(a.shape) for a in levels]}


# --------------------------------------------------------------------------- reference
def _npy_block(path: str, block_info=None) -> np.ndarray:
    """The block of the .npy at `path` where Dask puts this output block."""
    loc = block_info[None]["array-location"]
    return np.array(np.load(path, mmap_mode="r")[tuple(slice(a, b) for a, b in loc)])


def _npy_dask(path: str, chunks):
    import dask.array as da

    head = np.load(path, mmap_mode="r")
    shape, dtype = head.shape, head.dtype
    del head
    return da.map_blocks(_npy_block, path, chunks=da.core.normalize_chunks(chunks, shape), dtype=dtype,
                         meta=np.empty((0,) * len(shape), dtype))


def window_mode(x: np.ndarray, axis=None) -> np.ndarray:
    """``scipy.stats.mode`` over the window axes `axis` of ``da.coarsen``'s reshaped
    block (the smallest value on ties). Without `axis` (Dask's meta probe): `x`."""
    from scipy import stats

    if axis is None:
        return x
    keep = [i for i in range(x.ndim) if i not in axis]
    windows = x.transpose(keep + list(axis)).reshape([x.shape[i] for i in keep] + [-1])
    return stats.mode(windows, axis=-1, keepdims=False).mode.astype(x.dtype, copy=False)


def reference_pyramid(base: str, out: str, kind: str, chunk: int) -> list:
    """The plain Dask pyramid of the array at `base`, levels ``out/1``, ``out/2``, ...:
    halve every axis until a level fits one chunk."""
    import dask.array as da

    src, shapes = da.from_zarr(base), []
    k = 0
    while any(n > chunk for n in src.shape):
        src = da.from_zarr(base if k == 0 else out, component=None if k == 0 else str(k),
                           chunks=tuple(min(2 * chunk, n) for n in src.shape))
        if kind == "image":
            pooled = da.floor(da.coarsen(np.mean, src, {0: 2, 1: 2, 2: 2}, trim_excess=True) + 0.5)
            pooled = pooled.astype(src.dtype)
        else:
            pooled = da.coarsen(window_mode, src, {0: 2, 1: 2, 2: 2}, trim_excess=True)
        k += 1
        da.to_zarr(pooled, out, component=str(k))
        src = pooled
        shapes.append(list(pooled.shape))
    return shapes


def _reference_warm_up(work: Path, kind: str) -> None:
    import dask.array as da

    small = work / "warm.npy"
    data = synth_volume((8, 32, 32), "uint8")
    np.save(small, (data > THRESHOLD).astype(np.uint8) if kind == "labels" else data)
    da.to_zarr(_npy_dask(str(small), (4, 16, 16)), str(work / "warm-base.zarr"))
    reference_pyramid(str(work / "warm-base.zarr"), str(work / "warm-levels.zarr"), kind, 8)
    for p in ("warm-base.zarr", "warm-levels.zarr"):
        shutil.rmtree(work / p)
    small.unlink()


def reference_base(npy: str, work: str, kind: str, chunk: int, repeat: int, keep: str) -> dict:
    import dask.array as da

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with local_cluster(2, MEMORY) as client:
        _reference_warm_up(work, kind)
        times, graph_times, compute_times, path = [], [], [], None
        for i in range(repeat):
            if path is not None:
                shutil.rmtree(path)
            path = work / f"ref-base-{i}.zarr"
            os.sync()
            t0 = time.perf_counter()
            stored = da.to_zarr(_npy_dask(npy, (chunk,) * 3), str(path), compute=False)
            graph_size(stored)
            t1 = time.perf_counter()
            stored.compute()
            t2 = time.perf_counter()
            times.append(t2 - t0)
            graph_times.append(t1 - t0)
            compute_times.append(t2 - t1)
            log(f"    reference base {kind}: {times[-1]:.2f} s")
        workers = worker_peaks(client)
    driver = peak()
    shutil.rmtree(keep, ignore_errors=True)
    os.rename(path, keep)
    return {"time_s": best(times), "times_s": times, "graph_s": best(graph_times),
            "compute_s": best(compute_times), "peak": driver, "workers": workers}


def reference_levels(base: str, work: str, kind: str, chunk: int, repeat: int, keep: str) -> dict:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with local_cluster(2, MEMORY) as client:
        _reference_warm_up(work, kind)
        times, path, shapes = [], None, None
        for i in range(repeat):
            if path is not None:
                shutil.rmtree(path)
            path = work / f"ref-levels-{i}.zarr"
            os.sync()
            t0 = time.perf_counter()
            shapes = reference_pyramid(base, str(path), kind, chunk)
            times.append(time.perf_counter() - t0)
            log(f"    reference pyramid {kind}: {times[-1]:.2f} s")
        workers = worker_peaks(client)
    driver = peak()
    shutil.rmtree(keep, ignore_errors=True)
    os.rename(path, keep)
    return {"time_s": best(times), "times_s": times, "peak": driver, "workers": workers,
            "levels": shapes}


# --------------------------------------------------------------------------- checks
def compare(kept: str, ref_base: str, ref_levels: str, npy: str, kind: str) -> dict:
    """porevox's levels against the .npy (level 0) and the reference's levels; for
    labels, the recorded counts against np.bincount; for the gray image, how many
    voxels of level 1 a truncating mean (``astype``) would change."""
    import zarr

    from porevox.engine import ome
    from porevox.engine.storage import LABELS, open_volume

    vol = open_volume(kept, mode="r")
    name = "image" if kind == "image" else f"{LABELS}/{LABEL}"
    levels = ome.pyramid(vol, name)
    src = np.load(npy, mmap_mode="r")
    out = {"n_levels": len(levels) - 1, "level0_equal": True}
    step = levels[0].chunks[0]
    for z in range(0, src.shape[0], step):
        if not np.array_equal(levels[0][z:z + step], src[z:z + step]):
            out["level0_equal"] = False
            break
    if not np.array_equal(zarr.open_array(ref_base)[...], np.asarray(src)):
        out["reference_base_equal"] = False
    ref = zarr.open_group(ref_levels, mode="r")
    keys = sorted(ref.array_keys(), key=int)
    out["reference_levels"] = len(keys)
    out["levels_equal"] = len(keys) == len(levels) - 1 and all(
        np.array_equal(levels[k][...], ref[key][...]) for k, key in enumerate(keys, start=1))
    if kind == "image":
        truncated = 0
        for z in range(0, src.shape[0] - 1, 2 * step):
            block = np.asarray(src[z:z + 2 * step]).astype(np.float64)
            n = [s // 2 for s in block.shape]
            mean = block.reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
            truncated += int(np.count_nonzero(mean.astype(np.uint8) != levels[1][z // 2:z // 2 + n[0]]))
        out["truncated_differ"] = truncated / levels[1].size
    else:
        counts = np.zeros(256, np.int64)
        for z in range(0, src.shape[0], step):
            counts += np.bincount(np.asarray(src[z:z + step]).ravel(), minlength=256)
        want = {int(v): int(c) for v, c in enumerate(counts) if c}
        out["counts"] = ome.label_counts(vol, LABEL)
        out["counts_equal"] = out["counts"] == want
    meta = vol.group.attrs["ome"] if kind == "image" else vol.group[name].attrs["ome"]
    out["multiscales_paths"] = [d["path"] for d in meta["multiscales"][0]["datasets"]]
    return out


# --------------------------------------------------------------------------- phases
def setup_phases(work: str, n: int, chunk: int) -> dict:
    """The three-phase structure (like the tests' ``three_phases``) ingested with its
    image, as ``labels/three`` (named phases) and ``labels/binary`` (phase 1+2)."""
    from scipy import ndimage as ndi

    import porevox.engine as pe

    work = Path(work)
    shape = (n, n, n)
    rng = np.random.default_rng(3)

    def porous(porosity):
        field = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
        return field > np.quantile(field, porosity)

    a = porous(0.55)
    b = porous(0.5)
    three = np.where(a, 1, np.where(b, 2, 0)).astype(np.uint8)
    binary = np.isin(three, (1, 2)).astype(np.uint8)
    np.save(work / "image.npy", (three * 90).astype(np.uint8))
    np.save(work / "three.npy", three)
    np.save(work / "binary.npy", binary)
    vol, _ = pe.ingest(work / "image.npy", work / "cathode.zarr", PHASE_VOXEL, chunks=(chunk,) * 3)
    pe.run_label_ingest(pe.plan_label_ingest(work / "three.npy", vol.path, "three", phase_names=PHASE_NAMES))
    pe.run_label_ingest(pe.plan_label_ingest(work / "binary.npy", vol.path, "binary"))
    fractions = np.bincount(three.ravel(), minlength=3) / three.size
    return {"path": str(vol.path), "fractions": fractions.tolist(), "phase_fraction": float(binary.mean())}


def porevox_quantify(path: str, labels: str, phase, repeat: int) -> dict:
    import porevox as pv

    with local_cluster(2, MEMORY) as client:
        client.run(exec, "import porevox.pipelines.quantify")
        pv.quantify(path, labels=labels, phase=phase, features=list(FEATURES))   # warm-up
        times, out = [], None
        for _ in range(repeat):
            os.sync()
            t0 = time.perf_counter()
            out = pv.quantify(path, labels=labels, phase=phase, features=list(FEATURES))
            times.append(time.perf_counter() - t0)
            log(f"    porevox quantify labels/{labels}" + (f" phase {phase}" if phase else "")
                + f": {times[-1]:.2f} s")
        workers = worker_peaks(client)
    values = {k: float(v) for k, v in out.items()
              if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
              and "second" not in k}
    return {"time_s": best(times), "times_s": times, "peak": peak(), "workers": workers, "values": values}


def _same_features(a: dict, b: dict) -> tuple[bool, int, float, list[str]]:
    """Whether every scalar of `a` and `b` agrees to :data:`REL`; how many were
    compared, the largest relative difference, and the keys that differ."""
    keys = sorted(set(a) | set(b))
    worst, bad = 0.0, []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            bad.append(k)
            continue
        if np.isnan(x) and np.isnan(y):
            continue
        diff = abs(x - y) / max(abs(x), abs(y), 1e-300) if x != y else 0.0
        worst = max(worst, diff)
        if not (diff <= REL or abs(x - y) <= 1e-15):
            bad.append(k)
    return not bad, len(keys), worst, bad


# --------------------------------------------------------------------------- suite
def _events(*sides) -> str:
    lines = [line for side in sides for line in (side.get("memory_events") or [])]
    return summarize_memory_events(lines)


def _pyramid_rows(cfg, tmp: Path, kind: str, npy: Path, shape, chunk: int) -> list[dict]:
    what = "image" if kind == "image" else "label image (binary)"
    kept, ref_base, ref_levels = (tmp / f"{kind}.zarr", tmp / f"{kind}-ref-base.zarr",
                                  tmp / f"{kind}-ref-levels.zarr")
    work = str(tmp / f"work-{kind}")
    log(f"  {what}: base level")
    pv_base = isolated(porevox_base, str(npy), work, kind, chunk, cfg.repeat, str(kept), timeout=cfg.timeout)
    ref_b = isolated(reference_base, str(npy), work, kind, chunk, cfg.repeat, str(ref_base),
                     timeout=cfg.timeout)
    log(f"  {what}: pyramid")
    if not pv_base.get("error"):
        pv_lev = isolated(porevox_levels, str(kept), work, kind, cfg.repeat, str(npy), timeout=cfg.timeout)
    else:
        pv_lev = {"error": "no base level to pool (the base write failed)"}
    if not ref_b.get("error"):
        ref_lev = isolated(reference_levels, str(ref_base), work, kind, chunk, cfg.repeat, str(ref_levels),
                           timeout=cfg.timeout)
    else:
        ref_lev = {"error": "no reference base level to pool"}
    checked = {}
    if not any(s.get("error") for s in (pv_base, ref_b, pv_lev, ref_lev)):
        checked = isolated(compare, str(kept), str(ref_base), str(ref_levels), str(npy), kind,
                           timeout=cfg.timeout)
    shutil.rmtree(work, ignore_errors=True)

    base_s, lev_s = pv_base.get("time_s"), pv_lev.get("time_s")
    rb_s, rl_s = ref_b.get("time_s"), ref_lev.get("time_s")
    frac = lev_s / base_s if base_s and lev_s else None
    ref_frac = rl_s / rb_s if rb_s and rl_s else None
    levels = pv_lev.get("levels") or []
    shapes = ", ".join("x".join(map(str, s)) for s in levels[1:])

    def yes(key):
        return str(checked.get(key)).lower() if key in checked else "?"

    rows = [row(
        "ome", f"{what}: base level (level 0)", shape=shape, dtype="uint8", pv=pv_base, ref=ref_b,
        reference="plain Dask: a task per chunk reads its box of the .npy (np.load mmap) + da.to_zarr, "
                  "same chunks, same cluster",
        check=f"level 0 equal to the .npy: {yes('level0_equal')}",
        notes=(f"chunks {chunk}³, {pv_base.get('n_tasks')} tasks; porevox: source_to_dask + da.store "
               + ("into the volume's image, as ingest" if kind == "image" else
                  "into the temporary level 0 of labels/seg (tmp_array), as a label ingest")
               + f"; 2 workers x 1 thread, {MEMORY}; {_events(pv_base)}").rstrip("; "),
    )]
    ratio_text = f"pyramid = {frac:.2f} x base" if frac else "pyramid / base: ?"
    if kind == "image":
        check = f"levels equal to the reference: {yes('levels_equal')}; {ratio_text}"
        extra = ""
        if "truncated_differ" in checked:
            extra = (f"; a truncating mean (astype) would differ on "
                     f"{100 * checked['truncated_differ']:.1f} % of level 1")
        reference = ("per level: da.from_zarr (128³ chunks) + da.coarsen(np.mean) + da.floor(m + 0.5) + "
                     "da.to_zarr (64³ chunks)")
        porevox = "ome.write_image_pyramid (levels published one by one, multiscales)"
    else:
        check = (f"levels equal to the reference: {yes('levels_equal')}; counts equal: "
                 f"{yes('counts_equal')}; {ratio_text}")
        extra = f"; counts {checked.get('counts')}" if checked.get("counts") else ""
        reference = ("per level: da.from_zarr (128³ chunks) + da.coarsen(scipy.stats.mode over each 2x2x2 "
                     "window) + da.to_zarr (64³ chunks); no counts, no metadata")
        porevox = ("storage.publish_array of the label image: finish_labels (levels by the mode, level 0 "
                   "counted on the way, image-label metadata), the labels list, the rename")
    rows.append(row(
        "ome", f"{what}: pyramid (levels {shapes})", shape=shape, dtype="uint8", pv=pv_lev, ref=ref_lev,
        reference=reference, check=check,
        notes=(f"porevox: {porevox}; Mvox/s over level 0's voxels (each read once); pyramid / base "
               f"write: porevox {frac and round(frac, 3)}, reference {ref_frac and round(ref_frac, 3)}; "
               f"the whole {'porevox.ingest' if kind == 'image' else 'run_label_ingest'} (base + "
               f"pyramid + provenance): {pv_lev.get('whole_s', float('nan')):.2f} s; multiscales "
               f"{checked.get('multiscales_paths')}{extra}; {_events(pv_lev)}").rstrip("; "),
        pyramid_over_base=frac, reference_pyramid_over_base=ref_frac, checked=checked,
        whole_s=pv_lev.get("whole_s"),
    ))
    return rows


def run(cfg) -> list[dict]:
    n = cfg.pick(512, 256)
    chunk = 64
    shape = (n, n, n)
    rows = []
    with cfg.scratch("ome") as tmp:
        gray, seg = tmp / "gray.npy", tmp / "seg.npy"
        log(f"  writing {shape} uint8 image and its binary labels")
        made = prepared("writing the input files", write_inputs, str(gray), str(seg), shape,
                        timeout=cfg.timeout)
        log(f"    solid fraction {made['solid_fraction']:.3f}")
        rows += _pyramid_rows(cfg, tmp, "image", gray, shape, chunk)
        rows += _pyramid_rows(cfg, tmp, "labels", seg, shape, chunk)
        gray.unlink()
        seg.unlink()

        m = cfg.pick(192, 96)
        pchunk = m // 2
        log(f"  three phases {m}³, chunks {pchunk}³")
        setup = prepared("writing the three-phase volume", setup_phases, str(tmp), m, pchunk,
                         timeout=cfg.timeout)
        repeat = cfg.repeat
        phase = isolated(porevox_quantify, setup["path"], "three", PHASE, repeat, timeout=cfg.timeout)
        binary = isolated(porevox_quantify, setup["path"], "binary", None, repeat, timeout=cfg.timeout)
        same, count, worst, bad = _same_features(phase.get("values") or {}, binary.get("values") or {})
        overhead = (phase["time_s"] / binary["time_s"] - 1
                    if phase.get("time_s") and binary.get("time_s") else None)
        fr = setup["fractions"]
        rows.append(row(
            "ome", f"phase {PHASE} of a 3-phase label image vs its binary image",
            shape=(m, m, m), dtype="uint8", pv=phase, ref=binary,
            reference=f"pv.quantify of labels/binary (the pre-computed binary image of phase {PHASE}), "
                      "same volume, same cluster",
            check=(f"{count} features equal (rel {REL:g}): {str(same).lower()}, largest rel. diff "
                   f"{worst:.1e}" + (f", differ: {', '.join(bad)}" if bad else "")
                   + (f"; phase overhead {100 * overhead:+.1f} %" if overhead is not None else "")),
            notes=(f"pv.quantify(volume, labels='three', phase='{PHASE}', features={list(FEATURES)}) "
                   f"through a PhaseView; fractions pore {fr[0]:.3f}, LSM {fr[1]:.3f}, YSZ {fr[2]:.3f}; "
                   f"chunks {pchunk}³; 2 workers x 1 thread, {MEMORY}; untimed warm-up call first; "
                   f"D {(phase.get('values') or {}).get('relative_density', float('nan')):.5f}"),
            phase_overhead=overhead, features_compared=count, max_rel_diff=worst,
        ))
    return rows


__all__ = ["run"]
