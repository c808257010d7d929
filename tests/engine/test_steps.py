"""The step graph a run executes (engine.steps): dependencies, the bound on steps in
flight, exclusive steps, the order ready steps start in, done markers and failures."""

import threading
import time

import pytest

from porevox.engine.steps import Step, check_graph, run_steps
from porevox.errors import StageError


class Log:
    """Records when each step starts and ends, and how many run at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.now = self.most = 0
        self.inputs: dict[str, tuple] = {}

    def step(self, key, seconds=0.02, fail=False):
        def func(*inputs):
            with self.lock:
                self.inputs[key] = inputs
                self.events.append(("start", key))
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(seconds)
            with self.lock:
                self.events.append(("end", key))
                self.now -= 1
            if fail:
                raise RuntimeError(f"{key} broke")
            return {"key": key}
        return func

    def started(self):
        return [k for e, k in self.events if e == "start"]

    def span(self, key):
        return self.events.index(("start", key)), self.events.index(("end", key))


def test_dependencies_bound_and_exclusive(tmp_path):
    log = Log()
    # two exclusive steps, both started first (of the deepest, the first given): they
    # may not overlap
    steps = [Step("fig1", None, log.step("fig1", 0.1), exclusive=True),
             Step("fig2", None, log.step("fig2", 0.1), exclusive=True)]
    steps += [Step("a", f"t{i}", log.step(f"a/t{i}", 0.05)) for i in range(6)]
    steps += [Step("b", f"t{i}", log.step(f"b/t{i}"), [f"a/t{i}"]) for i in range(6)]
    records = run_steps(steps, tmp_path / "done", parallel=3)
    assert [r.key for r in records] == [s.key for s in steps] and {r.status for r in records} == {"done"}
    assert log.most == 3                                    # never more than `parallel`
    for s in steps:
        for d in s.deps:
            assert log.span(d)[1] < log.span(s.key)[0]
    f1, f2 = log.span("fig1"), log.span("fig2")
    assert f1[1] < f2[0] or f2[1] < f1[0]                    # exclusive: one at a time


def test_deepest_ready_step_starts_first(tmp_path):
    """One at a time: once a1 is done, b1 (which needs it) starts before a2 and a3."""
    log = Log()
    steps = [Step("a", f"t{i}", log.step(f"a/t{i}")) for i in (1, 2, 3)]
    steps += [Step("b", "t1", log.step("b/t1"), ["a/t1"]),
              Step("c", "t1", log.step("c/t1"), ["b/t1"])]
    run_steps(steps, tmp_path / "done", parallel=1)
    assert log.started() == ["a/t1", "b/t1", "c/t1", "a/t2", "a/t3"]


def test_markers_skip_done_steps_and_changes_rerun_downstream(tmp_path):
    log = Log()

    def plan(param):
        return [Step("a", "t", log.step("a/t")), Step("b", "t", log.step("b/t"), ["a/t"], {"p": param}),
                Step("c", None, log.step("c"), ["b/t"], uses_inputs=True)]

    run_steps(plan(1), tmp_path / "done")
    assert log.started() == ["a/t", "b/t", "c"]
    again = run_steps(plan(1), tmp_path / "done")
    assert log.started() == ["a/t", "b/t", "c"] and {r.status for r in again} == {"skipped"}
    assert again[1].result == {"key": "b/t"}                 # read back from the marker
    changed = run_steps(plan(2), tmp_path / "done")
    assert log.started()[3:] == ["b/t", "c"] and log.inputs["c"] == ({"b/t": {"key": "b/t"}},)
    assert [r.status for r in changed] == ["skipped", "done", "done"]


def test_a_failure_stops_new_steps_and_is_not_marked(tmp_path):
    log = Log()
    steps = [Step("a", "t1", log.step("a/t1", fail=True)), Step("a", "t2", log.step("a/t2", 0.1)),
             Step("b", "t1", log.step("b/t1"), ["a/t1"]), Step("b", "t2", log.step("b/t2"), ["a/t2"])]
    with pytest.raises(StageError, match=r"step a/t1 failed \(RuntimeError: a/t1 broke\)"):
        run_steps(steps, tmp_path / "done", parallel=2)
    assert ("end", "a/t2") in log.events                     # the running step finished
    assert "b/t1" not in log.started() and "b/t2" not in log.started()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a--t2.json"]


def test_bad_graphs_raise():
    f = Log().step("x")
    with pytest.raises(ValueError, match="listed twice"):
        check_graph([Step("a", "t", f), Step("a", "t", f)])
    with pytest.raises(ValueError, match="depends on b/t, which is not a step"):
        check_graph([Step("a", "t", f, ["b/t"])])
    with pytest.raises(ValueError, match="cycle"):
        check_graph([Step("a", "t", f, ["b/t"]), Step("b", "t", f, ["a/t"])])
