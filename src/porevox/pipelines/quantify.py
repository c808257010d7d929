"""`pv.quantify` / `porevox quantify`: every microstructure feature of the paper, chunked.

One volume's features come from a few passes over its blocks, each a per-block
reduction (:func:`porevox.engine.block_tasks`) merged in this process:

* **local** (halo 1, and the shape index's in y and x): connected components (D,
  porosity, the solid joined to both end faces), Crofton transition counts (SA), the
  voxel Euler characteristic, and the per-slice 2-D descriptors (SP2D, shape index);
* **curvature** (the level-set kernel's halo): area-weighted sums of M and G and their
  joint histogram;
* **struts**: where the volume fits one task, one task; else the exact distance
  transform of the whole volume first (:mod:`porevox.pipelines.distance`, in
  bounded blocks), whose largest radius per chunk gives every block the halo it
  needs before it runs (about twice its largest radius; capped, with a warning and
  the solid left out counted, where a task's memory cannot hold it); φ's
  statistics and fixed-bin histogram merged, never the values themselves;
* **tortuosity**: fast marching from the inlet face per direction, per tomogram on one
  worker where it fits, else block-decomposed (:mod:`porevox.pipelines.tortuosity`).

The passes of every tomogram of a study are computed together, so a study keeps every
worker busy (:func:`quantify_study`). Compute blocks are sub-boxes of the storage
chunks sized so that a kernel's working set fits the workers' chunk budget.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from ..engine import Volume, as_dask, block_tasks, open_volume, provenance
from ..engine import phases as _phases
from ..engine.blockwise import block_slices, compute_box, stored_array, stored_handle, tree_reduce
from ..engine.cluster import (
    active_client,
    compute_dynamic,
    reserving,
    thread_memory_share,
    total_threads,
    worker_memory_limit,
)
from ..engine.placement import WORKER_FRACTION, free_memory, resolve_source
from ..engine.storage import (
    LABELS,
    discard,
    publish_array,
    remove_stale_tmp,
    tmp_array,
    tmp_group,
)
from ..errors import InvalidVolumeError
from ..kernels import components, curvature, descriptors2d, fmm, integral, struts
from ..kernels._boxes import grow, within
from ..kernels.conductivity import check_axis
from . import distance
from . import tortuosity as tortuosity_pipeline
from .engineered import ENGINEERED, beta_feature, bruggeman_alpha
from .score import phase_label, volume_phase

logger = logging.getLogger(__name__)

FEATURES = ("density", "surface", "slices", "curvature", "struts", "tortuosity")
DIRECTIONS = tortuosity_pipeline.SIGNED
#: The paper's "five directions" (its supplement does not name them; see tortuosity).
PAPER_DIRECTIONS = tortuosity_pipeline.PAPER_DIRECTIONS

#: Peak bytes per voxel of a block (with its halo) in each pass — measured with
#: tracemalloc on porous blocks: local 13 (128³), curvature 74 (128³); struts 15 per
#: voxel of the block (the thinning and the components, 240³ of the twin) and 22 per
#: voxel of the box its chords reach (the features read, 12, and the distances and
#: smoothing there, 10; ``struts_rays``) — with a margin; they size the compute blocks.
BYTES_PER_VOXEL = {"local": 20, "curvature": 100, "struts": 18, "struts_rays": 34}


def struts_whole_bytes(shape) -> int:
    """Peak bytes of the struts of a whole volume in one task."""
    return math.prod(shape) * (BYTES_PER_VOXEL["struts"] + BYTES_PER_VOXEL["struts_rays"])


#: Where a volume keeps the feature transform of ``labels/<name>``: ``distance/<name>``.
DISTANCE = "distance"
#: Below this many voxels per worker thread a tomogram's struts run as one task: the
#: distance transform and the halos would cost more than the threads gain.
STRUTS_SPLIT_VOXELS = 2**21


class FeatureWarning(RuntimeWarning):
    """A feature is undefined for this volume (NaN), e.g. no interface or no path."""


@dataclass(frozen=True)
class Options:
    """The quantification's parameters, checked once."""

    axis: int = 1
    directions: tuple[str, ...] = ("+y",)
    order: int = 2
    sigma: float | None = None              # curvature smoothing (physical units)
    shape_index_sigma: float = 1.0          # pixels
    last_fraction: float = 0.25
    tortuosity_method: str = "auto"
    features: tuple[str, ...] = FEATURES
    tortuosity_scratch: str | None = None   # where the block solver keeps blocks (not a result's input)

    def as_dict(self) -> dict:
        return {"axis": "zyx"[self.axis], "directions": list(self.directions), "order": self.order,
                "sigma": self.sigma, "shape_index_sigma": self.shape_index_sigma,
                "last_fraction": self.last_fraction, "tortuosity_method": self.tortuosity_method,
                "features": list(self.features)}


def make_options(*, axis: int | str = 1, directions: Sequence[str] | str | None = None, order: int = 2,
                 sigma: float | None = None, shape_index_sigma: float = 1.0,
                 last_fraction: float = 0.25, tortuosity_method: str = "auto",
                 features: Sequence[str] | None = None,
                 tortuosity_scratch: str | os.PathLike | None = None) -> Options:
    """Check the parameters of :func:`quantify`; raise ValueError naming the fix."""
    axis = check_axis(axis)
    if isinstance(directions, str) and directions.strip().lower() == "all":
        directions = DIRECTIONS
    norm = tortuosity_pipeline.parse_directions(directions, axis)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2 (fast-marching scheme); got {order!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma (curvature smoothing, in the voxel size's unit) must be > 0; got {sigma!r}")
    if not (math.isfinite(shape_index_sigma) and shape_index_sigma > 0):
        raise ValueError(f"shape_index_sigma must be > 0 pixels; got {shape_index_sigma!r}")
    if not 0 < last_fraction <= 1:
        raise ValueError(f"last_fraction must be in (0, 1] (the paper: 0.25); got {last_fraction!r}")
    if tortuosity_method not in ("auto", "whole", "blocks"):
        raise ValueError(f"tortuosity_method must be auto, whole or blocks; got {tortuosity_method!r}")
    features = tuple(FEATURES if features is None else features)
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature group(s) {unknown}; choose from {FEATURES}")
    return Options(axis, norm, int(order), None if sigma is None else float(sigma),
                   float(shape_index_sigma), float(last_fraction), tortuosity_method,
                   tuple(f for f in FEATURES if f in features),
                   None if tortuosity_scratch is None else os.fspath(tortuosity_scratch))


# --------------------------------------------------------------------------- the job
def _local(block, *, core, offset, volume_shape, shape_index_sigma, with_surface, with_slices):
    """The local pass: several kernels on one block read once."""
    kw = {"core": core, "offset": offset, "volume_shape": volume_shape}
    out = {"components": components.block_components(block, **kw)}
    if with_surface:
        out["surface"] = integral.surface_counts(block, **kw)
        out["euler"] = integral.euler_counts(block, **kw)
    if with_slices:
        out["slices"] = descriptors2d.slice_counts(block, sigma=shape_index_sigma, **kw)
    return out


def _combine_local(parts: list[dict]) -> dict:
    """Several blocks' local results as one (what :func:`tree_reduce` merges)."""
    out = {"components": components.combine_components([p["components"] for p in parts])}
    if "surface" in parts[0]:
        out["surface"] = _add_dicts([p["surface"] for p in parts])
        out["euler"] = _add_dicts([p["euler"] for p in parts])
    if "slices" in parts[0]:
        out["slices"] = descriptors2d.merge_slices([p["slices"] for p in parts])
    return out


@dataclass
class Job:
    """One volume's quantification: lazy per-block tasks, then the merge."""

    solid: Any                       # Dask or stored array (a volume's reader), nonzero = solid
    voxel_size: tuple[float, float, float]
    options: Options
    chunks: tuple[int, int, int] | None = None
    name: str = "volume"
    tasks: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    tortuosity_plan: str = "none"
    features: Any = None             # the volume's feature transform, where struts run in blocks
    _publish: Any = None             # the stored transform's publication, once written
    feature_chunks: Any = None       # its chunks (those of the radius grid)
    together: int = 1                # tomograms computed at the same time (run_jobs sets it)
    tortuosity_run: Any = None       # the block tortuosity solve: a future, or a call to make
    explicit_chunks: bool = False    # compute blocks = these chunks (else sized to memory)

    def __post_init__(self):
        self.source = self.solid   # what the blocks read: a stored array itself, where it is one
        self.solid = as_dask(self.solid)
        if not stored_array(self.source):
            self.source = self.solid
        self.shape = tuple(int(s) for s in self.solid.shape)
        self.chunks = tuple(self.chunks or (c[0] for c in self.solid.chunks))
        self.started = time.time()

    # -- lazy tasks ----------------------------------------------------------------
    def build(self) -> None:
        opts, vs = self.options, self.voxel_size
        want = set(opts.features)
        surface, slices = "surface" in want, "slices" in want
        none = (0, 0, 0)
        depth = tuple(max(d) for d in zip(
            components.components_depth(), integral.surface_depth() if surface else none,
            integral.euler_depth() if surface else none,
            descriptors2d.slice_depth(opts.shape_index_sigma) if slices else none))
        self._add("local", _local, depth, _combine_local, shape_index_sigma=opts.shape_index_sigma,
                  with_surface=surface, with_slices=slices)
        if "curvature" in want:
            self.sigma = opts.sigma or curvature.default_sigma(vs)
            self.edges = curvature.curvature_edges(vs, self.sigma)
            self._add("curvature", curvature.interface_curvature,
                      curvature.curvature_depth(vs, self.sigma), curvature.merge_curvature,
                      voxel_size=vs, sigma=self.sigma,
                      edges=self.edges)
        if "struts" in want:
            need = struts_whole_bytes(self.shape)
            fits, room = _fits_one_task(need)
            spare = total_threads() // max(self.together, 1)   # threads this tomogram can use alone
            if not self.explicit_chunks and fits and (spare < 2 or math.prod(self.shape) < spare
                                                       * STRUTS_SPLIT_VOXELS):
                # one task where the volume fits it and the other tomograms keep the
                # threads busy (or the volume is small): no transform pass, no halos
                logger.info("struts of %s: the whole volume in one task (needs ~%.0f MiB; %s)",
                            self.name, need / 2**20, room)
                whole = [tuple(slice(0, n) for n in self.shape)]
                with reserving(need):   # never two of them together where only one fits
                    _, self.tasks["struts"] = block_tasks(
                        struts.strut_diameters, self.source, whole, 0, voxel_size=vs, values=False)
            else:
                logger.info("struts of %s: in blocks, after the volume's distance transform (the whole "
                            "volume in one task needs ~%.0f MiB; %s)", self.name, need / 2**20, room)
                self._plan_features()
        if "tortuosity" in want:
            self._plan_tortuosity()

    def _plan_features(self) -> None:
        """The volume's feature transform: stored in the volume (``distance/<labels>``,
        reused while the labels are unchanged) where the labels are a volume's, else
        kept in the workers' memory; and the largest radius of every chunk."""
        vs = self.voxel_size
        home = _volume_home(self.source)
        chunks = self.feature_chunks = (self.chunks if self.explicit_chunks
                                        else distance.feature_chunks(self.shape))
        if home is None:
            self.features = dask.persist(distance.feature_transform(
                self.solid, voxel_size=vs, chunks=chunks))[0]
            grid = distance.radius_grid(self.features, self.solid, voxel_size=vs)
            self.tasks["struts_radius"] = [dask.delayed(np.asarray, pure=True)(grid)]
            return
        volume, leaf = home
        values = self.source.values if isinstance(self.source, _phases.PhaseView) else None
        key = _phases.key(leaf, values)
        name, stage = f"{DISTANCE}/{key}", f"distance:{key}"
        params = {"kernels": "porevox.kernels.edt", "voxel_size": list(vs),
                  **({"phase": list(values)} if key != leaf else {})}
        inputs = {f"{LABELS}/{leaf}": provenance.fingerprint_array(volume, f"{LABELS}/{leaf}")}
        record = provenance.completed(volume, stage, params, inputs)
        if record is not None:
            logger.info("struts of %s: reading the stored distance transform %s", self.name, name)
            self.features = volume.reader(name)
            self.feature_chunks = tuple(self.features.chunks[1:])
            grid = np.asarray(record["max_radius"], dtype=np.float64)   # JSON holds inf as null
            self.tasks["struts_radius"] = [dask.delayed(np.where(np.isnan(grid), np.inf, grid))]
            return
        remove_stale_tmp(volume, name)
        arr, tmp = tmp_array(volume, name, (3,) + self.shape, "int32", (3,) + chunks)
        # the first two passes' results, beside it (removed once it is published)
        passes = [tmp_array(volume, name, (k,) + self.shape, "int32", (k,) + chunks) for k in (1, 2)]
        grid = distance.stored_feature_transform(self.source, arr, [a for a, _ in passes], voxel_size=vs)
        self.tasks["struts_radius"] = [grid]
        self._publish = (volume, tmp, [t for _, t in passes], name, stage, params, inputs, time.time())

    def _add(self, name, kernel, depth, combine, **kwargs) -> None:
        """Blocks of one pass, their results combined on the workers (a tree)."""
        box = compute_box(self.shape, self.chunks, BYTES_PER_VOXEL[name], depth,
                          grow=not self.explicit_chunks)
        cores = list(block_slices(self.shape, box))
        _, tasks = block_tasks(kernel, self.source, cores, depth, **kwargs)
        self.tasks[name] = [tree_reduce(tasks, cores, combine)]

    def _plan_tortuosity(self) -> None:
        opts = self.options
        method = opts.tortuosity_method
        need = fmm.memory_estimate(self.shape) + 2 * math.prod(self.shape)   # + the input, read
        if method == "auto":
            fits, room = _fits_one_task(need)
            method = "whole" if fits else "blocks"
            logger.info("tortuosity of %s: %s (the whole-volume solve needs ~%.0f MiB; %s)", self.name,
                        "one whole-volume fast-marching solve per direction on a worker" if fits
                        else "block-decomposed fast marching", need / 2**20, room)
        self.tortuosity_plan = method
        if method == "whole":
            run = dask.delayed(_tortuosity_whole, pure=True)
            solid = stored_handle(self.source) if stored_array(self.source) else self.solid
            with reserving(need):   # never two of them together where only one fits
                self.tasks["tortuosity"] = [run(solid, self.voxel_size, d, opts.order, opts.last_fraction)
                                            for d in opts.directions]
        else:
            # the block solver: its scratch beside a volume (or opts.tortuosity_scratch), its
            # blocks sized from the workers' memory unless chunks were given
            solver = functools.partial(
                tortuosity_pipeline.BlockSolver, self.source if stored_array(self.source) else self.solid,
                voxel_size=self.voxel_size, order=opts.order,
                chunks=self.chunks if self.explicit_chunks else None,
                scratch=opts.tortuosity_scratch)
            names = list(opts.directions)
            if active_client() is None:
                self.tortuosity_run = lambda: solver().solve(names, opts.last_fraction)
            else:
                # on a cluster: the scratch checked on every worker now, before any work; then
                # the solve drives its tasks from a thread here, beside the other passes and
                # the other tomograms' solves (_tortuosity waits for it)
                ready = solver()
                pool = ThreadPoolExecutor(1, thread_name_prefix="porevox-tortuosity")
                self.tortuosity_run = pool.submit(ready.solve, names, opts.last_fraction)
                pool.shutdown(wait=False)

    # -- second round ----------------------------------------------------------------
    def advance(self) -> None:
        """Once the largest radius of every chunk is known, the struts blocks, each
        with the halo its own radius asks for."""
        grid = self.results.pop("struts_radius", None)
        if grid is None:
            return
        if self._publish is not None:    # the transform is written: publish it, record it
            volume, tmp, passes, name, stage, params, inputs, started = self._publish
            for other in passes:
                discard(volume.path / other, settle=0)   # the transform is complete: no pass writes
            publish_array(volume, tmp, name)
            provenance.write_record(volume, stage, params, inputs, [name], started,
                                    max_radius=np.asarray(grid[0]).tolist())
            self.features, self._publish = volume.reader(name), None
        blocks = plan_struts(np.asarray(grid[0]), self.shape, self.feature_chunks, self.voxel_size,
                             self.name, slabs=None if self.explicit_chunks
                             else max(total_threads() // max(self.together, 1), 1))
        stored = stored_array(self.features)
        run = dask.delayed(_read_struts_block if stored else _struts_block, pure=True)
        solid = stored_handle(self.source) if stored and stored_array(self.source) else self.solid
        features = stored_handle(self.features) if stored else self.features
        tasks = []
        for core, depth, rays, limit in zip(*blocks):
            outer, reach = grow(core, depth, self.shape), grow(core, rays, self.shape)
            args = (solid, features, outer, reach) if stored else (
                self.solid[outer], self.features[(slice(None),) + reach], within(reach, outer))
            tasks.append(run(*args, within(core, outer), tuple(o.start for o in outer), self.shape,
                             self.voxel_size, limit))
        self.tasks["struts"] = tasks

    # -- the merge -----------------------------------------------------------------
    def finish(self, distributions: bool = False) -> dict:
        opts, vs = self.options, self.voxel_size
        local = self.results["local"]
        comp = components.merge_components([r["components"] for r in local])
        total = math.prod(self.shape)
        density = comp["solid"] / total
        out: dict[str, Any] = {
            "relative_density": density, "porosity": 1.0 - density,
            "percolating_fraction": components.percolating_fraction(comp, opts.axis),
        }
        if "surface" in local[0]:
            surf = _add_dicts([r["surface"] for r in local])
            out["specific_surface_area"] = integral.specific_surface_area(surf, vs)
            out["euler_characteristic"] = int(integral.euler_characteristic(
                _add_dicts([r["euler"] for r in local])))
        dist: dict[str, Any] = {}
        if "slices" in local[0]:
            sl = descriptors2d.slice_descriptors(descriptors2d.merge_slices([r["slices"] for r in local]),
                                                 vs, opts.shape_index_sigma)
            out.update(specific_perimeter_2d=sl["specific_perimeter_2d"],
                       shape_index_mean=sl["shape_index_mean"], shape_index_std=sl["shape_index_std"],
                       shape_index_sigma=sl["shape_index_sigma"])
            dist["slices"] = {k: np.asarray(sl[k], dtype=np.float64) for k in
                              ("z", "relative_density", "specific_perimeter",
                               "shape_index_mean_per_slice", "shape_index_std_per_slice")}
        if "curvature" in self.results:
            cs = curvature.curvature_summary(curvature.merge_curvature(self.results["curvature"]))
            out.update(mean_curvature_mean=cs["mean_curvature_mean"],
                       gaussian_curvature_mean=cs["gaussian_curvature_mean"],
                       mean_curvature_std=cs["mean_curvature_std"],
                       gaussian_curvature_std=cs["gaussian_curvature_std"],
                       interface_area_curvature=cs["interface_area"],
                       integral_gaussian_curvature=cs["integral_gaussian_curvature"],
                       gauss_bonnet_euler=cs["gauss_bonnet_euler"], curvature_sigma=self.sigma)
            dist["gm_hist"] = {"hist": np.asarray(cs["hist"], dtype=np.float64),
                               "g_edges": np.asarray(cs["g_edges"]), "m_edges": np.asarray(cs["m_edges"])}
        if "struts" in self.results:
            parts = self.results["struts"]
            fit = struts.lognormal_fit(stats=struts.merge_log_stats([r["stats"] for r in parts]))
            solid = sum(r["solid_voxels"] for r in parts)
            left = sum(r["unmeasured_solid"] for r in parts)
            out.update(strut_diameter_mean=fit["mean"], strut_diameter_ci95=list(fit["ci95"]),
                       strut_diameter_median=fit["median"], strut_diameter_sigma_log=fit["sigma"],
                       strut_skeleton_voxels=int(fit["n"]),
                       strut_guarded_components=int(sum(r["guarded"] for r in parts)),
                       strut_unmeasured_solid_fraction=left / solid if solid else 0.0)
            if left:
                warnings.warn(f"{self.name}: {100 * left / solid:.3g} % of the solid lies deeper than one "
                              "task's memory can give a strut block the halo for; φ is measured on the "
                              "rest (strut_unmeasured_solid_fraction); give the workers more memory to "
                              "measure it all", FeatureWarning, stacklevel=2)
            dist["strut_hist"] = {"counts": np.sum([r["hist"] for r in parts], axis=0).astype(np.float64),
                                  "edges": struts.diameter_edges(vs)}
        if "tortuosity" in opts.features:
            tort = self._tortuosity()
            by = {d: t["tortuosity"] for d, t in tort.items()}
            main = "+" + "zyx"[opts.axis]
            out.update(tortuosity=by[main], tortuosity_by_axis=by,
                       tortuosity_reachable_fraction=tort[main]["reachable_fraction"],
                       tortuosity_method=self.tortuosity_plan)
            dist["tortuosity_profile"] = np.asarray(tort[main]["profile"], dtype=np.float64)
        out.update(_engineered(out, opts.features))
        _warn_undefined(out, self.name)
        out.update(shape=list(self.shape), voxel_size=list(vs), **opts.as_dict(),
                   seconds=round(time.time() - self.started, 3))
        if distributions:
            out["distributions"] = dist
        return out

    def _tortuosity(self) -> dict:
        opts = self.options
        if self.tortuosity_plan == "whole":
            return dict(zip(opts.directions, self.results["tortuosity"]))
        run = self.tortuosity_run
        results = run.result() if hasattr(run, "result") else run()
        main = "+" + "zyx"[opts.axis]
        return {d: {"tortuosity": r["tau"], "reachable_fraction": r["reachable_fraction"],
                    "profile": list(r["profile"]) if d == main else []}
                for d, r in results.items()}


def _tortuosity_whole(solid, voxel_size, direction: str, order: int, last_fraction: float) -> dict:
    """One direction's geodesic tortuosity by one fast-marching solve (a Dask task);
    a NaN τ is reported by the merge, in the caller."""
    if stored_array(solid):
        solid = solid[tuple(slice(0, n) for n in solid.shape)]
    r = tortuosity_pipeline.direction_tortuosity(np.asarray(solid), direction=direction,
                                                 voxel_size=voxel_size, order=order,
                                                 last_fraction=last_fraction)
    return {"tortuosity": float(r["tau"]), "reachable_fraction": float(r["reachable_fraction"]),
            "profile": [float(v) for v in r["profile"]]}


def task_budget() -> float:
    """Bytes one task may hold: a worker thread's share of its memory
    (:func:`~porevox.engine.cluster.thread_memory_share`; without a cluster, a core's
    share of WORKER_FRACTION of the free memory)."""
    share = thread_memory_share()
    if share is not None:
        return max(share, 2**24)
    return WORKER_FRACTION * free_memory() / (os.cpu_count() or 1)


def _volume_home(source):
    """(volume, labels name) where `source` is a volume's label image on a local
    store (its full-resolution level, in either layout), else None."""
    from ..engine.storage import label_home

    home = label_home(source)
    return None if home is None else (open_volume(home[0].path), home[1])


def _fits_one_task(need: int) -> tuple[bool, str]:
    """Whether a whole-volume task needing `need` bytes fits a worker (at most
    WORKER_FRACTION of its memory limit; without a cluster, of the free memory), and
    what there is, for the log."""
    limit = worker_memory_limit()
    if limit:
        return need <= WORKER_FRACTION * limit, f"workers have {limit / 2**20:.0f} MiB"
    free = free_memory()
    return need <= WORKER_FRACTION * free, f"{free / 2**20:.0f} MiB free here"


def _add_dicts(parts: list[dict]) -> dict:
    """Element-wise sum of per-block count dicts."""
    total: dict = {}
    for p in parts:
        for k, v in p.items():
            total[k] = total[k] + np.asarray(v) if k in total else np.asarray(v).copy()
    return total


def _engineered(f: dict, features: Sequence[str]) -> dict:
    """α and β, where their features were computed."""
    nan = float("nan")
    out = {}
    if "tortuosity" in features:
        out["bruggeman_alpha"] = bruggeman_alpha(f.get("relative_density", nan), f.get("tortuosity", nan))
    if "curvature" in features and "struts" in features:
        out["beta"] = beta_feature(*(f.get(k, nan) for k in ENGINEERED["beta"][1]))
    return out


def _warn_undefined(f: dict, name: str) -> None:
    undefined = [k for k, v in f.items() if isinstance(v, float) and math.isnan(v)]
    if undefined:
        why = ("no solid" if f["relative_density"] == 0 else "no pore" if f["relative_density"] == 1
               else "no solid path joins the end faces" if "tortuosity" in undefined else "")
        warnings.warn(f"{name}: undefined (NaN){' — ' + why if why else ''}: {', '.join(undefined)}",
                      FeatureWarning, stacklevel=3)


def run_jobs(jobs: list[Job], distributions: bool = False) -> list[dict]:
    """Compute every job's passes together (all tomograms' blocks in one go); a job's
    struts blocks start as soon as its distance transform gave their halos, while the
    other passes run on; then merge."""
    for job in jobs:
        job.together = len(jobs)
        job.build()

    def start(k: int) -> dict:
        job = jobs[k]
        tasks, job.tasks = job.tasks, {}
        for name, items in tasks.items():
            job.results[name] = [None] * len(items)
        return {(k, name): items for name, items in tasks.items()}

    def follow(tag, i, value):
        k, name = tag
        jobs[k].results[name][i] = value
        if name == "struts_radius":
            jobs[k].advance()
            return start(k)
        return None

    groups: dict = {}
    for k in range(len(jobs)):
        groups.update(start(k))
    compute_dynamic(groups, follow)
    for job in jobs:
        job.features = None      # the persisted transform: release it on the workers
    return [job.finish(distributions) for job in jobs]


def _read_struts_block(solid, features, outer, reach, core, offset, volume_shape, voxel_size,
                       limit) -> dict:
    """One struts block read by the task itself from the stored labels and features
    (the features only where the core's chords reach)."""
    return _struts_block(solid[outer], features[(slice(None),) + reach], within(reach, outer), core,
                         offset, volume_shape, voxel_size, limit)


def _struts_block(solid, features, features_box, core, offset, volume_shape, voxel_size, limit) -> dict:
    """One struts block with its halo and the volume's features around its core (a
    Dask task)."""
    return struts.strut_diameters(np.asarray(solid), voxel_size=voxel_size, core=core, offset=offset,
                                  volume_shape=volume_shape, features=np.asarray(features),
                                  features_box=features_box, limit=limit, values=False)


def plan_struts(grid: np.ndarray, shape, chunks, voxel_size, name: str = "volume", slabs: int | None = None):
    """Cores, halos, feature reaches and radius limits of the struts blocks, from the
    largest radius of every chunk (`grid`): each core gets
    :func:`~porevox.kernels.struts.strut_depth` (the thinning's halo) and
    :func:`~porevox.kernels.struts.ray_depth` (where the features are read) of the
    largest radius of the chunks it covers; where they would not fit one task's
    budget, those of the largest radius that fits, and that radius as the block's
    limit (the solid beyond it is counted, not measured).

    The cores are slabs across the longest axis, `slabs` of them or up to four times
    as many, where they fit (halos on two faces only: the least repeated work for a
    few blocks), else boxes sized by
    :func:`~porevox.engine.blockwise.compute_box` (the given `chunks` where `slabs` is
    None)."""
    vs = tuple(float(v) for v in voxel_size)
    budget = task_budget()
    finite = grid[np.isfinite(grid) & (grid > 0)]
    typical = float(np.percentile(finite, 90)) if finite.size else 0.0

    def need(core, r):
        def voxels(depth):
            return math.prod(min(n, c.stop - c.start + 2 * d) for c, d, n in zip(core, depth, shape))
        return (voxels(struts.strut_depth(vs, r)) * BYTES_PER_VOXEL["struts"]
                + voxels(struts.ray_depth(vs, r)) * BYTES_PER_VOXEL["struts_rays"])

    box = None
    axis = int(np.argmax(shape))
    for count in (slabs * m for m in range(1, 5)) if slabs else ():   # a few slabs per thread at most
        slab = tuple(-(-n // count) if a == axis else n for a, n in enumerate(shape))
        whole = tuple(slice(0, min(n, b)) for n, b in zip(shape, slab))
        if need(whole, typical) <= budget:
            box = slab
            break
    if box is None:
        box = compute_box(shape, chunks, 0, struts.strut_depth(vs, typical), grow=slabs is not None,
                          need=lambda b: need(tuple(slice(0, x) for x in b), typical))
    cores, depths, rays, limits = [], [], [], []

    for core in block_slices(shape, box):
        cover = tuple(slice(c.start // k, -(-c.stop // k)) for c, k in zip(core, chunks))
        r = float(grid[cover].max())
        limit = math.inf
        if not math.isfinite(r) or need(core, r) > budget:
            lo, hi = 0.0, r if math.isfinite(r) else float(max(n * v for n, v in zip(shape, vs)))
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if need(core, mid) <= budget else (lo, mid)
            r = limit = lo
        cores.append(core)
        depths.append(struts.strut_depth(vs, r))
        rays.append(struts.ray_depth(vs, r))
        limits.append(limit)
    capped = sum(math.isfinite(x) for x in limits)
    logger.info("struts of %s: %d blocks of %s, halos up to %s voxels%s", name, len(cores), box,
                tuple(int(d) for d in np.max(depths, axis=0)) if depths else (0, 0, 0),
                f"; {capped} capped by the task memory" if capped else "")
    return cores, depths, rays, limits


# --------------------------------------------------------------------------- public API
def quantify(solid, *, voxel_size=None, axis=1, labels="truth", directions=None, order=2, sigma=None,
             shape_index_sigma=1.0, last_fraction=0.25, tortuosity_method="auto", features=None,
             chunks=None, distributions=False, scratch=None, phase=None) -> dict:
    """Every microstructure feature of the paper, from a segmentation.

    Parameters
    ----------
    solid : array or volume path
        A NumPy, Dask or Zarr array (nonzero = solid), or a porevox volume whose
        ``labels/<labels>`` is read.
    voxel_size : 3 floats, optional
        Size along (z, y, x); default the volume's own, or unit voxels for arrays.
    axis : int or {"z", "y", "x"}
        The transport axis of ``tortuosity`` and ``percolating_fraction`` (default y).
    directions : sequence of {"+z", "-z", "+y", "-y", "+x", "-x"}, "paper" or "all"
        More directions for ``tortuosity_by_axis`` ("paper": the paper's five).
    order : {1, 2}
        Fast-marching scheme.
    sigma : float, optional
        Curvature smoothing in the voxel size's unit (default: the kernel's).
    shape_index_sigma : float
        Gaussian scale of the 2-D shape index, in pixels (scikit-image's default 1).
    last_fraction : float
        Part of the length at the outlet end over which τ is averaged (the paper: 0.25).
    tortuosity_method : {"auto", "whole", "blocks"}
        Whole-volume fast marching or the block-decomposed solver ("auto": by memory).
    scratch : path, optional
        Where the block solver keeps its blocks: a folder every worker sees (default:
        beside a volume in its store; for arrays, the workers' memory).
    features : sequence of str, optional
        Feature groups to compute (default all): density, surface, slices,
        curvature, struts, tortuosity.
    chunks : 3 ints, optional
        Compute chunks (default the array's own).
    distributions : bool
        Also return ``distributions``: φ values, the (G, M) histogram, the per-slice
        descriptors and the tortuosity profile.
    phase : int or str, optional
        The phase measured ("the solid" of every feature): a value, values joined by
        "+", or a phase name of a volume's label image (default: nonzero).

    Returns
    -------
    dict
        The keys of DESIGN.md (``relative_density``, ``porosity``,
        ``specific_surface_area``, ``strut_diameter_mean``, ``strut_diameter_ci95``,
        ``tortuosity``, ``tortuosity_by_axis``, ``mean_curvature_mean``,
        ``gaussian_curvature_mean``, ``bruggeman_alpha``, ``beta``,
        ``specific_perimeter_2d``, ``shape_index_mean``) and more: ``percolating_fraction``,
        ``euler_characteristic``, ``gauss_bonnet_euler`` (∫G dA / 4π, to compare with
        it), spreads, counts, the parameters, ``seconds``. NaN (with a
        :class:`FeatureWarning`) where a feature is undefined.
    """
    options = make_options(axis=axis, directions=directions, order=order, sigma=sigma,
                           shape_index_sigma=shape_index_sigma, last_fraction=last_fraction,
                           tortuosity_method=tortuosity_method, features=features,
                           tortuosity_scratch=scratch)
    source, voxel_size = resolve_source(solid, voxel_size, labels, phase=phase, what="quantify",
                                        log=logger)
    name = str(open_volume(solid).path) if isinstance(solid, (str, os.PathLike, Volume)) else "array"
    if chunks is not None or not stored_array(source):
        in_memory = isinstance(source, np.ndarray)
        source = as_dask(source, chunks=chunks)
        client = active_client()
        if in_memory and client is not None:
            # sent to the workers once: else every graph of the passes carries the array
            source = client.persist(source)
    job = Job(source, voxel_size, options, name=name, explicit_chunks=chunks is not None)
    return run_jobs([job], distributions)[0]


# --------------------------------------------------------------------------- volumes
def stage_name(key: str) -> str:
    return f"quantify:{key}"


def _stage_params(options: Options, values: tuple[int, ...] | None = None) -> dict:
    params = {"kernels": "porevox.pipelines.quantify", **options.as_dict()}
    if values is not None and tuple(values) != _phases.DEFAULT:
        params["phase"] = list(values)
    return params


@dataclass
class Prepared:
    """One (volume, labels, phase) to quantify: its :class:`Job`, or the features
    stored by an earlier run with the same inputs (`record`)."""

    path: Any
    labels: str
    values: tuple[int, ...] | None     # the phase's values; None: nonzero of a binary image
    key: str                           # where the volume keeps its results (_phases.key)
    phase: str                         # the phase as the table shows it
    job: Job | None = None
    record: dict | None = None


def prepare_volume(path, labels: str, options: Options, force: bool = False, phase=None) -> Prepared:
    """What quantifying `phase` of ``labels/<labels>`` of a volume takes: a
    :class:`Job`, or nothing where the stage is done with the same inputs."""
    volume = open_volume(path, mode="r")
    if labels not in volume.labels:
        raise InvalidVolumeError(
            f"{volume.path} has no label image {labels!r}; it has {volume.labels or 'none'}: "
            "pass --labels <one of them> or segment the volume first")
    arr = volume.array(f"{LABELS}/{labels}")
    values = None if phase is None else _phases.parse(phase, _phases.names(arr),
                                                      where=f"{volume.path}: labels/{labels}")
    key = _phases.key(labels, values)
    prepared = Prepared(path, labels, values, key, phase_label(volume, labels, values))
    inputs = {f"{LABELS}/{labels}": provenance.fingerprint_array(volume, f"{LABELS}/{labels}")}
    if not force and provenance.completed(volume, stage_name(key), _stage_params(options, values), inputs):
        logger.info("%s: features of labels/%s (phase %s) already computed with the same inputs; "
                    "nothing to do", volume.path, labels, prepared.phase)
        prepared.record = volume.meta.get("features", {}).get(key)
        return prepared
    prepared.values = values = volume_phase(volume, labels, phase, "quantify")
    prepared.job = Job(_phases.phase_of(volume.reader(f"{LABELS}/{labels}"), values), volume.voxel_size,
                       options, name=f"{volume.path.name}:{key}")
    return prepared


def save_volume_features(prepared: Prepared, options: Options, features: dict, started: float) -> dict:
    """Store the features in the volume's attributes and the distributions as arrays
    under ``features/<key>`` (published atomically), then record the stage."""
    volume = open_volume(prepared.path)
    key, labels = prepared.key, prepared.labels
    features = dict(features)
    dist = features.pop("distributions", {})
    name = f"features/{key}"
    remove_stale_tmp(volume, name)
    group, tmp = tmp_group(volume, name)
    try:
        for k, value in _flat_arrays(dist).items():
            group.create_array(k, data=np.asarray(value, dtype=np.float64))
        publish_array(volume, tmp, name)
    except BaseException:
        discard(volume.path / tmp)
        raise
    record = provenance.jsonable(features)
    volume.edit_meta(lambda meta: meta.setdefault("features", {}).update({key: record}))
    inputs = {f"{LABELS}/{labels}": provenance.fingerprint_array(volume, f"{LABELS}/{labels}")}
    provenance.write_record(volume, stage_name(key), _stage_params(options, prepared.values), inputs,
                            [name], started)
    return record


def _flat_arrays(dist: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in dist.items():
        if isinstance(v, dict):
            out.update(_flat_arrays(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_distributions(path, key: str) -> dict:
    """The stored distributions of a quantified volume (``features/<key>``, see
    :class:`Prepared`), as NumPy arrays."""
    volume = open_volume(path, mode="r")
    group = volume.group[f"features/{key}"]
    return {k: group[k][...] for k in group.array_keys()}


def quantify_phases(path: str | os.PathLike, *, labels: str = "truth", phases: Sequence | None = None,
                    axis: int | str = "y", with_conductivity: bool = False, force: bool = False,
                    **options) -> list[dict]:
    """Features of each phase in `phases` (default: the solid, 1) of ``labels/<labels>``
    of the volume at `path`, computed together; each stored in the volume's attributes
    (``porevox.features.<key>``) with its distributions under ``features/<key>``. A
    rerun with the same inputs and parameters reads them back."""
    from .transport import conductivity

    opts = make_options(axis=axis, **options)
    started = time.time()
    todo = [prepare_volume(path, labels, opts, force, phase) for phase in (phases or [None])]
    jobs = [p for p in todo if p.job is not None]
    for p, features in zip(jobs, run_jobs([p.job for p in jobs], True) if jobs else []):
        p.record = save_volume_features(p, opts, features, started)
    results = []
    for p in todo:
        result = {"volume": str(path), "labels": labels, "phase": p.phase,
                  "phase_values": list(p.values or _phases.DEFAULT), **p.record}
        if with_conductivity:
            result.update(conductivity(path, labels=labels, axis=opts.axis, phase=p.values))
        results.append(result)
    return results


def quantify_volume(path: str | os.PathLike, *, labels: str = "truth", phase=None, axis: int | str = "y",
                    with_conductivity: bool = False, force: bool = False, **options) -> dict:
    """Features of `phase` (default: the solid, 1) of ``labels/<labels>`` of the volume
    at `path` (see :func:`quantify_phases`)."""
    return quantify_phases(path, labels=labels, phases=[phase], axis=axis,
                           with_conductivity=with_conductivity, force=force, **options)[0]


__all__ = ["DIRECTIONS", "FEATURES", "FeatureWarning", "Job", "Options", "PAPER_DIRECTIONS", "Prepared",
           "load_distributions", "make_options", "quantify", "quantify_phases", "quantify_volume",
           "run_jobs"]
