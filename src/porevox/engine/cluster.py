"""The Dask cluster: an embedded LocalCluster on 127.0.0.1, or an existing scheduler.

    with cluster(n_workers=2, memory_limit="512MB") as client:
        ...   # dask computations now run on the cluster

Each worker limits numba, BLAS/OpenMP, torch and zarr's codec threads to its own
thread count, so workers never oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

import psutil

from ..errors import PorevoxError
from .storage import DEFAULT_CHUNK_BYTES
from .tuning import load_tuned

logger = logging.getLogger(__name__)

# NUMBA_NUM_THREADS is not among them: numba fixes its pool size at import and refuses
# a changed value later, and numba.set_num_threads holds for the calling thread only.
# LocalCluster workers get it before they start (see `cluster`); for workers started
# elsewhere, set NUMBA_NUM_THREADS in their environment.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


#: glibc's mmap threshold for LocalCluster workers (bytes; see `cluster`). Set the same
#: in the environment of workers started elsewhere.
MMAP_THRESHOLD = 16 * 2**20


def apply_thread_limits(n: int) -> None:
    """Limit this process's thread pools to `n` threads: BLAS/OpenMP loaded now
    (threadpoolctl) or later (environment), torch and zarr's codec pool. numba's
    pool is sized by NUMBA_NUM_THREADS at import (see THREAD_ENV)."""
    n = max(1, int(n))
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    if "torch" in sys.modules:  # importing torch only to limit it would cost memory
        sys.modules["torch"].set_num_threads(n)
    import zarr

    zarr.config.set({"threading.max_workers": n})


from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402


class ThreadLimits(WorkerPlugin):
    """Worker plugin applying :func:`apply_thread_limits` with the worker's nthreads."""

    name = "porevox-thread-limits"

    def setup(self, worker):
        apply_thread_limits(getattr(worker.state, "nthreads", None) or worker.nthreads)


def active_client():
    """The active distributed client, or None (computations then use Dask's local
    scheduler)."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def cluster_workers() -> dict:
    """The active client's workers, address -> the scheduler's info on it (empty
    without a distributed client)."""
    client = active_client()
    return dict(client.scheduler_info()["workers"]) if client is not None else {}


def worker_memory_limit(workers: dict | None = None) -> int | None:
    """The smallest memory limit (bytes) among `workers` (default: the active
    client's, :func:`cluster_workers`), or None without a distributed client or limits."""
    workers = cluster_workers() if workers is None else workers
    limits = [w.get("memory_limit") or 0 for w in workers.values()]
    limits = [m for m in limits if m > 0]
    return min(limits) if limits else None


#: The Dask resource by which whole-tomogram tasks reserve memory on the worker that
#: runs them (bytes). LocalCluster workers declare their memory limit; workers started
#: elsewhere declare it with ``dask worker --resources MEMORY=<bytes>``.
MEMORY = "MEMORY"


def reservation(need: int) -> dict | None:
    """``{MEMORY: need}`` for a task's ``resources`` where every worker declares the
    resource (then the scheduler never runs two tasks whose reservations exceed one
    worker's memory together on it), else None (a task asking for more than any worker
    has would never run)."""
    workers = cluster_workers()
    if not workers or not all(MEMORY in (w.get("resources") or {}) for w in workers.values()):
        return None
    if need > max(w["resources"][MEMORY] for w in workers.values()):
        return None        # no worker could ever run it: let it try (and fail by memory) instead
    return {MEMORY: int(need)}


def reserving(need: int):
    """A context in which the Dask tasks created carry :func:`reservation` (a no-op
    where the workers declare no memory resource)."""
    import dask

    resources = reservation(need)
    return dask.annotate(resources=resources) if resources else contextlib.nullcontext()


#: Memory of a worker process before its tasks' data: the interpreter, NumPy, SciPy,
#: Zarr and numba's compiled kernels — measured at 240-300 MiB once porevox's
#: kernels have run (``benchmarks/outofcore_suite.py``).
WORKER_BASELINE = 256 * 2**20


#: The least memory limit of a worker that models train on as tasks: torch and its
#: buffers stay in the worker after a training, 350-400 MiB above the baseline even
#: for a small network, which on a 1 GB worker left it near Dask's pause threshold.
TRAINING_MEMORY = int(1.5 * 2**30)


def trains_on_workers(workers: dict) -> bool:
    """Whether models train as tasks on `workers` (:func:`cluster_workers`): on two
    or more (on one, a training task would hold back every other task of a run), each
    with :data:`TRAINING_MEMORY` or no limit. Otherwise they train in this process."""
    return len(workers) >= 2 and all((w.get("memory_limit") or TRAINING_MEMORY) >= TRAINING_MEMORY
                                     for w in workers.values())


def spreads(n: int) -> bool:
    """Whether :func:`spread_calls` runs `n` calls of model work (training,
    sampling) as tasks on the active cluster's workers: two or more calls, and workers
    with room for them (:func:`trains_on_workers`)."""
    return n > 1 and trains_on_workers(cluster_workers())


def spread_calls(calls, *, pin: bool = False) -> list:
    """The results of `calls` (callables without arguments, e.g. ``functools.partial``),
    in order: where :func:`spreads`, as tasks over the active cluster's workers, each
    on its worker's threads and all at once; else here, one after the other. `pin`
    puts call *i* on worker *i* mod the number of workers (long calls, one per worker,
    to start together); otherwise the scheduler places them as workers free up."""
    calls = list(calls)
    if not spreads(len(calls)):
        return [call() for call in calls]
    client = active_client()
    names = sorted(cluster_workers())
    futures = [client.submit(in_task, call, pure=False,
                             **({"workers": [names[i % len(names)]], "allow_other_workers": True}
                                if pin else {}))
               for i, call in enumerate(calls)]
    return client.gather(futures)


def in_task(func, *args, **kwargs):
    """Call `func` inside a Dask task (``client.submit(in_task, func, ...)``) with the
    Dask computations it makes run in this thread: a nested compute sent to the
    cluster would wait for a worker thread, and on a one-thread worker the one it
    waits for is this task's own."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return func(*args, **kwargs)


def chunk_bytes_budget(default: int | None = None) -> int:
    """Chunk size (bytes) the active cluster's workers process comfortably.

    A task holds its chunk, a read buffer and Zarr's encode copies — about 4.5 times
    the chunk, measured in ``benchmarks/`` — and each of a worker's threads runs one:
    their sum, on top of :data:`WORKER_BASELINE`, should stay under 60 % of the
    worker's memory limit, well below Dask's pause threshold (80 %).
    `default` (the most it returns) falls back to the chunk size tuned by
    ``porevox bench --tune`` (:mod:`porevox.engine.tuning`), else ``DEFAULT_CHUNK_BYTES``.
    """
    if default is None:
        tuned = load_tuned()
        default = tuned["chunk_bytes"] if tuned is not None else DEFAULT_CHUNK_BYTES
    share = thread_memory_share()
    if share is None:
        return default
    return int(min(default, max(4 * 2**20, share / 4.5)))


def thread_memory_share(workers: dict | None = None) -> float | None:
    """Bytes one worker thread's tasks may hold together: 60 % of the smallest
    worker memory limit above :data:`WORKER_BASELINE`, over its threads (None without
    a distributed client or limits)."""
    workers = cluster_workers() if workers is None else workers
    limit = worker_memory_limit(workers)
    if limit is None:
        return None
    threads = max(w.get("nthreads", 1) for w in workers.values())
    return (0.6 * limit - WORKER_BASELINE) / threads


def balanced_depth(nz: int, most: int) -> int:
    """Slices per block: at most `most` (the memory budget), and few enough that every
    worker thread of the active cluster (this machine's cores without one) gets about
    four blocks — heavy per-slice work must not leave workers idle at the end. A run
    pins the thread count (``porevox.threads`` in Dask's config) so that a worker
    lost midway changes no block, hence no result."""
    return max(1, min(nz, int(most), -(-nz // (4 * total_threads()))))


def total_threads() -> int:
    """Worker threads of the active cluster (this machine's cores without one), or
    the count a run pinned (``porevox.threads`` in Dask's config) so that a worker
    lost midway changes no block."""
    import dask

    threads = dask.config.get("porevox.threads", None)   # pinned for a whole run (run_study)
    if not threads:
        workers = cluster_workers()
        threads = (sum(w.get("nthreads", 1) for w in workers.values()) if workers
                   else (os.cpu_count() or 1))
    return max(int(threads), 1)


def default_layout() -> dict:
    """Workers, threads and memory for this machine: the layout of
    ``porevox bench --tune`` where it measured a LocalCluster here, else one worker
    process per core, at most four (more cores become threads); 80 % of memory shared
    among the workers."""
    cores = os.cpu_count() or 1
    tuned = load_tuned()
    if tuned is not None and tuned.get("scheduler") is None:
        n_workers = tuned["layout"]["n_workers"]
        threads = tuned["layout"]["threads_per_worker"]
    else:
        n_workers = max(1, min(cores, 4))
        threads = max(1, cores // n_workers)
    memory = int(psutil.virtual_memory().total * 0.8 / n_workers)
    return {"n_workers": n_workers, "threads_per_worker": threads, "memory_limit": memory}


@contextlib.contextmanager
def cluster(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    dashboard_address: str = "127.0.0.1:8787",
    processes: bool = True,
    timeout: str = "20s",
) -> Iterator:
    """A Dask client on an embedded LocalCluster, or on `scheduler` if given.

    `scheduler` falls back to ``DASK_SCHEDULER_ADDRESS``; with neither, a
    LocalCluster on 127.0.0.1 is started with the given (or machine-sized) workers,
    threads per worker and memory limit, and closed on exit. The dashboard link is
    logged either way.
    """
    import dask
    from dask.utils import format_bytes, parse_bytes
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise PorevoxError(
                f"cannot reach the Dask scheduler at {address} ({err}); start it or drop "
                "--scheduler / DASK_SCHEDULER_ADDRESS to use a local cluster"
            ) from err
        local = None
        logger.info("attached to Dask scheduler %s", address)
    else:
        layout = default_layout()
        n_workers = n_workers or layout["n_workers"]
        threads = threads_per_worker or layout["threads_per_worker"]
        memory = memory_limit if memory_limit is not None else layout["memory_limit"]
        try:   # each worker offers its memory limit as a resource that whole-tomogram tasks reserve
            limit = int(parse_bytes(memory) if isinstance(memory, str) else memory)
        except (TypeError, ValueError):   # "auto"
            limit = 0
        # Worker processes get the limits in their environment before they start, so
        # BLAS, OpenMP and numba size their pools from them; the plugin covers the rest.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.update({var: str(threads) for var in (*THREAD_ENV, "NUMBA_NUM_THREADS")})
        if "MALLOC_TRIM_THRESHOLD_" in environ:
            # Dask sets glibc's trim threshold to return freed memory promptly; setting
            # it also freezes glibc's adaptive mmap threshold at 128 KiB, so every larger
            # temporary (numpy, torch activations) is mmapped and unmapped each time:
            # U-Net inference ran 2.5x slower in a worker. Fix the mmap threshold too.
            environ.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
        # The nannies live in this process and write those variables into *its*
        # environment before spawning: put this process's back once the workers are
        # up, or its own numba (e.g. a per-tomogram solve) would see NUMBA_NUM_THREADS
        # change under a launched thread pool, which numba refuses with an error.
        before = {var: os.environ.get(var) for var in environ}
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                    warnings.catch_warnings():
                # a busy dashboard port moves to a free one; the link is logged below
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                local = LocalCluster(
                    host="127.0.0.1",
                    n_workers=n_workers,
                    threads_per_worker=threads,
                    memory_limit=memory,
                    processes=processes,
                    dashboard_address=dashboard_address,
                    resources={MEMORY: limit} if limit else None,
                    # a failing task reaches the client as its exception: the workers'
                    # own tracebacks stay off the terminal unless asked for (-vv)
                    silence_logs=logging.WARNING if dask.config.get("porevox.worker_logs", False)
                    else logging.CRITICAL,
                )
        finally:
            for var, value in before.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        client = Client(local)
        logger.info("started LocalCluster: %d workers x %d threads, %s memory each",
                    n_workers, threads,
                    format_bytes(memory) if isinstance(memory, int) else memory)
    try:
        client.register_plugin(ThreadLimits())
        logger.info("Dask dashboard: %s", client.dashboard_link)
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def compute_dynamic(groups: dict, follow) -> None:
    """Compute the Dask collections of ``groups`` ({tag: [items]}), calling
    ``follow(tag, index, value)`` as each finishes; `follow` may return more groups,
    which start at once — on a distributed client while the rest still runs (a second
    round never waits for the slowest task of the first), else in rounds. Progress
    (where asked, as for :func:`compute`) counts finished tasks on stderr."""
    import dask

    client = active_client()
    if client is None:
        while groups:
            tags = [(tag, i) for tag, items in groups.items() for i in range(len(items))]
            values = dask.compute(*[item for items in groups.values() for item in items])
            more: dict = {}
            for (tag, i), value in zip(tags, values):
                more.update(follow(tag, i, value) or {})
            groups = more
        return
    from distributed import as_completed

    show = dask.config.get("porevox.progress", False)
    queue, where, done = as_completed(), {}, 0

    def submit(new: dict) -> None:      # one graph per call: shared inputs are sent once
        tags = [(tag, i) for tag, items in new.items() for i in range(len(items))]
        futures = client.compute([item for items in new.values() for item in items]) if tags else []
        for tag, future in zip(tags, futures):
            where.setdefault(future, []).append(tag)    # equal keys: one future per item
            queue.add(future)

    submit(groups)
    for future in queue:
        tag, i = where[future].pop()
        if not where[future]:
            del where[future]
        value = future.result()
        done += 1
        if show:
            sys.stderr.write(f"\r{done} of {done + len(where)} tasks done")
        submit(follow(tag, i, value) or {})
    if show:
        sys.stderr.write("\n")


def compute(*collections):
    """``dask.compute``, with a progress bar on stderr where the caller (the CLI)
    asked for one with ``dask.config.set({"porevox.progress": True})`` and a
    distributed client is active."""
    import dask

    if not dask.config.get("porevox.progress", False):
        return dask.compute(*collections)
    from distributed import progress

    client = active_client()
    if client is None:
        return dask.compute(*collections)
    futures = client.compute(list(collections))
    with contextlib.redirect_stdout(sys.stderr):
        progress(futures, notebook=False)
        sys.stdout.write("\n")
    return tuple(client.gather(futures))
