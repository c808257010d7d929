"""The tuned configuration of ``porevox bench --tune``: file, pickup, and a tiny real tuning."""

import logging
import os

import psutil
import pytest
import yaml

from porevox.engine import tuning
from porevox.engine.cluster import WORKER_BASELINE, chunk_bytes_budget, cluster, default_layout
from porevox.engine.storage import DEFAULT_CHUNK_BYTES

MiB = 2**20


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A private POREVOX_CONFIG path (the file not yet written)."""
    path = tmp_path / "porevox" / "tuned.yaml"
    monkeypatch.setenv(tuning.ENV, str(path))
    return path


def test_config_path_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(tuning.ENV, raising=False)
    assert tuning.config_path() == tuning.DEFAULT_PATH.expanduser()
    monkeypatch.setenv(tuning.ENV, str(tmp_path / "t.yaml"))
    assert tuning.config_path() == tmp_path / "t.yaml"


def test_save_load_roundtrip(config):
    assert tuning.load_tuned() is None                       # no file: nothing tuned
    cfg = tuning.make_config(1, 2, 16 * MiB)
    path = tuning.save_tuned(cfg)
    assert path == config
    assert [p.name for p in config.parent.iterdir()] == ["tuned.yaml"]   # no temporary left
    assert yaml.safe_load(config.read_text()) == cfg          # plain YAML
    assert tuning.load_tuned() == cfg
    assert set(cfg) == {"layout", "chunk_bytes", "measured", "machine", "scheduler"}
    assert cfg["machine"]["cores"] == os.cpu_count()


def test_save_rejects_a_bad_config(config):
    with pytest.raises(ValueError, match="chunk_bytes must be a positive integer"):
        tuning.save_tuned({**tuning.make_config(1, 1, MiB), "chunk_bytes": 0})
    assert not config.exists()


@pytest.mark.parametrize("text", ["layout: [1, 2\n", "- just\n- a list\n",
                                  "layout: {n_workers: 0, threads_per_worker: 1}\nchunk_bytes: 5\n",
                                  "\x00\x01"])
def test_malformed_file_warns_and_is_ignored(config, caplog, text):
    config.parent.mkdir(parents=True)
    config.write_text(text)
    with caplog.at_level(logging.WARNING, logger="porevox"):
        assert tuning.load_tuned() is None
        assert default_layout()["n_workers"] == max(1, min(os.cpu_count(), 4))
        assert chunk_bytes_budget() == DEFAULT_CHUNK_BYTES
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1                                  # once per file, not per call
    assert "ignoring the tuned configuration" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_another_machines_tuning_is_ignored(config, caplog):
    cfg = tuning.make_config(1, 2, 16 * MiB)
    cfg["machine"]["hostname"] = "elsewhere"
    tuning.save_tuned(cfg)
    with caplog.at_level(logging.INFO, logger="porevox"):
        assert tuning.load_tuned() is None
    assert "measured on elsewhere" in caplog.text
    cfg = tuning.make_config(1, 2, 16 * MiB)
    cfg["machine"]["cores"] = (os.cpu_count() or 1) + 7
    tuning.save_tuned(cfg)
    assert tuning.load_tuned() is None


def test_default_layout_and_chunk_budget_pick_up_the_tuning(config, caplog):
    cores = os.cpu_count() or 1
    tuning.save_tuned(tuning.make_config(3, 5, 12 * MiB))
    with caplog.at_level(logging.INFO, logger="porevox"):
        layout = default_layout()
        assert chunk_bytes_budget() == 12 * MiB
    assert (layout["n_workers"], layout["threads_per_worker"]) == (3, 5)
    memory = psutil.virtual_memory().total * 0.8 / 3           # still 80 % of RAM, shared
    assert abs(layout["memory_limit"] - memory) < 0.01 * memory
    used = [r for r in caplog.records if "using the tuned configuration" in r.getMessage()]
    assert len(used) == 1 and str(config) in used[0].getMessage()     # logged once
    # explicit arguments win
    assert chunk_bytes_budget(default=5 * MiB) == 5 * MiB
    # a tuning measured on an external cluster does not size LocalClusters
    tuning.save_tuned(tuning.make_config(3, 5, 12 * MiB, scheduler="tcp://10.0.0.1:8786"))
    layout = default_layout()
    assert layout["n_workers"] == max(1, min(cores, 4))
    assert chunk_bytes_budget() == 12 * MiB


def test_cluster_uses_tuned_layout_unless_told(config):
    tuning.save_tuned(tuning.make_config(1, 2, 12 * MiB))
    with cluster(dashboard_address="127.0.0.1:0", memory_limit="1GB") as c:
        workers = c.scheduler_info()["workers"].values()
        assert [w["nthreads"] for w in workers] == [2]
        # still capped by the workers' memory budget, shared by the worker's 2 threads
        assert chunk_bytes_budget() == min(12 * MiB, int((0.6 * 1e9 - WORKER_BASELINE) / 4.5 / 2))
    with cluster(n_workers=2, threads_per_worker=1, memory_limit="1GB", dashboard_address="127.0.0.1:0") as c:
        assert sorted(w["nthreads"] for w in c.scheduler_info()["workers"].values()) == [1, 1]


def test_candidate_layouts():
    from benchmarks.tune import candidate_layouts

    assert candidate_layouts(1) == [(1, 1)]
    assert candidate_layouts(2) == [(1, 2), (2, 1)]
    assert candidate_layouts(4) == [(1, 4), (2, 2), (4, 1)]
    many = candidate_layouts(32)
    assert (1, 32) in many and (8, 4) in many and (16, 2) in many and (32, 1) in many
    assert all(n * t == 32 for n, t in many) and len(many) <= 5


@pytest.mark.slow        # porevox bench --tune itself: with the benchmarks (make bench)
def test_tune_end_to_end(config, tmp_path):
    """A real, tiny tuning: every layout x chunk target measured, the best saved."""
    from benchmarks.tune import QUICK_CHUNK_MIB, STAGES, candidate_layouts, tune

    result = tune(tmp_path / "out", quick=True, shape=(12, 48, 48))
    layouts = candidate_layouts(os.cpu_count() or 1)
    measured = [(r["n_workers"], r["threads_per_worker"], r["chunk_mib"]) for r in result["rows"]]
    assert measured == [(n, t, m) for n, t in layouts for m in QUICK_CHUNK_MIB]
    assert not any(r.get("error") for r in result["rows"]), result["rows"]
    for r in result["rows"]:
        assert set(r["seconds"]) == set(STAGES) and all(s > 0 for s in r["seconds"].values())
        assert r["total_s"] == pytest.approx(sum(r["seconds"].values()))
    best = result["best"]
    assert best["total_s"] == min(r["total_s"] for r in result["rows"])
    assert result["config_path"] == str(config)
    saved = tuning.load_tuned()
    assert saved["layout"] == {"n_workers": best["n_workers"],
                               "threads_per_worker": best["threads_per_worker"]}
    assert saved["chunk_bytes"] == best["chunk_bytes"] and saved["scheduler"] is None
    table = (tmp_path / "out" / "tune.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "MiB" not in line]
    assert len(rows) == len(measured)
    assert sum("**best**" in line for line in rows) == 1
    assert (tmp_path / "out" / "tune.json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] in (["tune.md", "tune.json"],
                                                              ["tune.json", "tune.md"])


def test_cli_bench_tune_passes_scheduler(monkeypatch, tmp_path):
    """`porevox --scheduler ADDR bench --tune --quick --out DIR` calls tune with them."""
    import benchmarks.tune
    from typer.testing import CliRunner

    from porevox.cli import app

    seen = {}

    def fake_tune(out, quick=False, scheduler=None):
        seen.update(out=out, quick=quick, scheduler=scheduler)
        return {"markdown": "| table |", "config_path": "/x/tuned.yaml"}

    monkeypatch.setattr(benchmarks.tune, "tune", fake_tune)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    res = CliRunner().invoke(app, ["--scheduler", "tcp://1.2.3.4:8786", "bench", "--tune", "--quick",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen == {"out": tmp_path, "quick": True, "scheduler": "tcp://1.2.3.4:8786"}
    assert "| table |" in res.output and "/x/tuned.yaml" in res.output
    res = CliRunner().invoke(app, ["bench", "--tune", "io"])
    assert res.exit_code == 2
