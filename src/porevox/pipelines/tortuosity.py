"""`pv.tortuosity`: the paper's geodesic tortuosity of a segmented volume along signed
axis directions, by fast marching through the solid.

τ along a direction is the geodesic distance through the solid from the inlet face
divided by the straight distance, averaged over the reachable solid of the last 25 %
of the length (:mod:`porevox.kernels.fmm` has the precise definition). The paper
(Wijaya et al. 2024) averages "five directions" without naming them in its
supplement; ``directions="paper"`` is our choice of five, :data:`PAPER_DIRECTIONS`
= ``("+y", "-y", "+x", "-x", "+z")``: both senses along the in-plane axes and the
milling direction once.

How (``method``, the choice logged with its reason):

``"whole"``
    one fast-marching solve per direction on the whole volume (about
    :data:`~porevox.kernels.fmm.BYTES_PER_VOXEL` = 15 bytes per voxel, measured, plus
    the input), placed by :mod:`porevox.engine.placement`: in this process with no
    distributed client or a local cluster (directions in parallel threads — the
    kernel releases the GIL — as many as memory and cores allow), or one task per
    direction on the workers of an external scheduler.
``"blocks"``
    for volumes that fit no single process: the block-decomposed solver below, its
    tasks on the active Dask scheduler.
``"auto"`` (default)
    ``"whole"`` wherever :func:`~porevox.engine.placement.place` finds room for one
    direction's solve, else ``"blocks"``.

The block solver. The distance field of each direction lives in a temporary Zarr
group on disk (`scratch`, default beside the volume for a volume input, else a
temporary folder; removed afterwards), in chunks equal to the blocks. Each iteration
runs, as one Dask task per *active* block, :func:`~porevox.kernels.fmm.fast_marching`
on the block with a halo of `order` voxels (the upwind stencil's reach): the halo's
current values (its neighbours' cores) imposed (``fixed``), the inlet's solid at 0,
the core's current values as upper bounds; the task writes the core where a value
dropped by more than a relative 1e-6. The next iteration's active blocks are those
that changed and their 26 neighbours; the solve stops when nothing changes. Values
only decrease, so it terminates; at the end every block is a fast-marching solve
from its neighbours' values.

With ``order=1`` (a monotone scheme) that is the whole-volume answer, to the
tolerance. The second-order scheme (scikit-fmm's) is not continuous in its data: it
switches between the one-sided second- and first-order differences where two
neighbours' values tie (``v2 <= v1``), so a 1e-9 perturbation of the inlet values
moves some whole-volume distances by up to 0.7 voxel (median 0.02; measured on a
40 x 50 x 60 random structure). The block iteration, reaching the same values by
another route, lands within that spread: distances within a few tenths of a voxel
at worst (median ~5e-4 voxel), τ within 1e-3 (tested). The scratch arrays are
float64 for that reason: float32 halos alone moved distances by half a voxel.

No two tasks write one Zarr chunk, and no task reads a chunk another task of the same
iteration writes: every direction has two arrays in ping-pong, and a per-block
record (kept by the driver) of which holds the block's latest version. A task reads
each chunk under its block and halo from the array holding that chunk's latest
version, and writes its new core to the *other* array of its own block, which no
task of the iteration reads; the record flips for the blocks that wrote. (An
8-colour schedule would need no second array but up to eight times the
iterations.) The arrays are uncompressed: a task reads whole neighbour chunks for
its halo.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import dask
import numpy as np
import zarr
from dask.utils import format_bytes

from ..engine.cluster import active_client, chunk_bytes_budget, compute, worker_memory_limit
from ..engine.placement import free_memory, place, resolve_source, run_whole
from ..engine.storage import Volume, check_chunks, choose_chunks, discard, open_volume
from ..errors import InvalidVolumeError, StageError
from ..kernels.conductivity import NoPathWarning, NotConvergedWarning, check_axis
from ..kernels.fmm import (
    check_order,
    fast_marching,
    fast_marching_depth,
    inlet_distance,
    memory_estimate,
    tortuosity_from_sums,
    tortuosity_sums,
)

logger = logging.getLogger(__name__)

#: The paper's five directions, our choice (its supplement does not name them).
PAPER_DIRECTIONS = ("+y", "-y", "+x", "-x", "+z")
SIGNED = ("+z", "-z", "+y", "-y", "+x", "-x")
METHODS = ("auto", "whole", "blocks")

#: Bytes per voxel (core + halo) a block task holds, counted (not measured): the
#: stored values as read from both arrays and the initial ones (3 x float64), the
#: solid and fixed masks, the kernel's framed state, distances, bounds and heap
#: positions (21), comparison temporaries.
BLOCK_BYTES_PER_VOXEL = 72
_RTOL = 1e-6  # a block changed if a value dropped by more than this (relative)


def tortuosity(solid, *, voxel_size=None, axis=1, directions=None, order=2, method="auto",
               last_fraction=0.25, chunks=None, labels="truth", scratch=None) -> dict:
    """Geodesic tortuosity of the solid along `axis` and other signed directions.

    Parameters
    ----------
    solid : array or volume path
        A NumPy, Dask or Zarr array (nonzero = solid), or a porevox volume (a path or
        an opened :class:`~porevox.engine.Volume`), whose ``labels/<labels>`` is read.
    voxel_size : 3 floats, optional
        Size along (z, y, x). Default: the volume's own, or isotropic for arrays.
    axis : int or {"z", "y", "x"}
        The main direction, ``+axis`` (default y, as in the paper).
    directions : None, "paper" or sequence of str
        Further directions: signed axis names from ``+z -z +y -y +x -x`` (plain
        ``"y"`` means ``"+y"``), or ``"paper"`` for :data:`PAPER_DIRECTIONS`. The
        main direction is always computed.
    order : {1, 2}
        Order of the fast-marching upwind scheme.
    method : {"auto", "whole", "blocks"}
        See the module docstring.
    last_fraction : float in (0, 1]
        Fraction of the length, at the outlet end, over which τ is averaged.
    chunks : 3 ints, optional
        Blocks of the block solver (default: sized from the workers' memory).
    labels : str
        The label image of a volume to use (ignored for arrays).
    scratch : path, optional
        Folder for the block solver's temporary arrays; it must be reachable by the
        workers (default: beside the volume, or a temporary folder for arrays).

    Returns
    -------
    dict
        ``tortuosity`` (τ along +axis; NaN with a
        :class:`~porevox.kernels.conductivity.NoPathWarning` without a percolating
        path), ``tortuosity_by_axis`` ({direction: τ}, the main one included),
        ``tortuosity_profile`` (per slice along +axis, mean geodesic/straight ratio,
        NaN at the inlet slice and where no solid is reached), ``reachable_fraction``
        (solid reached from the inlet / solid, along +axis) and
        ``reachable_fraction_by_axis``, ``n_averaged`` (voxels averaged along +axis),
        ``method`` ("whole" or "blocks"), ``order``, ``iterations`` (block-solver
        iterations along +axis; 0 for "whole") and ``iterations_by_axis``,
        ``seconds``, ``ran_on`` ("driver", "worker" or "cluster"), ``axis`` (its
        name), ``directions``, ``voxel_size``, ``shape``, ``last_fraction``,
        ``chunks`` (blocks; None for "whole"), ``memory_estimate_bytes`` (one
        direction's whole-volume solve).
    """
    t0 = time.perf_counter()
    axis = check_axis(axis)
    names = parse_directions(directions, axis)
    order = check_order(order)
    if not (isinstance(last_fraction, (int, float)) and 0 < last_fraction <= 1):
        raise InvalidVolumeError(f"last_fraction must be a number in (0, 1]; got {last_fraction!r}")
    if method not in METHODS:
        raise InvalidVolumeError(f"method must be one of {METHODS}; got {method!r}")
    source, voxel_size = resolve_source(solid, voxel_size, labels, what="tortuosity", log=logger)
    if source.ndim != 3:
        raise InvalidVolumeError(
            f"solid must be 3-D (z, y, x); got {source.ndim}-D of shape {source.shape}; "
            "pass a (z, y, x) volume")
    shape = tuple(int(s) for s in source.shape)
    voxels = math.prod(shape)
    need = memory_estimate(shape) + 2 * voxels  # + the input and its solid mask
    where = None
    if voxels == 0:
        method = "whole"  # nothing to decompose
    if method != "blocks":
        where = place(need, what="tortuosity", log=logger, worker_limit=worker_memory_limit)
        if method == "auto":
            method = "whole" if where is not None else "blocks"
            if method == "blocks":
                logger.info("tortuosity: a whole-volume solve needs ~%s per direction, more than "
                            "this process or a worker has free; block-decomposed fast marching",
                            format_bytes(need))
        elif where is None:
            raise StageError(
                f"a whole-volume tortuosity solve needs ~{format_bytes(need)} but only "
                f"{format_bytes(free_memory())} is free here and no worker has the room; use "
                "method='blocks' (or 'auto')")
    options = {"voxel_size": voxel_size, "order": order, "last_fraction": last_fraction}
    if method == "whole":
        results = _whole(source, names, where, need, voxels, options)
        iterations = dict.fromkeys(names, 0)
        ran_on, used_chunks = where, None
    else:
        solver = BlockSolver(source, voxel_size=voxel_size, order=order, chunks=chunks,
                             scratch=_scratch_home(solid, scratch))
        try:
            iterations = solver.run(names)
            results = {n: solver.tortuosity(n, last_fraction).to_dict() for n in names}
        finally:
            solver.close()
        ran_on = "cluster" if active_client() is not None else "driver"
        used_chunks = list(solver.chunks)
    for name in names:
        if results[name]["note"]:
            warnings.warn(f"tortuosity along {name}: {results[name]['note']}", NoPathWarning,
                          stacklevel=2)
    main = names[0]
    return {
        "tortuosity": results[main]["tau"],
        "tortuosity_by_axis": {n: results[n]["tau"] for n in names},
        "tortuosity_profile": list(results[main]["profile"]),
        "reachable_fraction": results[main]["reachable_fraction"],
        "reachable_fraction_by_axis": {n: results[n]["reachable_fraction"] for n in names},
        "n_averaged": results[main]["n_averaged"],
        "method": method,
        "order": order,
        "iterations": iterations[main],
        "iterations_by_axis": iterations,
        "seconds": time.perf_counter() - t0,
        "ran_on": ran_on,
        "axis": "zyx"[axis],
        "directions": list(names),
        "voxel_size": [float(v) for v in voxel_size],
        "shape": list(shape),
        "last_fraction": float(last_fraction),
        "chunks": used_chunks,
        "memory_estimate_bytes": int(need),
    }


# --------------------------------------------------------------------------- directions
def parse_directions(directions, axis: int) -> tuple[str, ...]:
    """The signed directions to compute, the main one (``+axis``) first."""
    if directions is None:
        items = []
    elif isinstance(directions, str):
        items = list(PAPER_DIRECTIONS) if directions.strip().lower() == "paper" else [directions]
    else:
        try:
            items = list(directions)
        except TypeError:
            items = [directions]
    names = ["+" + "zyx"[axis]]
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if isinstance(name, str) and name in ("z", "y", "x"):
            name = "+" + name
        if name not in SIGNED:
            raise InvalidVolumeError(
                f"directions must be signed axis names from {SIGNED} (plain 'y' means '+y') or "
                f"'paper'; got {item!r}; pass e.g. directions=('+y', '-y')")
        if name not in names:
            names.append(name)
    return tuple(names)


def _axis_sign(name: str) -> tuple[int, int]:
    return "zyx".index(name[1]), (1 if name[0] == "+" else -1)


# --------------------------------------------------------------------------- whole
def _whole(source, names, where, need, voxels, options) -> dict:
    threads = 1
    if where == "driver":
        room = (free_memory() - 2 * voxels) // max(need - 2 * voxels, 1)
        threads = int(max(1, min(len(names), os.cpu_count() or 1, room)))
    logger.info("tortuosity: whole-volume fast marching of %.3gM voxels along %s, ~%s per "
                "direction, %s", voxels / 1e6, ", ".join(names), format_bytes(need),
                "one task per direction on the Dask workers" if where == "worker"
                else f"in this process ({threads} thread{'s' * (threads > 1)})")
    runs = run_whole(direction_tortuosity, source, [{"direction": n, **options} for n in names], where,
                     threads=threads)
    return {n: result for n, (result, _) in zip(names, runs)}


def direction_tortuosity(arr: np.ndarray, *, direction: str, voxel_size, order: int,
                         last_fraction: float) -> dict:
    """τ along one signed direction on the whole array (a thread or a Dask task);
    a NaN τ is explained in ``note``, not warned (the caller warns)."""
    axis, sign = _axis_sign(direction)
    dist = inlet_distance(arr, axis=axis, direction=sign, voxel_size=voxel_size, order=order)
    sums = tortuosity_sums(dist, arr, axis=axis, direction=sign, voxel_size=voxel_size)
    del dist
    return tortuosity_from_sums(sums, axis=axis, direction=sign, last_fraction=last_fraction).to_dict()


# --------------------------------------------------------------------------- blocks
def _scratch_home(solid, scratch) -> Path | None:
    if scratch is not None:
        return Path(scratch)
    if isinstance(solid, (str, os.PathLike, Volume)):
        return open_volume(solid, mode="r").path.parent
    return None


def block_chunks(shape, chunks, depth: int) -> tuple[int, int, int]:
    """Blocks for the block solver: `chunks` checked, or sized from the workers' memory."""
    if chunks is None:
        voxels = max(48**3, int(chunk_bytes_budget() * 4.5 / BLOCK_BYTES_PER_VOXEL))
        chunks = choose_chunks(shape, "uint8", target_bytes=voxels)
    chunks = check_chunks(chunks, shape)
    if any(c < depth and c < n for c, n in zip(chunks, shape)):
        raise InvalidVolumeError(
            f"chunks must be at least the halo ({depth} voxels for this order) along every axis; "
            f"got {chunks}; pass larger chunks")
    return chunks


class BlockSolver:
    """The block-decomposed fast marching of the module docstring, for one volume and
    any number of directions.

    ``run(names)`` iterates to convergence and returns the iterations per direction;
    ``tortuosity(name, last_fraction)`` reduces the converged field by blocks;
    ``read(name)`` assembles the whole field (for tests and small volumes);
    ``close()`` removes the scratch folder.
    """

    def __init__(self, source, *, voxel_size, order=2, chunks=None, scratch=None, max_iterations=None):
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.order = int(order)
        self.depth = fast_marching_depth(self.order)
        self.shape = tuple(int(s) for s in source.shape)
        self.chunks = block_chunks(self.shape, chunks, self.depth)
        self.grid = tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))
        self.max_iterations = max_iterations or 4 * sum(self.grid) * max(self.grid) + 20
        home = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / f".porevox-tortuosity-{uuid.uuid4().hex[:12]}"
        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        logger.info("tortuosity: block solver in %s blocks of %s (halo %d), scratch %s",
                    "x".join(map(str, self.grid)), self.chunks, self.depth, self.path)
        try:
            self.solid = self._solid(source)
        except BaseException:
            self.close()
            raise
        self.arrays: dict[str, tuple[zarr.Array, zarr.Array]] = {}
        self.latest: dict[str, np.ndarray] = {}

    def _solid(self, source) -> zarr.Array:
        """`source` as a Zarr array the workers can read: itself where it is on disk."""
        if isinstance(source, zarr.Array) and isinstance(source.store, zarr.storage.LocalStore):
            return source
        out = self.group.create_array("solid", shape=self.shape, dtype="uint8", chunks=self.chunks,
                                      fill_value=0)
        if hasattr(source, "dask"):
            import dask.array as da

            data = (source.rechunk(self.chunks) != 0).astype(np.uint8)
            compute(da.store(data, out, lock=False, compute=False))
        else:
            out[...] = np.asarray(source[...]) != 0
        return out

    def close(self) -> None:
        discard(self.path)

    # -- iterations ----------------------------------------------------------------
    def run(self, names) -> dict[str, int]:
        active: dict[str, set] = {}
        for name in names:
            self.arrays[name] = tuple(
                self.group.create_array(f"{name[0].replace('+', 'p').replace('-', 'm')}{name[1]}-{v}",
                                        shape=self.shape, dtype="float64", chunks=self.chunks,
                                        fill_value=np.inf, compressors=None)
                for v in (0, 1))
            self.latest[name] = np.zeros(self.grid, np.int8)
            axis, sign = _axis_sign(name)
            first = 0 if sign > 0 else self.grid[axis] - 1
            active[name] = {b for b in np.ndindex(self.grid) if b[axis] == first}
        iterations = dict.fromkeys(names, 0)
        step = dask.delayed(_block_step, pure=False)
        solid = dask.delayed(self.solid, name=f"solid-{self.path.name}")
        arrays = {n: dask.delayed(self.arrays[n], name=f"distance-{n}-{self.path.name}") for n in names}
        for it in range(self.max_iterations):
            work = [(name, b) for name in names for b in sorted(active[name])]
            if not work:
                break
            tasks = [step(arrays[name], self._versions(name, b), solid, self._core(b),
                          self._outer(b), self.chunks, self._inlet(name), self.voxel_size, self.order)
                     for name, b in work]
            changed = compute(*tasks)
            for name in names:
                if active[name]:
                    iterations[name] += 1
            nxt = {name: set() for name in names}
            for (name, b), ch in zip(work, changed):
                if ch:
                    self.latest[name][b] ^= 1
                    nxt[name].update(self._neighbours(b))
            logger.debug("tortuosity: iteration %d: %d blocks, %d changed", it + 1, len(work),
                         sum(changed))
            active = nxt
        else:
            warnings.warn(f"the block solver stopped after {self.max_iterations} iterations with blocks "
                          "still changing; its τ may be too large: use larger chunks",
                          NotConvergedWarning, stacklevel=3)
        logger.info("tortuosity: block solver converged in %s iterations",
                    ", ".join(f"{n} {i}" for n, i in iterations.items()))
        return iterations

    def _core(self, b) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(b, self.chunks, self.shape))

    def _outer(self, b) -> tuple[slice, ...]:
        return tuple(slice(max(s.start - self.depth, 0), min(s.stop + self.depth, n))
                     for s, n in zip(self._core(b), self.shape))

    def _neighbours(self, b):
        ranges = [range(max(i - 1, 0), min(i + 2, g)) for i, g in zip(b, self.grid)]
        return itertools.product(*ranges)

    def _versions(self, name, b) -> dict:
        """Which array holds the latest version of each chunk under block `b` and its
        halo."""
        latest = self.latest[name]
        return {c: int(latest[c]) for c in _chunks_under(self._outer(b), self.chunks)}

    def _inlet(self, name) -> tuple[int, int]:
        axis, sign = _axis_sign(name)
        return axis, (0 if sign > 0 else self.shape[axis] - 1)

    # -- results -------------------------------------------------------------------
    def tortuosity(self, name, last_fraction=0.25):
        """:class:`~porevox.kernels.fmm.TortuosityResult` of the converged field, reduced
        by blocks (a NaN τ is explained in ``note``, not warned)."""
        axis, sign = _axis_sign(name)
        run = dask.delayed(_block_sums, pure=False)
        tasks = [run(self.arrays[name][int(self.latest[name][b])], self.solid, self._core(b), axis, sign,
                     self.voxel_size, self.shape) for b in np.ndindex(self.grid)]
        parts = compute(*tasks)
        merged = {k: sum(p[k] for p in parts) for k in ("sums", "counts", "solid", "reached")}
        return tortuosity_from_sums(merged, axis=axis, direction=sign, last_fraction=last_fraction)

    def read(self, name) -> np.ndarray:
        """The converged distance field of direction `name` (float64, inf where
        unreached)."""
        box = tuple(slice(0, n) for n in self.shape)
        return _read_box(self.arrays[name], self._versions_all(name), box, self.chunks)

    def _versions_all(self, name) -> dict:
        return {b: int(self.latest[name][b]) for b in np.ndindex(self.grid)}


# --------------------------------------------------------------------------- block tasks
def _chunks_under(box, chunks):
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, chunks)]
    return itertools.product(*ranges)


def _read_box(arrays, versions: dict, box, chunks) -> np.ndarray:
    """Values of `box`, each chunk's part from the array holding its latest version
    (one read per array: Zarr's per-call overhead dominates small halo pieces)."""
    used = sorted(set(versions.values()))
    parts = {v: np.asarray(arrays[v][box], dtype=np.float64) for v in used}
    out = parts[used[0]]
    if len(used) > 1:
        for c, v in versions.items():
            if v != used[0]:
                local = tuple(slice(max(s.start, i * k) - s.start, min(s.stop, (i + 1) * k) - s.start)
                              for s, i, k in zip(box, c, chunks))
                out[local] = parts[v][local]
    return out


def _block_step(arrays, versions, solid_arr, core, outer, chunks, inlet, voxel_size, order) -> bool:
    """One block of one iteration: fast marching on core + halo, the halo's current
    values imposed and the inlet's solid at 0; writes the core to the array not
    holding its latest version if a value changed. Returns whether it did."""
    solid = np.asarray(solid_arr[outer]) != 0
    stored = _read_box(arrays, versions, outer, chunks)
    inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
    fixed = np.ones(stored.shape, bool)
    fixed[inner] = False
    initial = stored.copy()
    axis, k = inlet
    if outer[axis].start <= k < outer[axis].stop:
        plane = tuple(k - outer[axis].start if a == axis else slice(None) for a in range(3))
        initial[plane] = np.where(solid[plane], 0.0, np.inf)
        fixed[plane] = True
    if not np.isfinite(initial[solid]).any():
        return False  # nothing reached this block or its halo yet
    new = fast_marching(solid, initial, voxel_size=voxel_size, order=order, fixed=fixed)[inner]
    old = stored[inner]
    with np.errstate(invalid="ignore"):  # inf - inf where neither is reached
        same = (np.abs(new - old) <= _RTOL * (np.minimum(new, old) + min(voxel_size))) | (new == old)
    if same.all():
        return False
    b = tuple(s.start // c for s, c in zip(core, chunks))
    arrays[1 - versions[b]][core] = new
    return True


def _block_sums(arr, solid_arr, core, axis, sign, voxel_size, shape) -> dict:
    return tortuosity_sums(np.asarray(arr[core], dtype=np.float64), np.asarray(solid_arr[core]), axis=axis,
                           direction=sign, voxel_size=voxel_size, offset=tuple(s.start for s in core),
                           volume_shape=shape)


__all__ = ["PAPER_DIRECTIONS", "BlockSolver", "direction_tortuosity", "parse_directions", "tortuosity"]
