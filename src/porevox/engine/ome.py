"""OME-Zarr 0.5 for porevox volumes: the metadata, and the multiscale pyramids.

A volume is an OME-Zarr 0.5 image whose label images are OME-Zarr label images::

    sample.zarr/              "ome": multiscales over image, levels/1, levels/2, ...
      image                   level 0 (full resolution) of the gray image
      levels/<k>              level k of the gray image
      labels/                 "ome": {"version", "labels": [the published label images]}
        <name>/               "ome": multiscales over 0, 1, ... and "image-label"
          0                   level 0 of the label image (``Volume.array("labels/<name>")``)
          <k>                 level k

Level k+1 halves level k on the axes whose voxels are finest: an axis is halved when
its voxel is less than √2 × the finest voxel of level k (all three axes for near-cubic
voxels such as FIB-SEM's 25 × 18.6 × 18.6 nm; only y and x for a z three times coarser,
until the levels' voxels become near-cubic). A level's side is its predecessor's side
// 2 (a trailing odd voxel is left out), and levels stop at the first that fits one
storage chunk, or before one whose side would be < 1. Gray levels are the mean of each
2 × 2 × 2 block (rounded half up for integer images), label levels its mode (the most
frequent value; ties to the smaller value). Every level has the chunk shape of level 0
and is written blockwise on the cluster, one task per chunk of the level, each task
reading its block of the level before piece by piece (about one chunk at a time).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from ..kernels.pyramid import mean_pool, mode_pool
from .location import listing, remove, url
from .storage import (
    AXES,
    LABELS,
    LEVEL0,
    TMP_PREFIX,
    Volume,
    _meta_lock,
    dense_array,
    fill_missing,
    publish_array,
    remove_stale_tmp,
    tmp_array,
    write_chunks,
)

logger = logging.getLogger(__name__)

VERSION = "0.5"
#: Where the gray image's lower levels live: ``levels/1``, ``levels/2``, ...
LEVELS = "levels"
#: An axis is halved at a level when its voxel is below this × the finest voxel.
ANISOTROPY = math.sqrt(2)
#: RGBA of label values 1-10 (1: copper); 0 (pore, background) is transparent.
PALETTE = ((184, 115, 51), (31, 119, 180), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (255, 127, 14), (23, 190, 207), (227, 119, 194), (188, 189, 34), (140, 86, 75))


# --------------------------------------------------------------------------- metadata (pure)
def multiscale(name: str, paths: Sequence[str], voxel_size: Sequence[float], unit: str,
               factors: Sequence[Sequence[int]]) -> dict:
    """One OME-Zarr 0.5 ``multiscales`` entry: axes z, y, x in `unit`, and per level
    (`paths`, level 0 first) a scale of `voxel_size` × its factors (level 0's are 1)."""
    return {
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": unit} for a in AXES],
        "datasets": [
            {"path": path,
             "coordinateTransformations": [
                 {"type": "scale", "scale": [float(v) * f for v, f in zip(voxel_size, fac)]}]}
            for path, fac in zip(paths, factors)],
    }


def cumulative(steps: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Each level's factors against level 0, level 0 first, from the steps between levels."""
    out = [(1, 1, 1)]
    for step in steps:
        out.append(tuple(a * b for a, b in zip(out[-1], step)))
    return out


def image_ome(name: str, voxel_size: Sequence[float], unit: str,
              steps: Sequence[Sequence[int]] = ()) -> dict:
    """The root group's ``ome`` block: the image (``image``) and its `steps` levels."""
    paths = ["image"] + [f"{LEVELS}/{k}" for k in range(1, len(steps) + 1)]
    return {"version": VERSION,
            "multiscales": [multiscale(name, paths, voxel_size, unit, cumulative(steps))]}


def labels_ome(names: Sequence[str]) -> dict:
    """The ``labels`` group's ``ome`` block: the label images it holds."""
    return {"version": VERSION, "labels": sorted(names)}


def label_colors(values: Sequence[int]) -> list[dict]:
    """A distinct RGBA per label value: 0 transparent, 1-10 from :data:`PALETTE`,
    others spread over the colour cube (a bijective hash of the value)."""
    used, out = set(), []
    for v in sorted(int(v) for v in values):
        if v == 0:
            out.append({"label-value": 0, "rgba": [0, 0, 0, 0]})
            continue
        for salt in itertools.count():
            if salt == 0 and v <= len(PALETTE):
                rgb = PALETTE[v - 1]
            else:
                h = ((v + (salt << 16)) * 2654435761) & 0xFFFFFF
                rgb = (h >> 16, (h >> 8) & 255, h & 255)
            if rgb not in used:
                break
        used.add(rgb)
        out.append({"label-value": v, "rgba": [*rgb, 255]})
    return out


def label_properties(counts: Mapping[int, int], names: Mapping[int, str] | None = None) -> list[dict]:
    """Per value present: its ``label-value``, ``voxels`` and, where named, ``name``."""
    names = names or {}
    return [{"label-value": int(v), **({"name": names[v]} if v in names else {}), "voxels": int(n)}
            for v, n in sorted(counts.items())]


def label_ome(name: str, voxel_size: Sequence[float], unit: str, steps: Sequence[Sequence[int]],
              counts: Mapping[int, int], names: Mapping[int, str] | None = None,
              with_image: bool = True) -> dict:
    """A label image group's ``ome`` block: its levels (``0``, ``1``, ...) and its
    ``image-label`` (source: the volume's image, where it has one; a colour and
    properties per value)."""
    paths = [str(k) for k in range(len(steps) + 1)]
    source = {"source": {"image": "../../"}} if with_image else {}
    return {
        "version": VERSION,
        "multiscales": [multiscale(name, paths, voxel_size, unit, cumulative(steps))],
        "image-label": {"version": VERSION, **source,
                        "colors": label_colors(list(counts)),
                        "properties": label_properties(counts, names)},
    }


def plan_levels(shape: Sequence[int], chunks: Sequence[int],
                voxel_size: Sequence[float]) -> list[tuple[int, int, int]]:
    """The factors (z, y, x) from each level to the next, level 1 first: none when
    level 0 fits one chunk (see the module docstring for the rule)."""
    shape, size, steps = list(shape), [float(v) for v in voxel_size], []
    while any(n > c for n, c in zip(shape, chunks)):
        finest = min(size)
        step = tuple(2 if s < ANISOTROPY * finest else 1 for s in size)
        if any(n // f < 1 for n, f in zip(shape, step)):
            break
        shape = [n // f for n, f in zip(shape, step)]
        size = [s * f for s, f in zip(size, step)]
        steps.append(step)
    return steps


def _bincount(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) of the values present in an integer block."""
    counts = np.bincount(block.ravel())
    values = np.flatnonzero(counts)
    return values, counts[values]


# --------------------------------------------------------------------------- tasks
def _boxes(shape: Sequence[int], step: Sequence[int]):
    ranges = [range(0, n, c) for n, c in zip(shape, step)]
    for corner in itertools.product(*ranges):
        yield tuple(slice(o, min(o + c, n)) for o, c, n in zip(corner, step, shape))


def _pool_chunk(src: zarr.Array, dst: zarr.Array, core: tuple[slice, ...], factors: tuple[int, ...],
                labels: bool, fill: float | None, count: bool):
    """Write chunk `core` of level `dst` from level `src`, reading its block of `src`
    piece by piece (about one chunk of `src` each). Where `count`, also return the
    (values, counts) of every `src` voxel this chunk stands for: the last chunk along
    an axis counts the trailing voxel the level leaves out, so the chunks of a level
    count every voxel of `src` once."""
    pool = mode_pool if labels else mean_pool
    out = np.empty(tuple(s.stop - s.start for s in core), dst.dtype)
    step = tuple(max(1, c // f) for c, f in zip(src.chunks, factors))
    total: dict[int, int] = {}
    for part in _boxes(out.shape, step):
        lo = [(c.start + p.start) * f for c, p, f in zip(core, part, factors)]
        hi = [(c.start + p.stop) * f for c, p, f in zip(core, part, factors)]
        edge = [n if count and c.start + p.stop == m else h
                for n, m, c, p, h in zip(src.shape, dst.shape, core, part, hi)]
        block = np.asarray(src[tuple(slice(a, b) for a, b in zip(lo, edge))])
        if count:
            for v, n in zip(*_bincount(block)):
                total[int(v)] = total.get(int(v), 0) + int(n)
        block = block[tuple(slice(0, b - a) for a, b in zip(lo, hi))]
        if fill is not None:
            block = fill_missing(block, fill)
        out[part] = pool(block, factors)
    dst[core] = out
    return total if count else None


def _count_chunk(src: zarr.Array, core: tuple[slice, ...]) -> dict[int, int]:
    values, counts = _bincount(np.asarray(src[core]))
    return {int(v): int(n) for v, n in zip(values, counts)}


@dataclass
class Pyramid:
    """The lower levels of one array to write: from `base` (level 0), by `steps`, at
    `paths`; `labels` pools by the mode (and counts level 0's values), else by the
    mean; `publish` writes each level under a temporary name and publishes it (else
    in place, inside a group that is itself published when complete)."""

    volume: Volume
    base: zarr.Array
    paths: list[str]
    steps: list[tuple[int, int, int]]
    labels: bool = False
    fill: float | None = None
    publish: bool = False


def build(pyramids: Sequence[Pyramid]) -> list[dict[int, int] | None]:
    """Write the levels of `pyramids` on the cluster, level by level, all arrays'
    chunks of a level in one computation (each task writes one chunk). Returns, per
    pyramid of labels, the voxel count of each value of level 0 (else None)."""
    import dask

    from .blockwise import block_slices
    from .cluster import compute

    counts: list[dict[int, int] | None] = [{} if p.labels else None for p in pyramids]
    sources = [p.base for p in pyramids]
    for level in range(max([len(p.steps) for p in pyramids] + [0]) + 1):
        tasks, owners, made = [], [], []
        run, tally = dask.delayed(_pool_chunk, pure=True), dask.delayed(_count_chunk, pure=True)
        for i, p in enumerate(pyramids):
            src = sources[i]
            if level < len(p.steps):
                factors = p.steps[level]
                shape = tuple(n // f for n, f in zip(src.shape, factors))
                chunks = tuple(min(c, n) for c, n in zip(write_chunks(p.base), shape))
                path = p.paths[level]
                if p.publish:
                    remove_stale_tmp(p.volume, path)
                    dst, tmp = tmp_array(p.volume, path, shape, src.dtype, chunks)
                else:
                    dst, tmp = dense_array(p.volume.group, path, shape=shape, dtype=src.dtype,
                                           chunks=chunks, inner=p.volume.read_chunks), None
                made.append((i, path, tmp))
                count = p.labels and level == 0
                src_d, dst_d = dask.delayed(src), dask.delayed(dst)
                for core in block_slices(shape, chunks):
                    tasks.append(run(src_d, dst_d, core, factors, p.labels,
                                     p.fill if level == 0 else None, count))
                    owners.append(i if count else None)
            elif level == 0 and p.labels:       # no lower level: count level 0 alone
                src_d = dask.delayed(src)
                for core in block_slices(src.shape, write_chunks(src)):
                    tasks.append(tally(src_d, core))
                    owners.append(i)
        if not tasks:
            break
        for i, part in zip(owners, compute(*tasks)):
            if i is not None:
                for v, n in part.items():
                    counts[i][v] = counts[i].get(v, 0) + n
        for i, path, tmp in made:
            p = pyramids[i]
            if tmp is not None:
                publish_array(p.volume, tmp, path)
            sources[i] = p.volume.group[path]
    return counts


# --------------------------------------------------------------------------- the image
def write_image_pyramid(volume: Volume, fill: float | None = None) -> list[str]:
    """Write the gray image's lower levels (``levels/<k>``, each published when
    complete) and list them in the root's ``multiscales``; `fill` replaces NaN and
    ±inf (the image's missing voxels). Returns the levels' paths."""
    started = time.time()
    image = volume.group["image"]
    steps = plan_levels(image.shape, image.chunks, volume.voxel_size)
    paths = [f"{LEVELS}/{k}" for k in range(1, len(steps) + 1)]
    if steps:
        build([Pyramid(volume, image, paths, steps, fill=fill, publish=True)])
    folder = volume.path / LEVELS
    for old in listing(folder):   # levels of an earlier image
        if old != "zarr.json" and f"{LEVELS}/{old}" not in paths:
            remove(folder / old)
    with _meta_lock(volume.path):
        group = zarr.open_group(url(volume.path), mode="r+")
        current = group.attrs.get("ome") or {}
        name = (current.get("multiscales") or [{}])[0].get("name") or volume.path.name.removesuffix(".zarr")
        group.attrs["ome"] = {**current, **image_ome(name, volume.voxel_size, volume.unit, steps)}
        volume.group = group
    if steps:
        logger.info("%s: image pyramid of %d levels (%s) in %.2f s", volume.path.name, len(steps),
                    ", ".join(str(volume.group[p].shape) for p in paths), time.time() - started)
    return paths


# --------------------------------------------------------------------------- label images
def is_label_group(path) -> bool:
    """Whether the folder `path` holds a label image in OME-Zarr layout (a group)."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("node_type") == "group" and "multiscales" in meta.get("attributes", {}).get("ome", {})


def finish_labels(volume: Volume, groups: Mapping[str, str]) -> None:
    """Complete label image groups whose level 0 (``<group>/0``) is written: their
    lower levels and their ``ome`` block. `groups` maps each group's path in the
    volume to the label image's name. The groups are published afterwards (or lie in
    a volume being built)."""
    from .phases import PHASES, names

    started = time.time()
    jobs, infos = [], []
    for path, name in groups.items():
        base = volume.group[f"{path}/{LEVEL0}"]
        steps = plan_levels(base.shape, base.chunks, volume.voxel_size)
        jobs.append(Pyramid(volume, base, [f"{path}/{k}" for k in range(1, len(steps) + 1)], steps,
                            labels=True))
        infos.append((path, name, steps, base))
    for (path, name, steps, base), counts in zip(infos, build(jobs)):
        named = names(base) if base.attrs.get(PHASES) else None
        volume.group[path].attrs["ome"] = label_ome(name, volume.voxel_size, volume.unit, steps, counts,
                                                    named, with_image=volume.has_image)
        logger.info("%s: labels/%s with %d lower levels, values %s (%.2f s)", volume.path.name, name,
                    len(steps), sorted(counts), time.time() - started)


def label_array(volume: Volume, name: str, *, shape, dtype, chunks) -> zarr.Array:
    """Level 0 of a new label image ``labels/<name>`` written in place: only for a
    volume being built under a temporary name (:func:`~porevox.engine.storage.building`),
    completed by :func:`complete_volume`."""
    group = volume.group.create_group(f"{LABELS}/{name}")
    return dense_array(group, LEVEL0, shape=shape, dtype=dtype, chunks=chunks, inner=volume.read_chunks)


def complete_volume(volume: Volume, fill: float | None = None) -> None:
    """Write the image's pyramid and complete the label images of :func:`label_array`
    in a volume being built (see :func:`write_image_pyramid`, :func:`finish_labels`)."""
    write_image_pyramid(volume, fill)
    folder = volume.path / LABELS
    todo = {f"{LABELS}/{n}": n for n in listing(folder)
            if not n.startswith(TMP_PREFIX) and not is_label_group(folder / n)
            and (folder / n / LEVEL0 / "zarr.json").is_file()}
    if todo:
        finish_labels(volume, todo)
    sync_labels(volume)


def sync_labels(volume: Volume, publishing: Mapping[str, bool] | None = None) -> list[str]:
    """Write the ``labels`` group's list of label images: those published in
    OME-Zarr layout (not temporary ones, nor an older porevox's plain arrays), with
    `publishing` ({name: whether it is an OME-Zarr label image}) about to be."""
    folder = volume.path / LABELS
    publishing = dict(publishing or {})
    with _meta_lock(folder):
        names = {n for n in listing(folder) if not n.startswith(TMP_PREFIX)
                 and n not in publishing and is_label_group(folder / n)}
        names |= {n for n, ome_layout in publishing.items() if ome_layout}
        group = zarr.open_group(url(folder), mode="r+")
        if group.attrs.get("ome") != labels_ome(names):
            group.attrs["ome"] = labels_ome(names)
    return sorted(names)


def label_counts(volume: Volume, name: str) -> dict[int, int] | None:
    """The voxels of each value of ``labels/<name>`` as its ``image-label`` records
    them (counted when it was written); None for a plain array of an older porevox."""
    try:
        props = volume.group[f"{LABELS}/{name}"].attrs["ome"]["image-label"]["properties"]
        return {int(p["label-value"]): int(p["voxels"]) for p in props}
    except (KeyError, TypeError):
        return None


def describe_label(volume: Volume, name: str, phases: Mapping[str, Mapping]) -> None:
    """Record the `phases` ({value: {"name", "voxels"}}) of ``labels/<name>``: on its
    level-0 array (``phases``, read by porevox) and in its ``image-label`` properties."""
    from .phases import PHASES, names

    arr = volume.array(f"{LABELS}/{name}")
    arr.attrs[PHASES] = dict(phases)
    node = volume.group[f"{LABELS}/{name}"]
    if isinstance(node, zarr.Group) and "ome" in node.attrs:
        ome = dict(node.attrs["ome"])
        counts = {int(v): int(p["voxels"]) for v, p in phases.items()}
        ome["image-label"] = {**ome["image-label"], "colors": label_colors(list(counts)),
                              "properties": label_properties(counts, names(arr))}
        node.attrs["ome"] = ome


def pyramid(volume: Volume, name: str = "image") -> list[zarr.Array]:
    """The levels of array `name` (``"image"`` or ``"labels/<name>"``), level 0
    first, as its ``multiscales`` lists them (level 0 alone where it has none)."""
    if name == "image":
        owner, prefix = volume.group, ""
    else:
        owner, prefix = volume.group[name], f"{name}/"
        if isinstance(owner, zarr.Array):
            return [owner]
    datasets = owner.attrs.get("ome", {}).get("multiscales", [{}])[0].get("datasets", [])
    return [volume.group[prefix + d["path"]] for d in datasets] or [volume.array(name)]


__all__ = ["ANISOTROPY", "LEVELS", "PALETTE", "Pyramid", "build", "complete_volume", "describe_label",
           "finish_labels", "image_ome", "is_label_group", "label_array", "label_colors", "label_counts",
           "label_ome", "label_properties", "labels_ome", "mean_pool", "mode_pool", "multiscale",
           "plan_levels", "pyramid", "sync_labels", "write_image_pyramid"]
