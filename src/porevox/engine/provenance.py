"""Provenance and resume.

Every stage that writes into a volume leaves a record under
``attrs["porevox"]["provenance"][stage]``::

    {"stage", "params", "inputs": {name: fingerprint}, "outputs": [...],
     "fingerprint", "porevox_version", "started", "finished", "seconds"}

A record is written only *after* the stage's outputs are completely written and
published, so a killed stage is never marked done. ``fingerprint`` hashes the
stage, its parameters and its inputs' fingerprints; a later stage that reads an
output uses it as that input's fingerprint, so a change anywhere upstream makes
everything downstream run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from .location import version
from .storage import Volume

logger = logging.getLogger(__name__)


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def jsonable(params: Mapping[str, Any]) -> dict:
    """Parameters as plain JSON values (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(params), default=str))


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None and NumPy scalars as Python numbers, through
    dicts, lists and tuples: what strict JSON (``allow_nan=False``) accepts."""
    if hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> str:
    """Fingerprint of source files: their names, sizes and modification times."""
    entries = []
    for p in paths:
        st = Path(p).stat()
        entries.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return _digest(entries)


def fingerprint_array(volume: Volume, name: str) -> str:
    """Fingerprint of an array in `volume`: that of the stage that wrote it.

    An array no porevox stage wrote (added by hand) is fingerprinted by its
    metadata and the time its metadata was last written.
    """
    for record in volume.provenance.values():
        if name in record.get("outputs", ()) and record.get("fingerprint"):   # not a pending one
            return record["fingerprint"]
    arr = volume.array(name)
    mtime = version(volume.path / name / "zarr.json")
    return _digest([name, list(arr.shape), str(arr.dtype), list(arr.chunks), mtime])


def stage_fingerprint(stage: str, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    return _digest([stage, jsonable(params), dict(inputs)])


def completed(volume: Volume, stage: str, params: Mapping[str, Any],
              inputs: Mapping[str, str]) -> dict | None:
    """The record of `stage` if it finished with these params and inputs and its
    outputs are all still present; else None."""
    record = volume.provenance.get(stage)
    if not record or record.get("fingerprint") != stage_fingerprint(stage, params, inputs):
        return None
    for out in record.get("outputs", ()):
        if not (volume.path / out / "zarr.json").exists():
            return None
    return record


def writers(volume: Volume, name: str) -> list[str]:
    """The stages recorded as having written array `name` of `volume`."""
    return [k for k, r in volume.provenance.items() if name in r.get("outputs", [])]


def pending(volume: Volume, stage: str, outputs: Iterable[str]) -> None:
    """Record, just before its outputs are published, that `stage` is writing them
    (never done: no fingerprint): a process killed between the publish and
    :func:`write_record` leaves porevox's own claim on them, so that the rerun may
    replace them (see :func:`writers`)."""
    record = {"stage": stage, "outputs": list(outputs), "pending": True}
    volume.edit_meta(lambda meta: meta.setdefault("provenance", {}).update({stage: record}))


def write_record(
    volume: Volume,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    outputs: Iterable[str],
    started: float,
    **extra: Any,
) -> dict:
    """Mark `stage` done. Call only after every output is published."""
    finished = time.time()
    record = {
        "stage": stage,
        "params": jsonable(params),
        "inputs": dict(inputs),
        "outputs": list(outputs),
        "fingerprint": stage_fingerprint(stage, params, inputs),
        "porevox_version": __version__,
        "started": _iso(started),
        "finished": _iso(finished),
        "seconds": round(finished - started, 3),
        **jsonable(extra),
    }
    volume.edit_meta(lambda meta: meta.setdefault("provenance", {}).update({stage: record}))
    return record


def amend(volume: Volume, stage: str, **fields: Any) -> dict:
    """Add `fields` to the record of `stage`; returns the record."""
    def change(meta):
        meta["provenance"][stage] = {**meta["provenance"][stage], **jsonable(fields)}

    return volume.edit_meta(change)["provenance"][stage]


def forget(volume: Volume, stage: str) -> None:
    """Drop the record of `stage` (before it is run again with other inputs)."""
    if stage in volume.provenance:
        volume.edit_meta(lambda meta: meta.get("provenance", {}).pop(stage, None))


#: Packages whose versions a run records.
VERSIONED = ("dask", "distributed", "zarr", "numpy", "scipy", "scikit-image", "scikit-learn",
             "numba", "torch", "pandas", "matplotlib", "shap")


def versions() -> dict:
    """Python, the platform, porevox and the installed versions of :data:`VERSIONED`."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "porevox": __version__, "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as strict JSON (NaN as null) under a temporary name beside `path`,
    then rename it into place: a reader never sees a half-written file."""
    import threading

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(finite(obj), indent=1, default=str, allow_nan=False))
    os.replace(tmp, path)
    return path


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")
