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

Where it runs (logged; :mod:`porevox.engine.placement`):

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
import warnings

import numpy as np
from dask.utils import format_bytes

from ..engine.cluster import worker_memory_limit
from ..engine.placement import WORKER_FRACTION, free_memory, place, resolve_source, run_whole
from ..errors import InvalidVolumeError, StageError
from ..kernels.conductivity import check_axis, effective_conductivity, memory_estimate

logger = logging.getLogger(__name__)


def conductivity(solid, *, voxel_size=None, axis=1, labels="truth", phase=None, **solver_options) -> dict:
    """Effective conductivity of the solid (or of `phase`) along `axis`, relative to
    the bulk phase; the other voxels do not conduct, nor do the side faces.

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
    phase : int or str, optional
        The conducting phase: a value, values joined by "+", or a phase name of the
        label image (default: nonzero, the solid of a binary segmentation).
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
    source, voxel_size = resolve_source(solid, voxel_size, labels, phase=phase, what="conductivity",
                                        log=logger)
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
    where = place(need, what="conductivity", log=logger, worker_limit=worker_memory_limit)
    if where is None:
        raise StageError(
            f"the conductivity solve needs ~{format_bytes(need)} but only {format_bytes(free_memory())} "
            "is free here; crop the volume (a representative sub-volume) or run on a machine "
            "(or a --scheduler worker) with more memory")
    logger.info("conductivity: per-tomogram solve of %.3gM voxels along %s, ~%s, %s",
                voxels / 1e6, "zyx"[axis], format_bytes(need),
                "as one task on a Dask worker" if where == "worker" else "in this process")
    options = {"voxel_size": voxel_size, "axis": axis, **solver_options}
    [(result, caught)] = run_whole(_solve, source, [options], where, need=need)
    for category, message in caught:  # the solver's warnings, raised at the caller
        warnings.warn(message, category, stacklevel=2)
    result.update(axis="zyx"[axis], voxel_size=[float(v) for v in voxel_size],
                  shape=list(shape), ran_on=where, memory_estimate_bytes=int(need))
    return result


def _solve(arr: np.ndarray, **options) -> dict:
    """The solve on the whole array (in this process or as a Dask task)."""
    return effective_conductivity(arr, **options).to_dict()


__all__ = ["WORKER_FRACTION", "conductivity"]
