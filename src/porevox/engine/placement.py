"""Where a whole-volume computation runs: in this process or as one Dask task on a
worker, chosen from its memory estimate against what each has (logged).

Global solves (conductivity, whole-volume fast marching) need the whole tomogram in
one process. :func:`place` decides where:

* no distributed client, or a LocalCluster started in this process: in this process
  ("driver"), if the machine has the memory free (the workers of a local cluster
  share this machine's memory, and each is limited to its own few threads);
* a client attached to an external scheduler (``--scheduler``): as one task on a
  worker ("worker") whose memory limit leaves room for it (the data is read there,
  never passing through the driver, which may be a small login node); in this
  process if no worker has the room;
* ``None`` where nothing has room: the caller raises with the fix, or falls back
  to a block decomposition.

:func:`run_whole` then runs a function of the whole array there, once per set of
options (several directions of one volume share one read of the data).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from dask.utils import format_bytes

from ..errors import InvalidVolumeError
from . import phases
from .blockwise import as_dask
from .cluster import active_client, compute, reservation, worker_memory_limit
from .storage import LABELS, Volume, check_voxel_size, open_volume

logger = logging.getLogger(__name__)

#: A computation goes to a worker only if it needs at most this fraction of the
#: worker's memory limit (Dask pauses a worker at 80 % and restarts it at 95 %).
WORKER_FRACTION = 0.6


# --------------------------------------------------------------------------- inputs
def resolve_source(solid, voxel_size, labels: str, *, phase=None, what: str = "stage",
                   log: logging.Logger = logger) -> tuple[Any, tuple[float, float, float]]:
    """The array to work on (not yet read) and the voxel size to use.

    `solid` is a NumPy, Dask or Zarr array, or a porevox volume (path or
    :class:`~porevox.engine.Volume`) whose ``labels/<labels>`` is used; `voxel_size`
    defaults to the volume's own, or isotropic for arrays (logged on `log`). With a
    `phase` (a value, values joined by "+", or a name recorded on a volume's label
    image), the array is read as 1 where it holds that phase; else nonzero is read.
    """
    if isinstance(solid, (str, os.PathLike, Volume)):
        volume = open_volume(solid, mode="r")
        if labels not in volume.labels:
            raise InvalidVolumeError(
                f"{volume.path} has no label image {labels!r}; it has {volume.labels or 'none'}: "
                "pass labels=<one of them> or segment the volume first")
        source = volume.array(f"{LABELS}/{labels}")
        if phase is not None:
            values = phases.parse(phase, phases.names(source), where=f"{volume.path}: labels/{labels}")
            source = phases.phase_of(volume.reader(f"{LABELS}/{labels}"), values)
        if voxel_size is None:
            voxel_size = volume.voxel_size
    else:
        if not hasattr(solid, "shape") or not hasattr(solid, "dtype"):
            raise TypeError(f"solid must be an array or a volume path; got {type(solid).__name__}")
        source = solid if phase is None else phases.phase_of(solid, phases.parse(phase, where="an array"))
        if voxel_size is None:
            log.info("%s: no voxel_size given; isotropic voxels assumed", what)
            voxel_size = (1.0, 1.0, 1.0)
    return source, check_voxel_size(voxel_size)


def materialize(source) -> np.ndarray:
    """The whole array in this process's memory (Zarr and Dask arrays are read)."""
    if isinstance(source, np.ndarray):
        return source
    if hasattr(source, "dask"):
        return np.asarray(compute(source)[0])
    return np.asarray(source[tuple(slice(None) for _ in source.shape)])


# --------------------------------------------------------------------------- where
def free_memory() -> int:
    """Bytes of memory available to this process now."""
    import psutil

    return int(psutil.virtual_memory().available)


def place(need: int, *, what: str = "stage", log: logging.Logger = logger,
          worker_limit: Callable[[], int | None] = worker_memory_limit) -> str | None:
    """"driver", "worker" or None (nothing has room) for a computation needing `need`
    bytes; see the module docstring. `worker_limit` gives the workers' memory limit."""
    client = active_client()
    if client is not None and getattr(client, "cluster", None) is None:
        limit = worker_limit()
        if limit is None or need <= WORKER_FRACTION * limit:
            return "worker"
        log.info("%s: needs ~%s, more than %.0f%% of the workers' %s memory limit; solving in "
                 "this process", what, format_bytes(need), 100 * WORKER_FRACTION, format_bytes(limit))
    return "driver" if need <= free_memory() else None


# --------------------------------------------------------------------------- run
def run_whole(func: Callable, source, options: Sequence[dict], where: str, *,
              threads: int = 1, need: int | None = None) -> list[tuple[Any, list]]:
    """``func(array, **opts)`` for each `opts` in `options`, on the whole `source`
    array, where :func:`place` said; returns ``[(result, warnings)]`` in order, the
    warnings as ``(category, message)`` for the caller to raise again.

    "worker": the data is read (or scattered) on the cluster once and every call is
    one task, reserving `need` bytes of its worker's memory where the workers declare
    it (:func:`~porevox.engine.cluster.reservation`). "driver": the data is read here
    once; with ``threads > 1`` the calls run in that many threads (for GIL-releasing
    kernels) and their warnings are not captured (the warnings machinery is
    process-global): such a `func` reports problems in its result.
    """
    if where == "worker":
        client = active_client()
        if isinstance(source, np.ndarray):
            data = client.scatter(source)
        else:
            data = client.compute(as_dask(source))  # read and assembled on the cluster
        resources = reservation(need) if need else None
        futures = [client.submit(solve_task, func, data, opts, pure=False, resources=resources)
                   for opts in options]
        try:
            return client.gather(futures)
        finally:
            for f in futures:
                f.release()
            data.release()
    arr = materialize(source)
    if threads <= 1 or len(options) <= 1:
        return [solve_task(func, arr, opts) for opts in options]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=int(threads)) as pool:
        return [(r, []) for r in pool.map(lambda opts: func(arr, **opts), options)]


def solve_task(func: Callable, arr, options: dict) -> tuple[Any, list]:
    """``func(arr, **options)`` (as a Dask task, or in this process): its result and
    the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(np.asarray(arr), **options)
    return result, [(w.category, str(w.message)) for w in caught]


__all__ = ["WORKER_FRACTION", "free_memory", "materialize", "place", "resolve_source", "run_whole",
           "solve_task"]
