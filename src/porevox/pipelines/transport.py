"""`pv.conductivity`: effective conductivity of a segmented volume along an axis.

The solve is global (the potential anywhere depends on the whole structure). Two
solvers give the same answer (to the solver's tolerance):

* whole: the matrix-free multigrid-preconditioned CG of
  :mod:`porevox.kernels.conductivity` on the whole tomogram in one process, about 36
  bytes per voxel (~4 GiB for 538 x 538 x 400). Where it runs is chosen by memory
  (:mod:`porevox.engine.placement`): in this process (no client, or a LocalCluster of
  this machine), or as one task on a worker of an external scheduler with the room.
* distributed: the same CG with multigrid across blocks on the Dask cluster
  (:mod:`porevox.pipelines.transport_blocks`), each worker holding its blocks, for
  tomograms no single process has the memory for.

``method=None`` (the default) solves whole where it fits and in blocks otherwise,
logging why; ``method="distributed"`` forces the blocks, ``"mg"``, ``"jacobi"`` or
``"amg"`` the whole solve with that preconditioner.
"""

from __future__ import annotations

import logging
import math
import warnings

import dask
import numpy as np
from dask.utils import format_bytes

from ..engine.cluster import (
    WORKER_BASELINE,
    active_client,
    cluster_workers,
    thread_memory_share,
    total_threads,
    worker_memory_limit,
)
from ..engine.placement import WORKER_FRACTION, free_memory, place, resolve_source, run_whole
from ..errors import InvalidVolumeError, StageError
from ..kernels.conductivity import METHODS, check_axis, memory_estimate
from .transport_blocks import (
    HELD_BYTES_PER_VOXEL,
    STEP_BYTES_PER_VOXEL,
    block_edges,
    conductivity_blocks,
    solve_whole,
    step_budget,
)

logger = logging.getLogger(__name__)


def conductivity(solid, *, voxel_size=None, axis=1, labels="truth", phase=None, method=None,
                 block_shape=None, **solver_options) -> dict:
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
    method : {None, "distributed", "mg", "jacobi", "amg"}
        None: whole where the memory allows, else in blocks on the cluster (logged).
        "distributed": in blocks on the active Dask client's workers (in this
        process without one). The others: the whole solve with that preconditioner.
    block_shape : 3 ints, optional
        Blocks of the distributed solve, in (z, y, x) voxels (rounded up to the
        multigrid's aggregation); default: as large as the workers' memory allows,
        at least one per worker thread.
    **solver_options
        ``rtol``, ``maxiter`` (see
        :func:`porevox.kernels.conductivity.effective_conductivity`).

    Returns
    -------
    dict
        ``relative_conductivity`` (σ_eff/σ_bulk), ``tortuosity_factor`` (D·σ_bulk/σ_eff,
        ``inf`` without a conducting path, with a warning), ``relative_density``,
        ``percolating_fraction``, ``iterations``, ``residual``, ``flux_imbalance``,
        ``method``, ``seconds``, and ``axis`` (its name), ``voxel_size``, ``shape``,
        ``ran_on`` ("driver", "worker", or "cluster": in blocks on the workers),
        ``memory_estimate_bytes`` (of the whole solve), ``blocks`` (1 for a whole solve).
    """
    axis = check_axis(axis)
    if method is not None and method not in ("distributed", *METHODS):
        raise InvalidVolumeError(f"method must be None, 'distributed' or one of {METHODS}; got {method!r}")
    source, voxel_size = resolve_source(solid, voxel_size, labels, phase=phase, what="conductivity",
                                        log=logger)
    if source.ndim != 3:
        raise InvalidVolumeError(
            f"solid must be 3-D (z, y, x); got {source.ndim}-D of shape {source.shape}")
    shape = tuple(int(s) for s in source.shape)
    voxels = int(np.prod(shape))
    need = memory_estimate(shape, method if method in METHODS else "mg") + voxels  # + the uint8 input
    where = "cluster" if method == "distributed" else place(need, what="conductivity", log=logger,
                                                             worker_limit=worker_memory_limit)
    if where is None and method is None and active_client() is not None:
        where = "cluster"
        logger.info("conductivity: the whole solve needs ~%s, more than this process (%s free)%s has; "
                    "solving in blocks on the cluster", format_bytes(need), format_bytes(free_memory()),
                    " or a worker" if getattr(active_client(), "cluster", None) is None else "")
    if where is None:
        raise StageError(
            f"the conductivity solve needs ~{format_bytes(need)} but only {format_bytes(free_memory())} "
            "is free here; run it on a Dask cluster (porevox.cluster(), or --scheduler) to solve it in "
            "blocks across the workers, or crop the volume (a representative sub-volume)")
    if where == "cluster":
        result, caught = _in_blocks(source, voxel_size, axis, block_shape, solver_options)
        where = "cluster" if active_client() is not None else "driver"
    else:
        logger.info("conductivity: per-tomogram solve of %.3gM voxels along %s, ~%s, %s",
                    voxels / 1e6, "zyx"[axis], format_bytes(need),
                    "as one task on a Dask worker" if where == "worker" else "in this process")
        options = {"voxel_size": voxel_size, "axis": axis, "method": method or "mg", **solver_options}
        [(result, caught)] = run_whole(solve_whole, source, [options], where, need=need)
        result["blocks"] = 1
    for category, message in caught:  # the solver's warnings, raised at the caller
        warnings.warn(message, category, stacklevel=2)
    result.update(axis="zyx"[axis], voxel_size=[float(v) for v in voxel_size],
                  shape=list(shape), ran_on=where, memory_estimate_bytes=int(need))
    return result


def _in_blocks(source, voxel_size, axis: int, block_shape, options: dict):
    """The distributed solve on the active client's workers (in this process without
    a client), in blocks of `block_shape` or as large as the workers' memory allows."""
    client = active_client()
    shape = tuple(int(s) for s in source.shape)
    if block_shape is not None:
        edges = tuple(int(v) for v in block_shape)
        if len(edges) != 3 or min(edges) < 1:
            raise InvalidVolumeError(f"block_shape must be 3 positive ints (z, y, x); got {block_shape!r}")
    else:
        workers = cluster_workers()
        threads = max((w.get("nthreads", 1) for w in workers.values()), default=1)
        budget = step_budget(worker_memory_limit(workers), thread_memory_share(workers), threads)
        if budget is None:
            budget = int(free_memory() / 4 / STEP_BYTES_PER_VOXEL)
        if budget < 32**3:
            raise StageError(
                f"the workers' memory ({format_bytes(worker_memory_limit() or 0)} each) leaves no room for "
                f"a block of the conductivity solve; give the workers more memory (at least "
                f"{format_bytes(2 * WORKER_BASELINE)}) or fewer threads each")
        edges = block_edges(shape, budget, at_least=total_threads() if client is not None else 1)
    held = HELD_BYTES_PER_VOXEL * math.prod(shape)
    if client is None:
        if held > free_memory():
            raise StageError(
                f"the conductivity solve in blocks needs ~{format_bytes(held)} and there is no Dask "
                "cluster to spread it over; run it on one (porevox.cluster(), or --scheduler)")
    else:
        total = sum(w.get("memory_limit") or 0 for w in cluster_workers().values())
        if total and held > 0.6 * total:
            logger.info("conductivity: the blocks hold ~%s, more than the workers' memory (%s in all): "
                        "Dask spills them to the workers' disks", format_bytes(held), format_bytes(total))
    moved = (edges[axis], *(e for i, e in enumerate(edges) if i != axis))
    return conductivity_blocks(source, voxel_size, axis, edges=moved, client=client,
                               progress=bool(dask.config.get("porevox.progress", False)), **options)




__all__ = ["WORKER_FRACTION", "conductivity"]
