"""The benchmark harness: isolated measurement, synthetic data, results and tables.

Every measured side of a case (porevox, and its plain reference) runs in a fresh
process started by ``multiprocessing``'s *spawn* context, so its peak resident set
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own. Two things to know about that
number on Linux:

* a spawned child's ``ru_maxrss`` starts at its *parent's* peak (the kernel keeps
  the high-water mark across fork + exec). The harness process therefore never
  holds data (it only spawns and collects), and every result records that floor
  (``floor_mib``). The child's own high-water mark (``VmHWM`` in
  ``/proc/self/status``, reset by exec) is recorded beside it.
* Dask workers are spawned by their nannies from the measuring process, right after
  it starts the cluster and before it loads any data.

Timings are wall clock (``time.perf_counter``), the best of ``cfg.repeat`` runs after
a warm-up; nothing is ever asserted on them. Input files are fresh in the page cache;
dirty pages are flushed (``os.sync``, untimed) before each measuring process starts,
and nothing measured is fsynced.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20
GiB = 2**30
RATIO_CONVENTION = "ratio = reference time / porevox time (> 1: porevox faster)"


# --------------------------------------------------------------------------- config
@dataclass
class Config:
    """What a suite needs to know: where to write, and how big and how often."""

    out: Path
    quick: bool = False

    @property
    def repeat(self) -> int:
        """Timed runs per side (the best is reported)."""
        return 1 if self.quick else 3

    @property
    def chunk_bytes(self) -> int:
        """Target chunk size for porevox's Dask arrays (quick runs use small ones so
        the small volumes still span several chunks)."""
        return 4 * MiB if self.quick else 64 * MiB

    @property
    def timeout(self) -> float:
        """Seconds a measured child may run before it is killed."""
        return 300.0

    def pick(self, default: Any, quick: Any) -> Any:
        return quick if self.quick else default

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A temporary data folder under ``out``, removed afterwards."""
        path = Path(self.out) / f"tmp-{name}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- memory
def _vmhwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def peak() -> dict:
    """This process's peak memory so far, in MiB: ru_maxrss and VmHWM."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm = _vmhwm_kib()
    return {"ru_maxrss_mib": kib / 1024, "vmhwm_mib": None if hwm is None else hwm / 1024}


def worker_peaks(client) -> list[dict]:
    """:func:`peak` of every worker of `client` (sorted by worker address)."""
    found = client.run(peak)
    return [found[k] for k in sorted(found)]


def worker_memory_events(client) -> list[str]:
    """Worker and nanny log lines about memory (pausing, spilling, restarts).

    Nannies of a LocalCluster share the driver's process and its log buffer, so
    their lines are deduplicated."""
    keys = ("pausing", "memory use is high", "unmanaged memory", "exceeded", "restart",
            "killed", "spill")
    lines, seen = [], set()
    for nanny, logs in ((False, client.get_worker_logs()), (True, client.get_worker_logs(nanny=True))):
        for addr, entries in logs.items():
            for _level, msg in entries:
                text = msg.strip().splitlines()[0][:200] if msg.strip() else ""
                if not any(k in text.lower() for k in keys):
                    continue
                if nanny:
                    if text in seen:
                        continue
                    seen.add(text)
                    lines.append(f"nanny: {text}")
                else:
                    lines.append(f"{addr}: {text}")
    return lines


def summarize_memory_events(lines: Sequence[str] | None) -> str:
    """A short account of :func:`worker_memory_events`: pauses, warnings, restarts."""
    if not lines:
        return ""
    import re

    low = [line.lower() for line in lines]
    counts = {
        "paused (memory > pause fraction of the limit)": sum("pausing worker" in x for x in low),
        "'unmanaged memory use is high' warnings": sum("unmanaged memory" in x for x in low),
        "restart/kill messages": sum(("restart" in x or "killed" in x or "exceeded" in x)
                                     for x in low),
        "spill messages": sum("spill" in x for x in low),
    }
    text = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    seen = [float(m) for x in lines for m in re.findall(r"Process memory: ([0-9.]+) MiB", x)]
    if seen:
        text += f"; highest process memory logged {max(seen):.0f} MiB"
    return f"worker logs: {text or f'{len(lines)} memory lines'}"


@contextlib.contextmanager
def local_cluster(n_workers: int = 2, memory_limit: str | int = "4GB"):
    """A fresh porevox LocalCluster (1 thread per worker), dashboard on a free port."""
    from porevox.engine import cluster

    with cluster(n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit,
                 dashboard_address="127.0.0.1:0") as client:
        client.wait_for_workers(n_workers, timeout=120)
        yield client


def graph_size(obj) -> int:
    """Materialise the task graph of a Dask collection; return its number of tasks."""
    return len(dict(obj.__dask_graph__()))


def best(times: Sequence[float]) -> float:
    return float(min(times))


# --------------------------------------------------------------------------- isolation
def _child(conn, func: Callable, args: tuple, kwargs: dict) -> None:
    try:
        result = func(*args, **kwargs)
        if not isinstance(result, dict):
            result = {"value": result}
    except BaseException as err:  # report every failure to the parent
        result = {"error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()}
    result.setdefault("peak", peak())  # a function may record its peak before its checks
    result["process_peak_at_exit"] = peak()
    try:
        conn.send(result)
    finally:
        conn.close()


def isolated(func: Callable, *args: Any, timeout: float = 300.0, **kwargs: Any) -> dict:
    """Run ``func(*args, **kwargs)`` in a fresh spawned process; return its dict.

    The dict gains ``peak`` (if `func` did not set it), ``floor_mib`` (the parent's
    ru_maxrss, which the child inherits), ``wall_s`` (process start to end) and, on
    failure or timeout, ``error``.
    """
    # Flush dirty pages (untimed) so one case's write-back does not throttle the next.
    if hasattr(os, "sync"):
        os.sync()
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    floor = peak()["ru_maxrss_mib"]
    started = time.perf_counter()
    # Not a daemon: the child may start Dask worker processes of its own.
    proc = ctx.Process(target=_child, args=(send, func, args, kwargs), daemon=False)
    proc.start()
    send.close()
    result = None
    try:
        if recv.poll(timeout):
            result = recv.recv()
    except EOFError:
        result = None
    proc.join(timeout=30)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    recv.close()
    if result is None:
        why = (f"timed out after {timeout:.0f} s" if time.perf_counter() - started >= timeout
               else f"child died (exit code {proc.exitcode})")
        result = {"error": f"{getattr(func, '__name__', func)}: {why}"}
    result["floor_mib"] = floor
    result["wall_s"] = time.perf_counter() - started
    if result.get("error"):
        log(f"  ! {result['error']}")
        if result.get("traceback"):
            log(result["traceback"])
    return result


def prepared(what: str, func: Callable, *args: Any, timeout: float = 300.0, **kwargs: Any) -> dict:
    """:func:`isolated` for a suite's set-up step: its result, or RuntimeError naming
    `what` failed (a suite cannot measure without its input)."""
    made = isolated(func, *args, timeout=timeout, **kwargs)
    if made.get("error"):
        raise RuntimeError(f"{what} failed: {made['error']}")
    return made


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data
LEVELS = {np.dtype(np.uint8): (60, 180, 40), np.dtype(np.uint16): (9000, 40000, 6000)}


def synth_slice(z: int, ny: int, nx: int, dtype: Any, seed: int = 0) -> np.ndarray:
    """Slice `z` of a deterministic two-phase (pore / solid) gray-value volume.

    A separable pattern drifting with z decides the phase; fresh uniform noise per
    slice (seeded by ``(seed, z)``, so incompressible like a real detector's) spreads
    the gray values over many histogram bins. Cheap enough to stream gigabytes slice
    by slice.
    """
    dtype = np.dtype(dtype)
    pore, solid, amp = LEVELS[dtype]
    x = np.arange(nx, dtype=np.float32)
    y = np.arange(ny, dtype=np.float32)
    a = np.sin(x * 0.11 + z * 0.07) + 0.5 * np.sin(x * 0.031 - z * 0.05)
    b = np.sin(y * 0.13 - z * 0.05) + 0.5 * np.sin(y * 0.027 + z * 0.03)
    phase = (b[:, None] + a[None, :]) > 0.2
    noise = np.random.default_rng([seed, z]).integers(-amp, amp + 1, size=(ny, nx),
                                                      dtype=np.int32)
    noise += np.where(phase, np.int32(solid), np.int32(pore))
    return np.clip(noise, 0, np.iinfo(dtype).max).astype(dtype)


def synth_volume(shape: Sequence[int], dtype: Any, seed: int = 0) -> np.ndarray:
    """The whole synthetic volume in memory (only for small shapes / warm-ups)."""
    return np.stack([synth_slice(z, shape[1], shape[2], dtype, seed) for z in range(shape[0])])


def write_npy(path: Path, shape: Sequence[int], dtype: Any, seed: int = 0) -> dict:
    """Write the synthetic volume as ``.npy``, slice by slice (never all in memory)."""
    dtype = np.dtype(dtype)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(int(s) for s in shape)})
        for z in range(shape[0]):
            fh.write(synth_slice(z, shape[1], shape[2], dtype, seed).tobytes())
    return {"path": str(path), "seconds": time.perf_counter() - t0, "peak": peak()}


def write_tiff(path: Path, shape: Sequence[int], dtype: Any, seed: int = 0) -> dict:
    """Write the synthetic volume as a multi-page TIFF, streaming page by page
    (``TiffWriter.write(page, contiguous=True)`` per slice)."""
    import tifffile

    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=nbytes > 3.5 * GiB) as tw:
        for z in range(shape[0]):
            tw.write(synth_slice(z, shape[1], shape[2], dtype, seed), contiguous=True,
                     photometric="minisblack")
    return {"path": str(path), "seconds": time.perf_counter() - t0, "peak": peak(),
            "bytes": os.path.getsize(path)}


def write_files(jobs: Iterable[tuple[str, str, Sequence[int], str]]) -> dict:
    """Write several synthetic files: ``(kind, path, shape, dtype)`` with kind
    ``"npy"`` or ``"tiff"``. Run in a child so the harness stays small."""
    done = {}
    for kind, path, shape, dtype in jobs:
        writer = {"npy": write_npy, "tiff": write_tiff}[kind]
        done[path] = writer(Path(path), shape, dtype)
    return {"files": done}


# --------------------------------------------------------------------------- rows
def describe(shape: Sequence[int], dtype: Any) -> str:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return f"{'x'.join(map(str, shape))} {np.dtype(dtype).name} ({nbytes / MiB:.0f} MiB)"


def row(suite: str, case: str, *, shape: Sequence[int], dtype: Any, pv: Mapping, ref: Mapping,
        reference: str, check: str = "", notes: str = "", **extra: Any) -> dict:
    """One result: porevox side `pv` and reference side `ref` (as returned by the
    measuring children) of the same case, measured in the same run."""
    voxels = math.prod(shape)
    nbytes = voxels * np.dtype(dtype).itemsize
    pv_s, ref_s = pv.get("time_s"), ref.get("time_s")
    workers = pv.get("workers") or []
    errors = [f"{side}: {d['error']}" for side, d in (("porevox", pv), ("reference", ref))
              if d.get("error")]

    def rate(t, amount):
        return amount / t if t else None

    return {
        "suite": suite,
        "case": case,
        "shape": [int(s) for s in shape],
        "dtype": np.dtype(dtype).name,
        "nbytes": int(nbytes),
        "voxels": int(voxels),
        "porevox_s": pv_s,
        "reference_s": ref_s,
        "ratio": (ref_s / pv_s) if pv_s and ref_s else None,
        "porevox_voxels_per_s": rate(pv_s, voxels),
        "reference_voxels_per_s": rate(ref_s, voxels),
        "porevox_GB_per_s": rate(pv_s, nbytes / 1e9),
        "reference_GB_per_s": rate(ref_s, nbytes / 1e9),
        "graph_s": pv.get("graph_s"),
        "compute_s": pv.get("compute_s"),
        "porevox_peak_mib": (pv.get("peak") or {}).get("ru_maxrss_mib"),
        "porevox_worker_peak_mib": max((w["ru_maxrss_mib"] for w in workers), default=None),
        "porevox_worker_peaks": workers,
        "reference_peak_mib": (ref.get("peak") or {}).get("ru_maxrss_mib"),
        "porevox_vmhwm_mib": (pv.get("peak") or {}).get("vmhwm_mib"),
        "porevox_worker_vmhwm_mib": max((w["vmhwm_mib"] or 0 for w in workers), default=None),
        "reference_vmhwm_mib": (ref.get("peak") or {}).get("vmhwm_mib"),
        "floor_mib": max(pv.get("floor_mib") or 0, ref.get("floor_mib") or 0),
        "porevox_times_s": pv.get("times_s"),
        "reference_times_s": ref.get("times_s"),
        "reference": reference,
        "check": check,
        "notes": notes,
        "error": "; ".join(errors) or None,
        **extra,
    }


def error_row(suite: str, case: str, message: str) -> dict:
    return {"suite": suite, "case": case, "error": message, "reference": "", "check": "",
            "notes": ""}


# --------------------------------------------------------------------------- output
COLUMNS = (
    ("suite", "suite"), ("case", "case"), ("data", "data"),
    ("porevox_s", "porevox s"), ("reference_s", "reference s"),
    ("ratio", "ratio ref/porevox (>1: porevox faster)"),
    ("porevox_voxels_per_s", "porevox Mvox/s"), ("reference_voxels_per_s", "reference Mvox/s"),
    ("porevox_GB_per_s", "porevox GB/s"), ("reference_GB_per_s", "reference GB/s"),
    ("graph_s", "graph s"), ("compute_s", "compute s"),
    ("porevox_peak_mib", "porevox peak MiB (driver)"),
    ("porevox_worker_peak_mib", "porevox peak MiB (max worker)"),
    ("reference_peak_mib", "reference peak MiB"),
    ("check", "check"), ("reference", "reference"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if key.endswith("voxels_per_s"):
        return f"{value / 1e6:.1f}"
    if key.endswith("_mib"):
        return f"{value:.0f}"
    if key == "ratio":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown(results: Sequence[Mapping], env: Mapping | None = None) -> str:
    """The results as a Markdown table, with the conventions and per-row notes."""
    lines = ["# porevox benchmarks", ""]
    lines.append(f"Convention: {RATIO_CONVENTION}. Times are wall-clock seconds, best of "
                 "the repeats, each side run in its own fresh spawned process. Peak memory "
                 "is `getrusage(RUSAGE_SELF).ru_maxrss` of that process (MiB); for Dask "
                 "cases the driver's and the largest worker's. graph s = building and "
                 "materialising the Dask graph, compute s = executing it (see notes). "
                 "Inputs are in the page cache; dirty pages are flushed before each "
                 "measuring process; writes are not fsynced.")
    if env:
        lines.append("")
        lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |",
              "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        cells = []
        for key, _ in COLUMNS:
            value = (describe(r["shape"], r["dtype"]) if key == "data" and "shape" in r
                     else r.get(key))
            cells.append(_fmt(key, value))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [r for r in results if r.get("notes") or r.get("error")]
    if notes:
        lines += ["", "Notes:", ""]
        for r in notes:
            text = r.get("notes") or ""
            if r.get("error"):
                text = f"ERROR: {r['error']}. {text}"
            lines.append(f"- {r['suite']} / {r['case']}: {text.strip()}")
    return "\n".join(lines) + "\n"


def environment(floor_mib: float, baseline: Mapping) -> dict:
    import psutil

    return {
        "cores": os.cpu_count(),
        "RAM GiB": round(psutil.virtual_memory().total / GiB, 1),
        "python": platform.python_version(),
        "harness ru_maxrss MiB (inherited floor of every child)": round(floor_mib),
        "idle child peak MiB (python + numpy + dask + porevox imported)": (
            round(baseline["peak"]["ru_maxrss_mib"]) if "peak" in baseline else "?"),
    }


def _baseline() -> dict:
    import dask.array  # noqa: F401
    import distributed  # noqa: F401

    import porevox.engine  # noqa: F401

    return {"peak": peak()}


def run_suites(registry: Mapping[str, Callable], suites: Sequence[str], out: Path,
               quick: bool = False, explicit_only: Sequence[str] = ()) -> list[dict]:
    """Run the named suites (``"all"``: every suite but `explicit_only`) and write
    ``out/results.json`` and ``out/results.md``; print the Markdown; return results."""
    if isinstance(suites, str):
        suites = [suites]
    valid = ["all", *registry]
    unknown = [s for s in suites if s not in valid]
    if unknown:
        raise ValueError(f"unknown benchmark suite(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid)}")
    if not suites:
        raise ValueError(f"name at least one benchmark suite; valid: {', '.join(valid)}")
    names: list[str] = []
    for s in suites:
        for n in ([k for k in registry if k not in explicit_only] if s == "all" else [s]):
            if n not in names:
                names.append(n)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    floor = peak()["ru_maxrss_mib"]
    env = environment(floor, isolated(_baseline, timeout=120))
    results: list[dict] = []
    for name in names:
        cfg = Config(out=out, quick=quick)
        log(f"[{name}] {'quick' if quick else 'full'} run")
        t0 = time.perf_counter()
        try:
            rows = list(registry[name](cfg))
        except Exception as err:  # keep the other suites' results
            log(traceback.format_exc())
            rows = [error_row(name, "(suite)", f"{type(err).__name__}: {err}")]
        for r in rows:
            r.setdefault("suite", name)
        results.extend(rows)
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    table = markdown(results, env)
    (out / "results.md").write_text(table)
    print(table, flush=True)
    return results
