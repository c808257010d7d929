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

The block solver. The volume is cut into blocks (`chunks`, default sized from the
workers' memory at :data:`BLOCK_BYTES_PER_VOXEL`; a last block thinner than the halo
joins the one before). A block is kept as its *box*: its core and, on each side with
a neighbour, a halo of `order` voxels (the upwind stencil's reach; the 6-neighbour
stencil never reads edges or corners, so a halo is the neighbour's face and nothing
more). A *visit* of a block is one task: the neighbours' faces that dropped since the
block's last visit are imposed in its halo, and
:func:`~porevox.kernels.fmm.fast_marching_update` lowers the core from the halo
values that dropped (the inlet's solid at 0 on the first visit) — its work is that of
the voxels whose values drop, not the block's. The block's faces that dropped by
more than a relative 1e-12 go to its neighbours, which are then due a visit. Values
only decrease, so it terminates; at the end every block is a fast-marching solve from
its neighbours' values. A task reads its box, at most six faces (`order` layers
each) and its box of the solid (from the scratch folder after the first visit).

The schedule, chosen by measurement (the history is in
``benchmarks/outofcore_suite.py``): one queue, for all directions, of the blocks due a
visit, keyed by the lowest value that dropped for them; the lowest is started first
(a Dijkstra over blocks) as soon as a worker thread is free (two tasks per thread in
flight; no rounds, no barrier), never two neighbouring blocks at once (each would
visit the other again). A block is visited 6-8 times — first from the side the front
reaches first, then corrections from its other sides — where a queue in front order
took 9-14, columns swept along the axis between lateral exchanges 8-11 rounds for up
to 3.6 times the work, and marching in distance bands 13 for 15 % less work.
Measured on 2 workers x 1 thread, the twin at 512³ in blocks of 4 M voxels (five
directions): the voxels accepted come to 1.07 times the whole solve's and the tasks'
time per voxel to 2.4 times the whole solve's in one process — the rest is each
visit's pass over its box (reading, framing and writing it) — against 28-42 times for
the former schedule (rounds of full re-solves, each reading 27 neighbour chunks).
Parallelism: the blocks the front has reached that do not touch, every direction
and, in :func:`~porevox.pipelines.quantify.quantify` on a cluster, every tomogram
(each solve drives its tasks from a thread of the driver).

With ``order=1`` (a monotone scheme) the result is the whole-volume answer, to the
tolerance (1e-10 relative measured, 1e-6 tested). The second-order scheme
(scikit-fmm's) is not continuous in its data: it switches between the one-sided
second- and first-order differences where two neighbours' values tie (``v2 <= v1``),
so a 1e-9 perturbation of the inlet values moves some whole-volume distances by up to
0.7 voxel (median 0.02; measured on a 40 x 50 x 60 random structure). The block
solve, reaching the same values by another route, lands within that spread:
distances within a few tenths of a voxel at worst (median ~5e-4 voxel), τ within 1e-3
(tested; slightly lower, as values only drop).
Values are float64 for that reason: float32 halos alone moved distances by half a
voxel.

Where the blocks live. With a scratch folder — `scratch` where given, else for a
volume (or a Zarr array on local disk) a hidden folder inside its own store, which
the workers read anyway; never the driver's temporary folder — each block's box and
faces are ``.npy`` files there, written atomically (a reader sees the old file or the
new one), a direction's removed once its τ is known. Directions run together as far as
half the free space of the scratch's disk holds their blocks (8 bytes per voxel
each), the others after them. A box is read and written only by its block's visits,
one at a time; a face is written by its block and read by one neighbour, which sees
the version the driver recorded or a newer one. Before any work, the driver writes a
token in the folder and every worker must read it back (``client.run``): a worker that
does not see the folder (another machine's /tmp) is a one-line
:class:`~porevox.errors.StageError` naming ``scratch=``, not fill values read for
blocks written elsewhere. Without a scratch folder (an in-memory array) the blocks
stay in memory: on a cluster, as Dask futures on the workers (a visit's box stays on
its worker, where the block's next visit runs; faces move worker to worker, only a
summary comes to the driver), else in this process.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import heapq
import io
import logging
import math
import operator
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from dask.utils import format_bytes

from ..engine.cluster import active_client, chunk_bytes_budget, worker_memory_limit
from ..engine.location import bucket_error, is_remote, location
from ..engine.placement import free_memory, place, resolve_source, run_whole
from ..engine.storage import CheckedArray, check_chunks, choose_chunks, discard, store_root
from ..errors import InvalidVolumeError, StageError
from ..kernels.conductivity import NoPathWarning, NotConvergedWarning, check_axis
from ..kernels.fmm import (
    check_order,
    fast_marching_depth,
    fast_marching_update,
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

#: Bytes per voxel of a block's box a visit holds: measured (peak RSS) 33 on a 162³
#: box (the values, the solid and the masks, 11; the kernel's framed state, values,
#: bounds and heap positions, 21), and the block's previous values besides in memory
#: (+8); with a margin.
BLOCK_BYTES_PER_VOXEL = 48
_RTOL = 1e-12  # a face changed if a value dropped by more than this (relative)
#: Scratch bytes per voxel of one direction: its blocks' float64 values and faces.
SCRATCH_BYTES_PER_VOXEL = 8.2
SCRATCH_PREFIX = ".porevox-tortuosity-"


def tortuosity(solid, *, voxel_size=None, axis=1, directions=None, order=2, method="auto",
               last_fraction=0.25, chunks=None, labels="truth", phase=None, scratch=None) -> dict:
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
    phase : int or str, optional
        The phase whose paths are measured: a value, values joined by "+", or a
        phase name of the label image (default: nonzero, the solid).
    scratch : path, optional
        Folder for the block solver's scratch files; every worker must see it
        (checked before any work). Default: inside the store of a volume or of a
        Zarr array on disk; for an in-memory array, none (the blocks stay in the
        workers' memory, or in this process's without a cluster).

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
        ``method`` ("whole" or "blocks"), ``order``, ``iterations`` (block visits,
        i.e. tasks, along +axis; 0 for "whole") and ``iterations_by_axis``,
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
    source, voxel_size = resolve_source(solid, voxel_size, labels, phase=phase, what="tortuosity",
                                        log=logger)
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
        results, iterations, used_chunks = block_tortuosity(
            source, names, voxel_size=voxel_size, order=order, last_fraction=last_fraction,
            chunks=chunks, scratch=scratch)
        ran_on = "cluster" if active_client() is not None else "driver"
        used_chunks = list(used_chunks)
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
                     threads=threads, need=need)
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
def scratch_home(source, scratch=None) -> Path | None:
    """The folder the block solver keeps its scratch in: `scratch` where given (a
    folder or an object-storage URL), else the store of a volume or Zarr array on
    disk or in object storage (the workers read the volume there, so they see it),
    else None: the blocks stay in memory."""
    if scratch is not None:
        return location(scratch)
    return store_root(source)


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


def _cuts(n: int, c: int, depth: int) -> list[int]:
    """Block boundaries along one axis: every `c` voxels, a last block thinner than the
    halo joined to the one before (a face is then always one neighbour's)."""
    cuts = [*range(0, n, c), n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < depth:
        del cuts[-2]
    return cuts


@dataclass
class _Direction:
    """The driver's record of one direction's solve."""

    name: str
    axis: int
    sign: int
    folder: str | None                                   # scratch folder (None: in memory)
    visited: set = field(default_factory=set)
    seen: dict = field(default_factory=dict)             # block -> {side: neighbour face version used}
    versions: dict = field(default_factory=dict)         # (block, side) -> times its face dropped
    core: dict = field(default_factory=dict)             # in memory: block -> core (array or future)
    faces: dict = field(default_factory=dict)            # in memory: block -> {side: face}
    visits: int = 0
    pops: int = 0
    seconds: float = 0.0
    cpu: float = 0.0


class BlockSolver:
    """The block-decomposed fast marching of the module docstring, for one volume and
    any number of directions.

    ``run(names)`` solves them together and returns the block visits per direction
    (``stats`` has the voxels accepted and the task seconds too);
    ``tortuosity(name, last_fraction)`` reduces a solved field by blocks;
    ``read(name)`` assembles a whole field (for tests and small volumes);
    ``close()`` removes the scratch.
    """

    def __init__(self, source, *, voxel_size, order=2, chunks=None, scratch=None, max_visits=None):
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.order = int(order)
        self.depth = fast_marching_depth(self.order)
        self.shape = tuple(int(s) for s in source.shape)
        self.chunks = block_chunks(self.shape, chunks, self.depth)
        self.cuts = [_cuts(n, c, self.depth) for n, c in zip(self.shape, self.chunks)]
        self.grid = tuple(len(c) - 1 for c in self.cuts)
        self.max_visits = max_visits or 50 * math.prod(self.grid) + 100
        self.pool = _pool()
        self.path: Path | None = None
        self.directions: dict[str, _Direction] = {}
        self.stats: dict[str, dict] = {}
        self.solid_kept: set = set()  # blocks whose box of the solid is in the scratch folder
        home = scratch_home(source, scratch)
        try:
            if home is not None:
                self.path = _make_scratch(home)
                if isinstance(self.pool, _ClusterPool):  # before any work: every worker must see it
                    check_scratch(self.pool.client, self.path)
            self.solid = self._solid(source)
            # on a cluster a task would unpickle the source's handle and read it through
            # Zarr at every visit, or fetch its box from another worker: kept in the scratch
            self.keep_solid = self.path is not None and (isinstance(self.pool, _ClusterPool)
                                                         or not isinstance(source, np.ndarray))
        except BaseException:
            self.close()
            raise
        logger.info("tortuosity: block solver in %s blocks of %s (halo %d) on %s, %s",
                    "x".join(map(str, self.grid)), self.chunks, self.depth, self.pool.describe(),
                    f"scratch {self.path}" if self.path is not None else
                    "the blocks kept in memory (no scratch folder)")

    def _solid(self, source):
        """What a task reads its block of the solid from: `source` itself where every
        task can read it, else one box per block (on the workers)."""
        if not isinstance(self.pool, _ClusterPool) or _readable_by_workers(source):
            return dict.fromkeys(self.blocks(), source)
        outers = {b: self._outer(b) for b in self.blocks()}
        client = self.pool.client
        if hasattr(source, "dask"):
            boxes = client.compute([(source[o] != 0).astype(np.uint8) for o in outers.values()])
        else:
            boxes = client.scatter([np.ascontiguousarray(np.asarray(source[o]) != 0)
                                    for o in outers.values()], hash=False)
        return dict(zip(outers, boxes))

    def close(self) -> None:
        if self.path is not None:
            discard(self.path)
        self.directions.clear()
        self.solid = {}
        self.pool.close()

    # -- geometry ------------------------------------------------------------------
    def blocks(self):
        return np.ndindex(self.grid)

    def _core(self, b) -> tuple[slice, ...]:
        return tuple(slice(c[i], c[i + 1]) for c, i in zip(self.cuts, b))

    def _sides(self, b) -> tuple[tuple[int, int], ...]:
        return tuple((a, s) for a in range(3) for s in (-1, 1) if 0 <= b[a] + s < self.grid[a])

    def _outer(self, b) -> tuple[slice, ...]:
        sides = self._sides(b)
        return tuple(slice(c.start - self.depth * ((a, -1) in sides), c.stop + self.depth * ((a, 1) in sides))
                     for a, c in enumerate(self._core(b)))

    def _visit_spec(self, d: _Direction, b, seeds, first: bool) -> _Visit:
        outer, core = self._outer(b), self._core(b)
        inlet = None
        k = 0 if d.sign > 0 else self.shape[d.axis] - 1
        if core[d.axis].start <= k < core[d.axis].stop:
            inlet = (d.axis, k - outer[d.axis].start)
        return _Visit(d.folder, tuple(int(i) for i in b), core, outer, self._sides(b), tuple(seeds),
                      first, inlet, self.voxel_size, self.order)

    # -- the solve -----------------------------------------------------------------
    def run(self, names) -> dict[str, int]:
        """Solve the directions `names` together (see the module docstring); returns the
        block visits (tasks) of each."""
        pending: dict[tuple, float] = {}
        heap: list = []
        for name in names:
            axis, sign = _axis_sign(name)
            folder = None
            if self.path is not None:
                folder = self.path / _tag(name)
                if not is_remote(folder):
                    folder.mkdir(exist_ok=True)
            d = self.directions[name] = _Direction(name, axis, sign, None if folder is None else str(folder))
            first = 0 if sign > 0 else self.grid[axis] - 1
            for b in self.blocks():
                if b[axis] == first:
                    pending[(name, b)] = 0.0
                    heapq.heappush(heap, (0.0, name, b))
        running: dict = {}
        busy: set = set()
        total = 0
        t0 = time.perf_counter()
        while heap or running:
            held = []
            while heap and len(running) < self.pool.slots:
                key, name, b = heapq.heappop(heap)
                if pending.get((name, b)) != key:
                    continue  # superseded by a lower key
                if (name, b) in busy or any((name, _step(b, a, s)) in busy for a, s in self._sides(b)):
                    held.append((key, name, b))  # one visit at a time, none beside it
                    continue
                del pending[(name, b)]
                handle = self._submit(self.directions[name], b)
                if handle is not None:
                    running[handle] = (name, b)
                    busy.add((name, b))
                    total += 1
            for item in held:
                heapq.heappush(heap, item)
            if not running:
                break
            for handle in self.pool.wait(list(running)):
                name, b = running.pop(handle)
                busy.discard((name, b))
                for nb, low in self._finish(self.directions[name], b, handle):
                    if low < pending.get((name, nb), math.inf):
                        pending[(name, nb)] = low
                        heapq.heappush(heap, (low, name, nb))
            if total > self.max_visits * len(self.directions):
                for handle in running:
                    self.pool.wait([handle])
                warnings.warn(f"the block solver stopped after {total} block visits with blocks still "
                              "changing; its τ may be too large: use larger chunks", NotConvergedWarning,
                              stacklevel=3)
                break
        for name in names:
            d = self.directions[name]
            self.stats[name] = {"visits": d.visits, "voxels_accepted": d.pops, "task_seconds": d.seconds,
                                "task_cpu_seconds": d.cpu}
        logger.info("tortuosity: block solver done in %.2f s: %s", time.perf_counter() - t0, "; ".join(
            f"{n} {s['visits']} visits of {math.prod(self.grid)} blocks, {s['voxels_accepted'] / 1e6:.3g}M "
            f"voxels accepted, {s['task_seconds']:.3g} task-s" for n, s in self.stats.items()))
        return {name: self.directions[name].visits for name in names}

    def _submit(self, d: _Direction, b):
        """Start a visit of block `b`: seeded from the neighbours' faces that dropped
        since its last visit (all of them, and the inlet, at the first)."""
        first = b not in d.visited
        seen = d.seen.setdefault(b, {})
        seeds = []
        for a, s in self._sides(b):
            nb = _step(b, a, s)
            version = d.versions.get((nb, (a, -s)), 0)
            if version != seen.get((a, s), 0):
                seeds.append((a, s))
            seen[(a, s)] = version
        spec = self._visit_spec(d, b, seeds, first)
        if not seeds and not (first and spec.inlet is not None):
            return None
        d.visited.add(b)
        d.visits += 1
        if d.folder is not None:
            if self.keep_solid:  # the box of the solid read from the source once, then kept
                spec = dataclasses.replace(spec, keep_solid=True)
                return self.pool.submit(_visit, spec, None if b in self.solid_kept else self.solid[b])
            return self.pool.submit(_visit, spec, self.solid[b])
        faces = {(a, s): d.faces[_step(b, a, s)] for a, s in spec.sides if _step(b, a, s) in d.faces}
        return self.pool.submit(_visit, spec, self.solid[b], d.core.get(b), faces, split=True)

    def _finish(self, d: _Direction, b, handle) -> list:
        """Record a finished visit; the neighbours it gives new values, with the lowest."""
        if d.folder is not None:
            info = self.pool.result(handle)
            self.solid_kept.add(b)
        else:
            info, d.core[b], d.faces[b] = self.pool.result(handle)
        d.pops += info["pops"]
        d.seconds += info["seconds"]
        d.cpu += info["cpu"]
        out = []
        for (a, s), low in info["changed"].items():
            d.versions[(b, (a, s))] = d.versions.get((b, (a, s)), 0) + 1
            out.append((_step(b, a, s), low))
        return out

    # -- results -------------------------------------------------------------------
    def tortuosity(self, name, last_fraction=0.25):
        """:class:`~porevox.kernels.fmm.TortuosityResult` of a solved field, reduced by
        blocks (a NaN τ is explained in ``note``, not warned)."""
        d = self.directions[name]
        handles = [self.pool.submit(_block_sums, self._visit_spec(d, b, (), False), self.solid[b],
                                    d.core.get(b), d.axis, d.sign, self.shape) for b in self.blocks()]
        parts = [self.pool.result(h) for h in handles]
        merged = {k: sum(p[k] for p in parts) for k in ("sums", "counts", "solid", "reached")}
        return tortuosity_from_sums(merged, axis=d.axis, direction=d.sign, last_fraction=last_fraction)

    def solve(self, names, last_fraction=0.25) -> dict:
        """``run(names)``, then each direction's τ (a TortuosityResult as a dict, a NaN
        τ explained in ``note``), then ``close()``. With a scratch folder, as many
        directions together as half its disk's free space holds (each direction's
        blocks removed once its τ is known), the rest after them."""
        try:
            out = {}
            for group in self._groups(list(names)):
                self.run(group)
                for n in group:
                    out[n] = self.tortuosity(n, last_fraction).to_dict()
                    self._drop(n)
            return out
        finally:
            self.close()

    def _groups(self, names: list) -> list[list]:
        if self.path is None or len(names) < 2 or is_remote(self.path):   # no free space to mind
            return [names]
        one = SCRATCH_BYTES_PER_VOXEL * math.prod(self.shape)
        free = shutil.disk_usage(self.path).free
        size = max(1, int(0.5 * free // one))
        if size < len(names):
            logger.info("tortuosity: %d of %d directions at a time (each keeps ~%s of blocks in the scratch; "
                        "its disk has %s free)", size, len(names), format_bytes(one), format_bytes(free))
        return [names[i:i + size] for i in range(0, len(names), size)]

    def _drop(self, name) -> None:
        """Release a solved direction's blocks (its scratch folder or its futures)."""
        d = self.directions[name]
        if d.folder is not None:
            discard(d.folder, settle=0)    # solved and read: none of its tasks still writes
        d.core.clear()
        d.faces.clear()

    def read(self, name) -> np.ndarray:
        """The solved distance field of direction `name` (float64, inf where unreached)."""
        d = self.directions[name]
        out = np.full(self.shape, np.inf)
        handles = {b: self.pool.submit(_read_core, self._visit_spec(d, b, (), False), d.core.get(b))
                   for b in self.blocks()}
        for b, h in handles.items():
            core = self.pool.result(h)
            if core is not None:
                out[self._core(b)] = core
        return out


def block_tortuosity(source, names, *, voxel_size, order, last_fraction, chunks=None, scratch=None):
    """τ along `names` by the block solver: ({name: TortuosityResult as a dict}, {name:
    block visits}, the blocks). NaN τ are explained in ``note``, not warned."""
    solver = BlockSolver(source, voxel_size=voxel_size, order=order, chunks=chunks, scratch=scratch)
    results = solver.solve(names, last_fraction)
    return results, {n: solver.stats[n]["visits"] for n in names}, solver.chunks


# --------------------------------------------------------------------------- scratch
def _make_scratch(home: Path) -> Path:
    path = home / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    if is_remote(home):                 # prefixes need no creating
        problem = bucket_error(home)
        if problem:
            raise StageError(f"tortuosity scratch: {problem}")
        return path
    try:
        home.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except OSError as err:
        raise StageError(f"cannot create the tortuosity scratch folder in {home} ({err.strerror or err}); "
                         "pass scratch=<a writable folder every Dask worker sees>") from None
    return path


def check_scratch(client, path: Path) -> None:
    """Raise :class:`StageError` unless every worker of `client` reads the token the
    driver writes in `path` (workers on other machines that do not share the folder
    would read fill values for blocks written elsewhere)."""
    token = uuid.uuid4().hex
    probe = path / f"token-{token[:8]}"
    probe.write_text(token)
    try:
        seen = client.run(_read_token, str(probe))
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(w for w, t in seen.items() if t != token)
    if blind:
        raise StageError(
            f"the tortuosity scratch folder {path.parent} is not visible to {len(blind)} of the "
            f"{len(seen)} Dask workers ({', '.join(blind[:2])}{', ...' if len(blind) > 2 else ''}); "
            "pass scratch=<a folder on a filesystem every worker shares> (a volume's own folder "
            "must be shared too)")


def _read_token(path: str) -> str | None:
    try:
        return location(path).read_text()
    except OSError:
        return None


def _readable_by_workers(source) -> bool:
    """Whether tasks on other processes can read `source` box by box themselves: a
    Zarr array (or a volume's reader) not held in this process's memory."""
    arr = source.arr if isinstance(source, CheckedArray) else source
    return isinstance(arr, zarr.Array) and not isinstance(arr.store, zarr.storage.MemoryStore)


def _tag(name: str) -> str:
    return ("p" if name[0] == "+" else "m") + name[1]


def _step(b, axis: int, side: int) -> tuple:
    return tuple(i + side * (a == axis) for a, i in enumerate(b))


def _core_file(folder: str, b) -> str:
    return os.path.join(folder, "c-{}-{}-{}.npy".format(*b))


def _solid_file(folder: str, b) -> str:
    """The box of the solid, shared by the directions (in the scratch folder's root)."""
    return os.path.join(os.path.dirname(folder), "s-{}-{}-{}.npy".format(*b))


def _face_file(folder: str, b, side) -> str:
    return os.path.join(folder, "f-{}-{}-{}-{}{}.npy".format(*b, side[0], "p" if side[1] > 0 else "m"))


def _load(path: str) -> np.ndarray | None:
    try:
        if is_remote(path):
            return np.load(io.BytesIO(location(path).read_bytes()))
        return np.load(path)
    except FileNotFoundError:
        return None


def _save(path: str, arr: np.ndarray) -> None:
    """Write atomically: a reader sees the old file or the new one, whole (an
    object's upload is)."""
    if is_remote(path):
        buffer = io.BytesIO()
        np.save(buffer, arr)
        location(path).write_bytes(buffer.getvalue())
        return
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- pools
def _pool():
    """Where the tasks run: the workers of the active distributed client, inline
    under Dask's synchronous scheduler (e.g. inside a Dask task), else threads here."""
    if dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded"):
        return _InlinePool()
    client = active_client()
    if client is not None:
        return _ClusterPool(client)
    return _ThreadPool(os.cpu_count() or 1)


class _InlinePool:
    """Runs each task when it is submitted (Dask's synchronous scheduler)."""

    slots = 1

    def describe(self) -> str:
        return "this thread"

    def submit(self, fn, *args, split=False):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # raised again by result()
            fut.set_exception(err)
        return _Handle(fut, split)

    def wait(self, handles):
        return [h for h in handles if h.future.done()] or handles[:1]

    def result(self, handle):
        """The task's value; for a `split` visit (in memory) its summary, its whole value
        (the next visit's `state`) and its faces."""
        value = handle.future.result()
        return (value["info"], value, value["faces"]) if handle.split else value

    def close(self) -> None:
        pass


class _ThreadPool(_InlinePool):
    """Threads of this process (the kernel releases the GIL)."""

    def __init__(self, threads: int):
        self.slots = threads
        self.executor = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="porevox-fmm")

    def describe(self) -> str:
        return f"{self.slots} threads here"

    def submit(self, fn, *args, split=False):
        return _Handle(self.executor.submit(fn, *args), split)

    def wait(self, handles):
        done, _ = cf.wait([h.future for h in handles], return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h.future in done]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class _ClusterPool(_InlinePool):
    """The workers of a distributed client. A visit in memory leaves its value on its
    worker (the next visit of the block is placed there, by data locality); two small
    tasks there split off its faces (for the neighbours) and its summary (for here)."""

    def __init__(self, client):
        self.client = client
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        self.threads = max(threads, 1)
        self.slots = 2 * self.threads  # a queued task per thread: no idle worker between tasks

    def describe(self) -> str:
        return f"the Dask cluster's {self.threads} worker threads"

    def submit(self, fn, *args, split=False):
        main = self.client.submit(fn, *args, pure=False)
        if not split:
            return _Handle(main, False)
        pick = functools.partial(self.client.submit, operator.getitem, main, pure=False)
        return _Handle(pick("info"), (main, pick("faces")))

    def wait(self, handles):
        from distributed import wait

        done = wait([h.future for h in handles], return_when="FIRST_COMPLETED").done
        return [h for h in handles if h.future in done]

    def result(self, handle):
        if not handle.split:
            return handle.future.result()
        return (handle.future.result(), *handle.split)


@dataclass(eq=False)
class _Handle:
    future: Any
    split: Any


# --------------------------------------------------------------------------- block tasks
@dataclass(frozen=True)
class _Visit:
    """A task's block: its core and its box with the faces' halo (volume coordinates),
    the sides with a neighbour, those to seed from, the inlet plane (axis, index in
    the box) if the box holds it."""

    folder: str | None
    block: tuple[int, int, int]
    core: tuple[slice, ...]
    outer: tuple[slice, ...]
    sides: tuple[tuple[int, int], ...]
    seeds: tuple[tuple[int, int], ...]
    first: bool
    inlet: tuple[int, int] | None
    voxel_size: tuple[float, float, float]
    order: int
    keep_solid: bool = False

    @property
    def inner(self) -> tuple[slice, ...]:
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))

    def halo(self, axis: int, side: int) -> tuple[slice, ...]:
        """The face halo on `side` of `axis`, in the box: the neighbour's layers."""
        box = list(self.inner)
        c = box[axis]
        box[axis] = slice(c.start - self.order, c.start) if side < 0 else slice(c.stop, c.stop + self.order)
        return tuple(box)

    def face(self, axis: int, side: int) -> tuple[slice, ...]:
        """The core's own layers on `side` of `axis` (core coordinates): what that
        neighbour reads as its halo."""
        n = self.core[axis].stop - self.core[axis].start
        return tuple((slice(0, self.order) if side < 0 else slice(n - self.order, n)) if a == axis
                     else slice(None) for a in range(3))


def _box(v: _Visit, solid) -> np.ndarray:
    """The solid of the visit's box: `solid` itself where it is the box, else read from
    it; kept in the scratch folder where `v.keep_solid` (None: read from there)."""
    if solid is None:
        return np.load(_solid_file(v.folder, v.block))
    if isinstance(solid, np.ndarray) and solid.shape == tuple(o.stop - o.start for o in v.outer):
        box = solid
    else:
        box = np.asarray(solid[v.outer])
    if v.keep_solid:
        _save(_solid_file(v.folder, v.block), np.ascontiguousarray(box))
    return box


def _visit(v: _Visit, solid, state=None, faces=None):
    """One visit of one block: its core's values lowered from its neighbours' faces
    (:func:`~porevox.kernels.fmm.fast_marching_update`), everything outside the core
    imposed. The block is kept as its box (core and the halo it last used). With a
    scratch folder the box and the faces that dropped are written there and a summary
    returned; in memory the box and faces are returned with it."""
    t0, c0 = time.perf_counter(), time.thread_time()
    box = _box(v, solid)
    inner = v.inner
    if v.first:
        dist = np.full(box.shape, np.inf)
    elif v.folder is not None:
        dist = np.load(_core_file(v.folder, v.block))
    else:
        dist = state["core"].copy()
    core_view = dist[inner]
    old = {side: core_view[v.face(*side)].copy() for side in v.sides}
    fixed = np.ones(box.shape, bool)
    fixed[inner] = False
    seeds = np.zeros(box.shape, bool)
    for side in v.seeds:
        back = (side[0], -side[1])
        if v.folder is not None:
            face = _load(_face_file(v.folder, _step(v.block, *side), back))
        else:
            face = (faces or {}).get(side, {}).get(back)
        if face is not None:
            halo = v.halo(*side)
            seeds[halo] = face < dist[halo]  # the neighbour's values that dropped
            dist[halo] = face
    if v.inlet is not None:
        plane = tuple(v.inlet[1] if a == v.inlet[0] else s for a, s in enumerate(inner))
        fixed[plane] = True
        if v.first:
            dist[plane] = np.where(box[plane] != 0, 0.0, np.inf)
            seeds[plane] = True
    pops = fast_marching_update(box, dist, seeds, fixed=fixed, voxel_size=v.voxel_size, order=v.order)
    changed, out_faces = {}, {}
    h = min(v.voxel_size)
    for side in v.sides:
        new = core_view[v.face(*side)]
        drop = _dropped(old[side], new, h)
        if drop.any():
            changed[side] = float(new[drop].min())
            if v.folder is not None:
                _save(_face_file(v.folder, v.block, side), np.ascontiguousarray(new))
        out_faces[side] = new.copy()
    if v.folder is not None:
        _save(_core_file(v.folder, v.block), dist)
    info = {"changed": changed, "pops": int(pops), "seconds": time.perf_counter() - t0,
            "cpu": time.thread_time() - c0}
    if v.folder is not None:
        return info
    return {"info": info, "core": dist, "faces": out_faces}


def _dropped(old, new, h: float) -> np.ndarray:
    """Where a value dropped by more than the tolerance (relative, to the distance plus
    a voxel)."""
    with np.errstate(invalid="ignore"):  # inf - inf where neither is reached
        return (new < old) & ~(old - new <= _RTOL * (new + h))


def _read_core(v: _Visit, state=None):
    """The block's core values (None if never visited)."""
    box = _load(_core_file(v.folder, v.block)) if v.folder is not None else (state or {}).get("core")
    return None if box is None else box[v.inner]


def _block_sums(v: _Visit, solid, core, axis, sign, shape) -> dict:
    core = _read_core(v, core)
    if isinstance(solid, np.ndarray) and solid.shape == tuple(o.stop - o.start for o in v.outer):
        part = solid[v.inner]
    else:
        part = np.asarray(solid[v.core])
    if core is None:
        core = np.full(part.shape, np.inf)
    return tortuosity_sums(core, part, axis=axis, direction=sign, voxel_size=v.voxel_size,
                           offset=tuple(s.start for s in v.core), volume_shape=shape)


__all__ = ["PAPER_DIRECTIONS", "BlockSolver", "block_tortuosity", "check_scratch", "direction_tortuosity",
           "parse_directions", "scratch_home", "tortuosity"]
