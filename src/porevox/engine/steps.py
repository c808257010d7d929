"""A run as a graph of steps, each started as soon as the steps it reads from are
done, several at once, each leaving a done marker.

A step is one stage on one tomogram (``segment-otsu/HPA-175C-voi0``) or on the
whole study (``train-unet``). Its function runs in a thread of this (the client)
process and sends its array work to the Dask cluster, so steps of different
tomograms share the workers: while one tomogram waits on a reduction another's
blocks fill the gaps. Of the steps ready to start, the deepest in the graph start
first. Steps marked ``exclusive`` (model training, figures: matplotlib is not
thread-safe) run one at a time among themselves.

Done markers: ``<markers>/<key>.json``, written atomically *after* the step's
function returned (its outputs published). Its fingerprint hashes the step's
parameters and the fingerprints of the steps it depends on, so a change upstream
reruns everything downstream. A rerun skips a step whose marker matches; a step
killed midway has no marker and runs again (the stages themselves also resume
from their provenance, and clear what a killed run left half-written).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PorevoxError, StageError
from .provenance import _digest, jsonable, write_json

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One unit of a run: `func()` does it and returns a JSON-able summary."""

    stage: str
    tomogram: str | None
    func: Callable[[], Any]
    deps: Sequence[str] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    exclusive: bool = False
    #: call ``func(inputs)`` with the results of the steps it depends on, by key
    #: (read from their markers when they were done before)
    uses_inputs: bool = False

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.tomogram}" if self.tomogram else self.stage


@dataclass
class StepRecord:
    key: str
    stage: str
    tomogram: str | None
    status: str            # "done" (ran now) or "skipped" (done before)
    seconds: float
    started: str
    result: Any = None

    def as_dict(self) -> dict:
        return {"step": self.stage, "tomogram": self.tomogram, "status": self.status,
                "seconds": self.seconds, "started": self.started}


def check_graph(steps: Sequence[Step]) -> dict[str, Step]:
    """The steps by key; raise if a key repeats, a dependency is unknown or the graph
    has a cycle."""
    by_key: dict[str, Step] = {}
    for s in steps:
        if s.key in by_key:
            raise ValueError(f"step {s.key} is listed twice")
        by_key[s.key] = s
    for s in steps:
        for d in s.deps:
            if d not in by_key:
                raise ValueError(f"step {s.key} depends on {d}, which is not a step of the run")
    state: dict[str, int] = {}

    def visit(key: str) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise ValueError(f"steps depend on each other in a cycle through {key}")
        state[key] = 1
        for d in by_key[key].deps:
            visit(d)
        state[key] = 2

    for key in by_key:
        visit(key)
    return by_key


def _depth(key: str, by_key: Mapping[str, Step], depth: dict[str, int]) -> int:
    """The number of steps on the longest chain of dependencies ending at `key`."""
    if key not in depth:
        depth[key] = 1 + max((_depth(d, by_key, depth) for d in by_key[key].deps), default=0)
    return depth[key]


def marker_path(markers: Path, key: str) -> Path:
    return markers / (key.replace("/", "--") + ".json")


def read_marker(markers: Path, key: str) -> dict | None:
    try:
        return json.loads(marker_path(markers, key).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(markers: Path, key: str, record: dict) -> None:
    write_json(marker_path(markers, key), record)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def run_steps(steps: Sequence[Step], markers: str | os.PathLike, *, parallel: int = 4,
              on_event: Callable[[str, Step, StepRecord | None], None] | None = None,
              ) -> list[StepRecord]:
    """Run `steps` in an order their dependencies allow, up to `parallel` at once,
    skipping those whose done marker matches. `on_event(kind, step, record)` is called
    with kind ``"start"``, ``"done"`` or ``"skipped"``. The first failure stops new
    steps from starting; the running ones finish, then the error is raised (a
    :class:`StageError` naming the step, unless it was a porevox error about input)."""
    by_key = check_graph(steps)
    markers = Path(markers)
    markers.mkdir(parents=True, exist_ok=True)
    fingerprints: dict[str, str] = {}
    records: dict[str, StepRecord] = {}
    exclusive = threading.Lock()
    emit = on_event or (lambda kind, step, record: None)

    def fingerprint(step: Step) -> str:
        return _digest([step.key, jsonable(step.params), [fingerprints[d] for d in step.deps]])

    def execute(step: Step) -> StepRecord:
        t0 = time.time()
        emit("start", step, None)
        args = ({d: records[d].result for d in step.deps},) if step.uses_inputs else ()
        with exclusive if step.exclusive else contextlib.nullcontext():
            result = step.func(*args)
        seconds = round(time.time() - t0, 3)
        record = StepRecord(step.key, step.stage, step.tomogram, "done", seconds, _iso(t0),
                            jsonable({"result": result})["result"] if result is not None else None)
        _write_marker(markers, step.key, {"key": step.key, "fingerprint": fingerprints[step.key],
                                          "params": jsonable(step.params), "seconds": seconds,
                                          "started": record.started, "finished": _iso(time.time()),
                                          "result": record.result})
        return record

    # Of the steps ready to start, the deepest first (then in the order given): a
    # tomogram's later steps (its scores) run as soon as they can rather than after
    # every other tomogram's earlier ones, so the study-wide steps that wait on them
    # are not left to the end, with the workers idle.
    depth: dict[str, int] = {}
    for key in by_key:
        _depth(key, by_key, depth)
    order = {s.key: i for i, s in enumerate(steps)}
    parallel = max(1, parallel)
    waiting = dict(by_key)
    queued: list[Step] = []
    running: dict[cf.Future, Step] = {}
    failure: BaseException | None = None
    failed_step: Step | None = None
    with cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="porevox-step") as pool:
        while waiting or running or queued:
            if failure is None:
                ready = [s for s in waiting.values()
                         if all(d in records for d in s.deps)]
                for step in ready:
                    del waiting[step.key]
                    fingerprints[step.key] = fingerprint(step)
                    marker = read_marker(markers, step.key)
                    if marker and marker.get("fingerprint") == fingerprints[step.key]:
                        records[step.key] = StepRecord(step.key, step.stage, step.tomogram, "skipped",
                                                       0.0, _iso(time.time()), marker.get("result"))
                        emit("skipped", step, records[step.key])
                        continue
                    queued.append(step)
                if any(all(d in records for d in s.deps) for s in waiting.values()):
                    continue    # skipping made more steps ready
                queued.sort(key=lambda s: (-depth[s.key], order[s.key]))
                while queued and len(running) < parallel:
                    step = queued.pop(0)
                    running[pool.submit(execute, step)] = step
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                step = running.pop(fut)
                try:
                    records[step.key] = fut.result()
                    emit("done", step, records[step.key])
                except BaseException as err:   # noqa: BLE001 - reported below, once
                    if failure is None:
                        failure, failed_step = err, step
                    logger.error("step %s failed: %s", step.key, err)
    if failure is not None:
        if isinstance(failure, PorevoxError):
            raise failure
        raise StageError(f"step {failed_step.key} failed ({type(failure).__name__}: {failure}); "
                         "fix the cause and run again: finished steps are not redone") from failure
    return [records[s.key] for s in steps if s.key in records]


__all__ = ["Step", "StepRecord", "check_graph", "read_marker", "run_steps"]
