"""`pv.conductivity`: effective conductivity of a segmented volume along an axis.

The solve is global (the potential anywhere depends on the whole structure), so it
runs per tomogram, on one machine: the matrix-free multigrid-preconditioned CG of
:mod:`porevox.kernels.conductivity` holds about 36 bytes per voxel (3 float64 arrays
of the grid, the mask, the coarse grids), ~4 GiB for a 538 x 538 x 400 tomogram. A
block decomposition iterated to convergence (Schwarz) would bound memory per task,
but it needs many global iterations with halo exchange — tens of minutes where the
per-tomogram solve takes one or two — and the per-tomogram footprint fits any
worker that can hold a few copies of the volume. Where it does not fit, the stage
says so and names the fix rather than thrash.

Where it runs (logged):

* no distributed client, or a LocalCluster started in this process: in this process,
  with all of numba's threads (the workers of a local cluster share this machine's
  memory, and each is limited to its own few threads);
* a client attached to an external scheduler (``--scheduler``): as one task on a
  worker whose memory limit leaves room for it (the data is read there, never
  passing through the driver, which may be a small login node); in this process
  if no worker has the room.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
from dask.utils import format_bytes

from ..engine import as_dask, open_volume
from ..engine.cluster import active_client, compute, worker_memory_limit
from ..engine.storage import LABELS, Volume, check_voxel_size
from ..errors import InvalidVolumeError, StageError
from ..kernels.conductivity import check_axis, effective_conductivity, memory_estimate

logger = logging.getLogger(__name__)

#: A solve goes to a worker only if it needs at most this fraction of the worker's
#: memory limit (Dask pauses a worker at 80 % and restarts it at 95 %).
WORKER_FRACTION = 0.6


def conductivity(solid, *, voxel_size=None, axis=1, labels="truth", **solver_options) -> dict:
    """Effective conductivity of the solid along `axis`, relative to the bulk solid.

    Parameters
    ----------
    solid : array or volume path
        A NumPy, Dask or Zarr array (nonzero = solid), or a porevox volume (a path or
        an opened :class:`~porevox.engine.Volume`), whose ``labels/<labels>`` is read.
    voxel_size : 3 floats, optional
        Size along (z, y, x). Default: the volume's own, or isotropic for arrays.
    axis : int or {"z", "y", "x"}
        Direction of the applied potential difference (default y, as in the paper).
    labels : str
        The label image of a volume to use (ignored for arrays).
    **solver_options
        Passed to :func:`porevox.kernels.conductivity.effective_conductivity`:
        ``method`` ("mg", "jacobi", "amg"), ``rtol``, ``maxiter``.

    Returns
    -------
    dict
        ``relative_conductivity`` (σ_eff/σ_bulk), ``tortuosity_factor`` (D·σ_bulk/σ_eff,
        ``inf`` without a conducting path, with a warning), ``relative_density``,
        ``percolating_fraction``, ``iterations``, ``residual``, ``flux_imbalance``,
        ``method``, ``seconds``, and ``axis`` (its name), ``voxel_size``, ``shape``,
        ``ran_on`` ("driver" or "worker"), ``memory_estimate_bytes``.
    """
    axis = check_axis(axis)
    source, voxel_size = _source(solid, voxel_size, labels)
    if source.ndim != 3:
        raise InvalidVolumeError(
            f"solid must be 3-D (z, y, x); got {source.ndim}-D of shape {source.shape}")
    shape = tuple(int(s) for s in source.shape)
    voxels = int(np.prod(shape))
    method = solver_options.get("method", "mg")
    try:
        need = memory_estimate(shape, method) + voxels  # + the uint8 input itself
    except KeyError:
        need = memory_estimate(shape) + voxels  # the kernel rejects the method with a fix
    where = _where(need)
    logger.info("conductivity: per-tomogram solve of %.3gM voxels along %s, ~%s, %s",
                voxels / 1e6, "zyx"[axis], format_bytes(need),
                "as one task on a Dask worker" if where == "worker" else "in this process")
    options = {"voxel_size": voxel_size, "axis": axis, **solver_options}
    if where == "worker":
        result, caught = _on_worker(source, options)
    else:
        result, caught = _solve_task(_materialize(source), options)
    for category, message in caught:  # the solver's warnings, raised at the caller
        warnings.warn(message, category, stacklevel=2)
    result.update(axis="zyx"[axis], voxel_size=[float(v) for v in voxel_size],
                  shape=list(shape), ran_on=where, memory_estimate_bytes=int(need))
    return result


# --------------------------------------------------------------------------- inputs
def _source(solid, voxel_size, labels) -> tuple[Any, tuple[float, float, float]]:
    """The array to solve on (not yet read) and the voxel size to use."""
    if isinstance(solid, (str, os.PathLike, Volume)):
        volume = open_volume(solid, mode="r")
        if labels not in volume.labels:
            raise InvalidVolumeError(
                f"{volume.path} has no label image {labels!r}; it has {volume.labels or 'none'}: "
                "pass labels=<one of them> or segment the volume first")
        source = volume.array(f"{LABELS}/{labels}")
        if voxel_size is None:
            voxel_size = volume.voxel_size
    else:
        if not hasattr(solid, "shape") or not hasattr(solid, "dtype"):
            raise TypeError(f"solid must be an array or a volume path; got {type(solid).__name__}")
        source = solid
        if voxel_size is None:
            logger.info("conductivity: no voxel_size given; isotropic voxels assumed")
            voxel_size = (1.0, 1.0, 1.0)
    return source, check_voxel_size(voxel_size)


def _materialize(source) -> np.ndarray:
    """The whole array in this process's memory (Zarr and Dask arrays are read)."""
    if isinstance(source, np.ndarray):
        return source
    if hasattr(source, "dask"):
        return np.asarray(compute(source)[0])
    return np.asarray(source[...])


# --------------------------------------------------------------------------- where
def _where(need: int) -> str:
    """"driver" or "worker" (see the module docstring); raise if neither has room."""
    import psutil

    client = active_client()
    if client is not None and getattr(client, "cluster", None) is None:
        limit = worker_memory_limit()
        if limit is None or need <= WORKER_FRACTION * limit:
            return "worker"
        logger.info("conductivity: needs ~%s, more than %.0f%% of the workers' %s memory "
                    "limit; solving in this process", format_bytes(need), 100 * WORKER_FRACTION,
                    format_bytes(limit))
    free = psutil.virtual_memory().available
    if need > free:
        raise StageError(
            f"the conductivity solve needs ~{format_bytes(need)} but only {format_bytes(free)} is "
            "free here; crop the volume (a representative sub-volume) or run on a machine "
            "(or a --scheduler worker) with more memory")
    return "driver"


def _on_worker(source, options: dict) -> tuple[dict, list]:
    client = active_client()
    if isinstance(source, np.ndarray):
        data = client.scatter(source)
    else:
        data = client.compute(as_dask(source))  # read and assembled on the cluster
    future = client.submit(_solve_task, data, options, pure=False)
    try:
        return future.result()
    finally:
        future.release()
        data.release()


def _solve_task(arr, options: dict) -> tuple[dict, list]:
    """The solve as a Dask task: its result, and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = effective_conductivity(np.asarray(arr), **options).to_dict()
    return result, [(w.category, str(w.message)) for w in caught]


__all__ = ["conductivity"]
