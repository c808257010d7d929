"""Effective conductivity of a volume decomposed into blocks on the Dask cluster.

The same finite-volume problem as :mod:`porevox.kernels.conductivity`, solved by the
same conjugate gradient, preconditioned by multigrid across blocks
(:mod:`porevox.kernels.conductivity_blocks`): each block holds its cells of the fine
grid and of the first coarse levels, exchanges one face layer with its neighbours
before each step that reads them, and the levels that have become small (at most
``coarse_cells``) are gathered and cycled in one task. The V-cycle is the whole
solver's except for the smoother at the blocks' faces, so the iteration count stays
near the whole solve's however many blocks there are.

Every block's arrays live on the workers as Dask futures between the steps: the
scheduler runs each step where its block is (only the faces travel), a worker's
memory holds the blocks it has, and Dask spills blocks to the worker's disk where a
worker holds more than its memory. Every task returns new arrays, so a worker lost
mid-solve costs its blocks, which the scheduler recomputes from their lineage: the
result is unchanged. The driver keeps scalars only.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..kernels import conductivity_blocks as kb
from ..kernels.components import STRUCTURE, block_components, through_labels
from ..kernels.conductivity import (
    NoPathWarning,
    NotConvergedWarning,
    _dot,
    _Multigrid,
    _xpby,
    check_stop,
    effective_conductivity,
    plan_levels,
)

logger = logging.getLogger(__name__)

#: Levels of at most this many cells are gathered and cycled in one task.
COARSE_CELLS = 64**3
#: Bytes per voxel a block holds between steps (mask, r, p, z and the coarse levels
#: of the V-cycle under way) and at most within one step (its inputs, the framed
#: copies with the neighbours' faces and its outputs).
HELD_BYTES_PER_VOXEL = 34.0
STEP_BYTES_PER_VOXEL = 56.0
#: The fraction of a worker's memory limit one step may use (see :func:`step_budget`).
SPILL_MARGIN = 0.25


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Blocks of `edges` cells tiling a grid of `shape` (conduction along axis 0),
    with the multigrid plan: `factors` of the levels held in blocks (the last leads
    to the gathered level) and `tail` factors below it."""

    shape: tuple
    edges: tuple
    factors: tuple
    tail: tuple

    @property
    def counts(self) -> tuple:
        return tuple(-(-n // e) for n, e in zip(self.shape, self.edges))

    @property
    def blocks(self) -> list[tuple]:
        return list(itertools.product(*(range(c) for c in self.counts)))

    def scale(self, level: int) -> tuple:
        """Fine cells per level-`level` cell along each axis (aggregation aligned)."""
        return tuple(math.prod(f[a] for f in self.factors[:level]) for a in range(3))

    def core(self, block, level: int = 0) -> tuple:
        """The block's cells at `level`, as slices of that level's grid."""
        out = []
        for a, b in enumerate(block):
            s = self.scale(level)[a]
            lo, hi = b * self.edges[a], min((b + 1) * self.edges[a], self.shape[a])
            out.append(slice(lo // s, -(-hi // s)))
        return tuple(out)

    def level_shape(self, level: int) -> tuple:
        return tuple(-(-n // s) for n, s in zip(self.shape, self.scale(level)))

    def top_slot(self, block) -> tuple:
        """Where the block's cells of the gathered level sit in that level's framed array."""
        return tuple(slice(s.start + 1, s.stop + 1) for s in self.core(block, len(self.factors)))

    def top_shape(self) -> tuple:
        """The gathered level's framed shape."""
        return tuple(n + 2 for n in self.level_shape(len(self.factors)))

    def framed_shape(self, block, level: int) -> tuple:
        return tuple(s.stop - s.start + 2 for s in self.core(block, level))

    def neighbours(self, block) -> dict:
        """(axis, side) -> the neighbouring block, for the sides that have one."""
        out = {}
        for axis, side in kb.FACES:
            nb = list(block)
            nb[axis] += 1 if side else -1
            if 0 <= nb[axis] < self.counts[axis]:
                out[(axis, side)] = tuple(nb)
        return out

    def fine(self, block, g, gb) -> tuple:
        """(g, gb, lo, hi): the Dirichlet layers lo and hi in the block's framed
        indices, -1 where the block does not hold the volume's first or last layer."""
        core = self.core(block)[0]
        lo = 1 if core.start == 0 else -1
        hi = core.stop - core.start if core.stop == self.shape[0] else -1
        return (tuple(float(v) for v in g), float(gb), lo, hi)


def plan_layout(shape, g, edges, coarse_cells: int = COARSE_CELLS) -> Layout:
    """The layout for blocks of about `edges` cells: the levels down to the first of at
    most `coarse_cells` cells are held in blocks (at least one, the fine grid), and
    the edges are rounded up to multiples of those levels' aggregation."""
    factors, shapes = plan_levels(shape, g)
    held = next((level for level in range(1, len(shapes)) if math.prod(shapes[level]) <= coarse_cells),
                len(factors))
    unit = tuple(math.prod(f[a] for f in factors[:held]) for a in range(3))
    edges = tuple(min(n, max(u, -(-int(e) // u) * u)) for n, e, u in zip(shape, edges, unit))
    return Layout(tuple(int(n) for n in shape), edges, tuple(factors[:held]), tuple(factors[held:]))


def step_budget(limit: int | None, share: float | None, threads: int) -> int | None:
    """Voxels per block for workers of memory `limit` running `threads` tasks each
    (`share`: the memory one thread's tasks may hold, see
    :func:`~porevox.engine.cluster.thread_memory_share`), or None without limits.

    Where the blocks outgrow the workers, Dask keeps each worker's memory near its
    spill threshold (70 % of the limit) by writing blocks to disk, and a step's own
    arrays arrive faster than it spills: they must fit in the margin up to the
    termination threshold (95 %), with room for the spilling's own buffers, or the
    worker is restarted mid-solve."""
    if not limit or not share:
        return None
    return int(min(share, SPILL_MARGIN * limit / max(threads, 1)) / STEP_BYTES_PER_VOXEL)


def block_edges(shape, budget_voxels: int, at_least: int = 1) -> tuple:
    """Block edges for blocks of at most `budget_voxels` (split the longest axis
    first), at least `at_least` blocks."""
    counts = [1, 1, 1]
    while True:
        edges = [-(-n // c) for n, c in zip(shape, counts)]
        if math.prod(edges) <= budget_voxels and math.prod(counts) >= at_least:
            return tuple(edges)
        axis = int(np.argmax(edges))
        if edges[axis] <= 1:
            return tuple(edges)
        counts[axis] += 1


# --------------------------------------------------------------------------- tasks
# Module-level functions (Dask pickles them by reference). Each returns new arrays.
def _components(solid, origin, shape):
    return block_components(solid, offset=origin, volume_shape=shape)


def _through(axis, *parts):
    return through_labels(parts, axis)


def _active(solid, table, fine):
    """The block's conducting cells (framed uint8) and its counts: solid, active,
    active in the volume's first layer."""
    labels, _ = ndimage.label(np.asarray(solid) != 0, STRUCTURE)
    active = kb.framed(table[labels])
    lo = fine[2]
    first = int(np.count_nonzero(active[lo])) if lo > 0 else 0
    counts = (int(np.count_nonzero(solid)), int(np.count_nonzero(active)), first)
    return active, kb.faces(active), counts


def _levels(layout, fine, mine, theirs):
    mask = kb.with_frame(mine[0], theirs)
    levels = kb.block_levels(mask, fine, layout.factors)
    return mask, levels, kb.coarse_faces(levels)


def _state(mine, below):
    """The block's fine mask and held coarse levels (their low frames filled), and
    its top level to gather."""
    mask, levels, _ = mine
    held = kb.with_coarse_frames(levels[:-1], below)
    return (mask, held), levels[-1]


def _tail(layout, *tops):
    """The V-cycle of the gathered level and those below it."""
    ops = [np.zeros(layout.top_shape()) for _ in range(4)]
    for block, top in zip(layout.blocks, tops):
        for whole, part in zip(ops, top):
            whole[layout.top_slot(block)] = part[1:-1, 1:-1, 1:-1]
    return _Multigrid.from_operator(tuple(ops), list(layout.tail))


def _start(state, fine):
    """The first residual (the right-hand side) and its pre-smoothing."""
    mask = state[0]
    r = kb.first_rhs(mask, fine[1], fine[2])
    z = kb.fine_presmooth(mask, r, fine)
    return r, z, kb.faces(z), float(_dot(r, r))


def _update(state, r, p, alpha, fine):
    """r − alpha·A p (p holds its neighbours), its norm, and the pre-smoothing."""
    mask = state[0]
    r, rr = kb.fine_update(mask, p[0], r[0], alpha, fine)
    z = kb.fine_presmooth(mask, r, fine)
    return r, z, kb.faces(z), rr


def _down(layout, level, block, state, fine, mine, theirs):
    """From level-1 to `level`: the residual restricted; pre-smoothed below the top."""
    x = kb.with_frame(mine[1], theirs)
    f = layout.factors[level - 1]
    cshape = layout.framed_shape(block, level)
    if level == 1:
        b = kb.fine_restrict(state[0], mine[0], x, fine, f, cshape)
    else:
        b = kb.coarse_restrict(state[1][level - 2], mine[0], x, f, cshape)
    if level == len(layout.factors):
        return (b,)
    x = kb.coarse_presmooth(state[1][level - 1], b)
    return b, x, kb.faces(x)


def _cycle_tail(layout, tail, *tops):
    b = np.zeros(layout.top_shape())
    for block, top in zip(layout.blocks, tops):
        b[layout.top_slot(block)] = top[0][1:-1, 1:-1, 1:-1]
    return tail.solve(b)


def _prolong_from(layout, level, state, coarse, below):
    """Level `level` + the correction from the level under it (e framed on the
    block's cells of that level)."""
    f = layout.factors[level]
    if level == 0:
        x = kb.prolong(below[1], coarse, f, mask=state[0])
    else:
        x = kb.prolong(below[1], coarse, f, diag=state[1][level - 1][3])
    return x, kb.faces(x)


def _from_gathered(layout, block, state, x_top, below):
    level = len(layout.factors)
    e = np.zeros(layout.framed_shape(block, level))
    e[1:-1, 1:-1, 1:-1] = x_top[layout.top_slot(block)]
    return _prolong_from(layout, level - 1, state, e, below)


def _up(layout, level, state, down, mine, theirs, below):
    """Post-smoothing on `level` (the neighbours' values after the prolongation in the
    frame), then the prolongation into the level above."""
    x = kb.with_frame(mine[0], theirs)
    x = kb.coarse_postsmooth(state[1][level - 1], down[0], x, copy=False)
    return _prolong_from(layout, level - 1, state, x, below)


def _finish(state, fine, r, mine, theirs):
    """The fine post-smoothing: the preconditioned residual z and r·z."""
    z = kb.with_frame(mine[0], theirs)
    z = kb.fine_postsmooth(state[0], r[0], z, fine, copy=False)
    return z, kb.faces(z), float(_dot(r[0], z))    # r is zero in its frame


def _direction(state, fine, z, p, beta, theirs_z, theirs_p):
    """p = z + beta·p with the neighbours' values in the frame, p·A p, and the sums
    of p over the volume's first and last layers (for the end currents)."""
    if p is None:
        new = z[0].copy()
    else:
        new = p[0].copy()
        _xpby(z[0], new, beta)
    sides = {side: tz if side not in theirs_p else tuple(a + beta * b for a, b in zip(tz, theirs_p[side]))
             for side, tz in theirs_z.items()}
    new = kb.with_frame(new, sides, copy=False)
    pap = kb.fine_pap(state[0], new, fine)
    lo, hi = fine[2], fine[3]
    s_in = float(new[lo, 1:-1, 1:-1].sum()) if lo > 0 else 0.0
    s_out = float(new[hi, 1:-1, 1:-1].sum()) if hi > 0 else 0.0
    return new, kb.faces(new), (pap, s_in, s_out)


def solve_whole(arr: np.ndarray, **options) -> dict:
    """The whole-volume solve of `arr` (in this process or as a Dask task)."""
    return effective_conductivity(arr, **options).to_dict()


def _sum(*values):
    return np.sum(np.asarray(values, dtype=np.float64), axis=0)


# --------------------------------------------------------------------------- entry
def conductivity_blocks(source, voxel_size, axis: int, *, rtol: float = 1e-8, maxiter: int | None = None,
                        edges=None, coarse_cells: int = COARSE_CELLS, client=None,
                        progress: bool = False) -> tuple[dict, list]:
    """σ_eff/σ_bulk of `source` (nonzero = conducting; NumPy, Zarr or Dask) along
    `axis`, solved in blocks of about `edges` cells (conduction axis first) on
    `client`'s workers, or in this process without a client. Returns the result (the
    keys of :class:`~porevox.kernels.conductivity.ConductivityResult`, ``method``
    "distributed", plus ``blocks``) and the warnings to raise, as
    ``[(category, message)]``."""
    import dask.array as da

    from ..engine.blockwise import as_dask
    from ..engine.placement import solve_task

    t0 = time.perf_counter()
    check_stop(rtol, maxiter)
    moved = da.moveaxis(as_dask(source), axis, 0)
    vs = (voxel_size[axis], *(v for i, v in enumerate(voxel_size) if i != axis))
    g = np.array([vs[1] * vs[2] / vs[0], vs[0] * vs[2] / vs[1], vs[0] * vs[1] / vs[2]])
    gb, scale = 2.0 * g[0], float(g.max())
    shape = tuple(int(n) for n in moved.shape)
    if not plan_levels(shape, g / scale)[0]:
        logger.info("conductivity: %s cells, solved directly in this process: too few to decompose",
                    "x".join(map(str, shape)))
        result, caught = solve_task(solve_whole, np.asarray(moved.compute(scheduler="synchronous")),
                                    {"voxel_size": vs, "axis": 0, "rtol": rtol, "maxiter": maxiter})
        return {**result, "axis": axis, "blocks": 1}, caught
    layout = plan_layout(shape, g / scale, edges or shape, coarse_cells)
    moved = moved.rechunk(layout.edges)
    grid = moved.to_delayed()
    if client is None:
        runner = Here()

        def blocks_of(block):
            return np.asarray(grid[block].compute(scheduler="synchronous"))
    else:
        runner = OnCluster(client, len(layout.blocks))
        futures = dict(zip(layout.blocks, runner.read([grid[b] for b in layout.blocks])))

        def blocks_of(block):
            return futures.pop(block)
    logger.info("conductivity: CG with multigrid across %d blocks of %s cells (%d levels in blocks, "
                "%d gathered) on %s, axis %d", len(layout.blocks), "x".join(map(str, layout.edges)),
                len(layout.factors), len(layout.tail) + 1,
                "the cluster's workers" if client is not None else "this process", axis)
    out = solve(blocks_of, layout, g / scale, gb / scale, runner=runner, rtol=rtol,
                maxiter=500 if maxiter is None else maxiter, progress=progress)
    density = out["solid"] / math.prod(shape)
    caught = []
    if out["active"] == 0:
        why = ("the volume has no solid" if out["solid"] == 0 else
               f"no solid cluster touches both end faces along axis {axis}")
        caught.append((NoPathWarning, f"no conducting path: {why}; relative_conductivity 0, "
                                      "tortuosity_factor inf"))
        rel = imbalance = 0.0
    else:
        i_in = gb * (out["first"] - out["s_in"])
        i_out = gb * out["s_out"]
        imbalance = abs(i_in - i_out) / i_in if i_in > 0 else 0.0
        rel = i_in * (shape[0] * vs[0]) / (shape[1] * vs[1] * shape[2] * vs[2])
        if out["residual"] > rtol:
            caught.append((NotConvergedWarning,
                           f"conductivity solve stopped at maxiter={out['iterations']} with relative "
                           f"residual {out['residual']:.2e} > rtol={rtol:g}; raise maxiter"))
    logger.info("conductivity: %d iterations over %d blocks, residual %.1e, flux imbalance %.1e, "
                "σ_rel %.6g", out["iterations"], out["blocks"], out["residual"], imbalance, rel)
    result = {"relative_conductivity": float(rel),
              "tortuosity_factor": float(density / rel) if rel > 0 else math.inf,
              "relative_density": float(density),
              "percolating_fraction": out["active"] / out["solid"] if out["solid"] else 0.0,
              "iterations": int(out["iterations"]), "residual": float(out["residual"]),
              "flux_imbalance": float(imbalance), "method": "distributed" if out["active"] else "none",
              "axis": axis, "seconds": time.perf_counter() - t0, "blocks": int(out["blocks"])}
    return result, caught


# --------------------------------------------------------------------------- runners
class Here:
    """Runs the steps in this process, one after another (tests, small grids)."""

    def submit(self, func, *args):
        return func(*args)

    def map(self, func, calls):
        return [func(*args) for args in calls]

    def gather(self, items):
        return list(items)


class OnCluster:
    """Runs the steps as tasks of a distributed client. Block k's tasks ask for the
    worker ``homes[k]`` (a contiguous share of the blocks per worker, so neighbours
    mostly share a worker and the work is balanced); the request is loose, so the
    tasks of a lost worker's blocks run elsewhere."""

    def __init__(self, client, n_blocks: int):
        self.client = client
        workers = sorted(client.scheduler_info()["workers"])
        self.homes = [workers[k * len(workers) // n_blocks] for k in range(n_blocks)]

    def submit(self, func, *args):
        return self.client.submit(func, *args, pure=False)

    def map(self, func, calls):
        """One task per argument tuple of `calls` (one per block), sent per worker."""
        out = [None] * len(calls)
        for home in dict.fromkeys(self.homes):
            ks = [k for k, h in enumerate(self.homes) if h == home]
            futures = self.client.map(func, *zip(*(calls[k] for k in ks)), pure=False, workers=[home],
                                      allow_other_workers=True)
            for k, f in zip(ks, futures):
                out[k] = f
        return out

    def read(self, blocks):
        """Futures of Dask collections (one per block), each computed at its home."""
        return [self.client.compute(b, workers=[home], allow_other_workers=True)
                for b, home in zip(blocks, self.homes)]

    def gather(self, items):
        return self.client.gather(list(items))


def _item(runner, values, k=None):
    """Item `k` of each of `values` (with k None, item i of the i-th)."""
    return runner.map(operator.getitem, [(v, i if k is None else k) for i, v in enumerate(values)])


# --------------------------------------------------------------------------- solver
def solve(blocks_of, layout: Layout, g, gb, *, runner, rtol=1e-8, maxiter=500,
          progress: bool = False) -> dict:
    """Conjugate gradient on the decomposed grid; see the module docstring.

    `blocks_of(block)` gives the block's solid (or a future of it), `g` and `gb` the
    scaled conductances. Returns the counts, the end-face sums of the potential, the
    iterations and the relative residual.
    """
    blocks = layout.blocks
    n = len(blocks)
    index = {b: k for k, b in enumerate(blocks)}
    nbrs = [layout.neighbours(b) for b in blocks]
    fines = [layout.fine(b, g, gb) for b in blocks]
    sub = runner.submit

    def step(func, calls, faces=None, stats=None):
        """One task per block (``calls[k]``: its arguments), and the futures of what
        the neighbours (item `faces`) and the driver (item `stats`) need of each: a
        neighbour never fetches a whole block."""
        out = runner.map(func, calls)
        return (out, None if faces is None else _item(runner, out, faces),
                None if stats is None else _item(runner, out, stats))

    def theirs(faces, k):
        return {side: faces[index[nb]] for side, nb in nbrs[k].items()}

    def total(stats):
        return _sum(*runner.gather(stats))

    # Set-up: the conducting cells (joined to both end faces), then the coarse levels.
    solids = [blocks_of(b) for b in blocks]
    parts = [sub(_components, s, tuple(c.start for c in layout.core(b)), layout.shape)
             for s, b in zip(solids, blocks)]
    tables = _item(runner, [sub(_through, 0, *parts)] * n)   # each block its own table
    active, faces, counts = step(_active, [(solids[k], tables[k], fines[k]) for k in range(n)],
                                 faces=1, stats=2)
    del solids, parts, tables
    n_solid, n_active, n_first = (int(v) for v in total(counts))
    if n_active == 0:
        return {"solid": n_solid, "active": 0, "iterations": 0, "residual": 0.0, "blocks": n}
    built, below, _ = step(_levels, [(layout, fines[k], active[k], theirs(faces, k)) for k in range(n)],
                           faces=2)
    pairs, _, _ = step(_state, [(built[k], {axis: below[index[nb]] for (axis, side), nb in nbrs[k].items()
                                            if side == 0}) for k in range(n)])
    states, tops = _item(runner, pairs, 0), _item(runner, pairs, 1)
    tail = sub(_tail, layout, *tops)
    del active, faces, built, below, pairs, tops
    top = len(layout.factors)

    def vcycle(first, first_faces):
        """The V-cycle from the fine pre-smoothing's results `first` (r, z, faces)."""
        downs, down_faces = [first], [first_faces]
        for level in range(1, top + 1):
            prev, pf = downs[-1], down_faces[-1]
            out, f, _ = step(_down, [(layout, level, blocks[k], states[k], fines[k], prev[k], theirs(pf, k))
                                     for k in range(n)], faces=None if level == top else 2)
            downs.append(out)
            down_faces.append(f)
        x_top = sub(_cycle_tail, layout, tail, *downs[-1])
        ups, up_faces, _ = step(_from_gathered, [(layout, blocks[k], states[k], x_top, downs[top - 1][k])
                                                 for k in range(n)], faces=1)
        for level in range(top - 1, 0, -1):
            ups, up_faces, _ = step(_up, [(layout, level, states[k], downs[level][k], ups[k],
                                           theirs(up_faces, k), downs[level - 1][k]) for k in range(n)],
                                    faces=1)
        return step(_finish, [(states[k], fines[k], first[k], ups[k], theirs(up_faces, k))
                              for k in range(n)], faces=1, stats=2)

    bnorm = gb * math.sqrt(n_first)
    rs, r_faces, _ = step(_start, [(states[k], fines[k]) for k in range(n)], faces=2)
    zs, z_faces, rz = vcycle(rs, r_faces)
    rz = float(total(rz))
    ps, p_faces, beta = [None] * n, [None] * n, 0.0
    s_in = s_out = 0.0
    residual, it = 1.0, 0
    t0 = time.perf_counter()
    while it < maxiter:
        it += 1
        ps, p_faces, sums = step(_direction, [
            (states[k], fines[k], zs[k], ps[k], beta, theirs(z_faces, k),
             theirs(p_faces, k) if ps[k] is not None else {}) for k in range(n)], faces=1, stats=2)
        pap, ins, outs = total(sums)
        alpha = rz / pap
        s_in += alpha * ins
        s_out += alpha * outs
        rs, r_faces, rr = step(_update, [(states[k], rs[k], ps[k], alpha, fines[k]) for k in range(n)],
                               faces=2, stats=3)
        zs, z_faces, rz_parts = vcycle(rs, r_faces)   # submitted before the residual is known
        residual = math.sqrt(float(total(rr))) / bnorm
        _report(it, residual, t0, progress)
        if residual <= rtol:
            break
        rz_new = float(total(rz_parts))
        beta, rz = rz_new / rz, rz_new
    if progress:
        sys.stderr.write("\n")
    return {"solid": n_solid, "active": n_active, "first": n_first, "s_in": s_in, "s_out": s_out,
            "iterations": it, "residual": residual, "blocks": n}


def _report(it, residual, t0, progress):
    logger.info("conductivity (blocks): iteration %d, residual %.2e, %.1f s", it, residual,
                time.perf_counter() - t0)
    if progress:
        sys.stderr.write(f"\rconductivity: iteration {it}, residual {residual:.2e}")
        sys.stderr.flush()


__all__ = ["COARSE_CELLS", "Here", "Layout", "OnCluster", "block_edges", "conductivity_blocks",
           "plan_layout", "solve", "solve_whole", "step_budget"]
