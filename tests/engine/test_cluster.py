"""The cluster: an embedded LocalCluster, or attaching to a real external scheduler."""

import logging
import os

import numpy as np
import pytest

from porevox import PorevoxError, ingest
from porevox.engine import cluster


def thread_state_fn():
    """A function for workers, which cannot import this test module: a nested
    function is shipped by value."""

    def thread_state():
        import numba
        from threadpoolctl import threadpool_info

        return {"numba": numba.get_num_threads(),
                "blas": sorted({p["num_threads"] for p in threadpool_info()
                                if p["user_api"] == "blas"}),
                "openmp": sorted({p["num_threads"] for p in threadpool_info()
                                  if p["user_api"] == "openmp"})}

    return thread_state


def test_local_cluster_limits_threads_and_logs_dashboard(caplog):
    import os

    before = {k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                             "MALLOC_MMAP_THRESHOLD_")}
    with caplog.at_level(logging.INFO, logger="porevox"):
        with cluster(n_workers=2, threads_per_worker=1, memory_limit="1GB",
                     dashboard_address="127.0.0.1:0") as c:
            # the workers' limits are theirs: this process's environment is unchanged
            # (the nannies write them into it; numba here would refuse a changed value)
            assert {k: os.environ.get(k) for k in before} == before
            info = c.scheduler_info()["workers"]
            assert len(info) == 2
            assert all(w["nthreads"] == 1 for w in info.values())
            assert all(w["memory_limit"] == 10**9 for w in info.values())
            assert all(w["host"] == "127.0.0.1" for w in info.values())
            # where tasks run: the workers' executor threads
            states = [c.submit(thread_state_fn(), workers=[w], pure=False).result() for w in info]
            assert all(s["numba"] == 1 and s["blas"] == [1] and s["openmp"] in ([], [1])
                       for s in states), states
            link = c.dashboard_link
    assert f"Dask dashboard: {link}" in caplog.text


def _interval(seconds):
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def test_whole_tomogram_tasks_reserve_worker_memory():
    """Workers offer their memory limit as a resource; tasks that reserve more than
    half of it never run together on one worker (they would without it)."""
    import dask

    from porevox.engine.cluster import MEMORY, reservation, reserving

    with cluster(n_workers=1, threads_per_worker=2, memory_limit="1GB",
                 dashboard_address="127.0.0.1:0") as c:
        [info] = c.scheduler_info()["workers"].values()
        assert info["resources"] == {MEMORY: 10**9}
        assert reservation(6 * 10**8) == {MEMORY: 6 * 10**8}
        with reserving(6 * 10**8):
            big = [dask.delayed(_interval, pure=False)(0.5) for _ in range(2)]
        small = [dask.delayed(_interval, pure=False)(0.5) for _ in range(2)]
        a, b = dask.compute(*big)
        c_, d = dask.compute(*small)
    assert a[1] <= b[0] or b[1] <= a[0]                 # one after the other
    assert c_[0] < d[1] and d[0] < c_[1]                # side by side


def test_attach_to_external_scheduler(external_scheduler, tmp_path, rng):
    data = rng.integers(0, 65535, (20, 30, 40), dtype=np.uint16)
    np.save(tmp_path / "s.npy", data)
    with cluster(external_scheduler) as c:
        assert c.cluster is None                      # nothing local was started
        workers = c.scheduler_info()["workers"]
        assert [w["name"] for w in workers.values()] == ["external-0"]
        state = c.submit(thread_state_fn(), pure=False).result()
        # BLAS is limited by the plugin on attach; numba's OpenMP pool of a worker
        # started elsewhere follows its NUMBA_NUM_THREADS (docs/studies.md), so it is not checked
        assert state["blas"] == [1]
        vol, did = ingest(tmp_path / "s.npy", tmp_path / "o.zarr", (1, 1, 1), chunks=(7, 30, 40))
        ran = c.run(lambda dask_worker: sorted({str(k[0]) for k in dask_worker.data}
                                                | {str(e[0]) for e in dask_worker.state.log}))
    assert did
    assert any("store" in key for key in ran["tcp://" + next(iter(workers))[6:]])  # the external worker wrote
    np.testing.assert_array_equal(vol.image[:], data)


def test_scheduler_from_environment(external_scheduler, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", external_scheduler)
    with cluster() as c:
        assert c.scheduler.address == external_scheduler


def test_unreachable_scheduler_names_the_fix():
    with pytest.raises(PorevoxError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with cluster("tcp://127.0.0.1:9", timeout="2s"):
            pass


def test_ingest_sizes_chunks_for_small_workers(tmp_path):
    """Default chunks follow the workers' memory limit (a 2 GB stack on 512 MB workers
    must not push them past Dask's pause threshold; see benchmarks/ingest_large)."""
    from porevox.engine.cluster import WORKER_BASELINE, chunk_bytes_budget
    from porevox.engine.storage import DEFAULT_CHUNK_BYTES

    data = np.zeros((80, 512, 512), np.uint16)          # 40 MiB: one chunk by default
    np.save(tmp_path / "s.npy", data)
    assert chunk_bytes_budget() == DEFAULT_CHUNK_BYTES  # no cluster: the default
    with cluster(n_workers=1, threads_per_worker=1, memory_limit="512MB", dashboard_address="127.0.0.1:0"):
        budget = chunk_bytes_budget()
        assert budget == int((0.6 * 512e6 - WORKER_BASELINE) / 4.5)
        vol, _ = ingest(tmp_path / "s.npy", tmp_path / "o.zarr", (1, 1, 1))
    chunks = vol.image.chunks
    assert np.prod(chunks) * 2 <= budget < data.nbytes
    assert vol.provenance["ingest"]["chunks"] == list(chunks)
    assert vol.provenance["ingest"]["params"]["chunks"] == "auto"


def test_local_cluster_listens_on_loopback_only():
    """Scheduler, workers, nannies and the dashboard: every socket porevox's
    LocalCluster listens on (this process's and its worker processes') is 127.0.0.1."""
    import psutil

    with cluster(n_workers=2, threads_per_worker=1, memory_limit="1GB") as c:
        assert c.dashboard_link.startswith("http://127.0.0.1:")
        workers = c.scheduler_info()["workers"]
        ours = {int(c.dashboard_link.split(":")[2].split("/")[0]), int(c.scheduler.address.rsplit(":", 1)[1])}
        ours |= {int(a.rsplit(":", 1)[1]) for w, info in workers.items() for a in (w, info["nanny"])}
        worker_pids = set(c.run(os.getpid).values())
        # this process (other tests' servers may live here too: only this cluster's
        # ports count) and the cluster's worker processes (all of their sockets)
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = [(p.pid, conn.laddr) for p in procs
                     for conn in p.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
        mine = [a for pid, a in listening if a.port in ours or pid in worker_pids]
        # the scheduler, the dashboard, 2 workers and 2 nannies
        assert {a.port for a in mine} >= ours and len(ours) == 6
        assert {a.ip for a in mine} == {"127.0.0.1"}, mine
