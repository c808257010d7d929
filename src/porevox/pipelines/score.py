"""`porevox score`: a segmentation against a reference, with the paper's metrics.

Both are binary label images (1 = copper, 0 = pore), or one phase of each (``phase``:
the phase against the rest, reported as "cu" and "pore"). The confusion matrix is a
distributed reduction (a count per block, summed); the metrics follow from it:
for each phase p, Jaccard = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), with TP the voxels both call p; accuracy = agreeing
voxels / all voxels. An undefined ratio (0/0, a phase absent from both) is NaN.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np

from ..engine import as_dask, histogram, open_volume, phases
from ..engine.blockwise import block_slices, box_tasks, compute_box, stored_array
from ..engine.cluster import compute
from ..engine.location import identity, version
from ..engine.ome import label_counts
from ..engine.storage import LABELS, Volume
from ..errors import InvalidVolumeError

PHASES = {"pore": 0, "cu": 1}
#: Bytes per voxel of a box's confusion count: two uint8 labels, their intp codes.
BYTES_PER_VOXEL = 18


def _block_confusion(pred, truth):
    if pred.size and (pred.max() > 1 or truth.max() > 1):
        raise InvalidVolumeError("labels must be binary (0 pore, 1 copper); got a value above 1")
    cm = np.bincount((2 * truth.astype(np.intp) + pred.astype(np.intp)).ravel(), minlength=4)
    return cm.reshape(1, 1, 1, 4)


def _check_shapes(pred, truth) -> None:
    if pred.shape != truth.shape:
        raise InvalidVolumeError(f"labels and truth differ in shape: {pred.shape} vs {truth.shape}")


def _box_confusion(pred, truth):
    return _block_confusion(pred, truth).reshape(4)


def confusion(pred, truth) -> np.ndarray:
    """2 × 2 confusion matrix ``cm[truth, pred]`` of two binary label images (any
    arrays or volumes). Stored arrays (a volume's) are read box by box by the tasks,
    whatever their chunks; others are Dask arrays, `truth` rechunked to `pred`'s."""
    if stored_array(pred) and stored_array(truth):
        _check_shapes(pred, truth)
        box = compute_box(pred.shape, pred.chunks, BYTES_PER_VOXEL)
        tasks = box_tasks(_box_confusion, [pred, truth], list(block_slices(pred.shape, box)))
        return np.sum(compute(*tasks), axis=0, dtype=np.int64).reshape(2, 2)
    pred, truth = as_dask(pred), as_dask(truth)
    _check_shapes(pred, truth)
    truth = truth.rechunk(pred.chunks)
    per_block = tuple((1,) * n for n in pred.numblocks)
    parts = da.map_blocks(_block_confusion, pred, truth, new_axis=3, chunks=(*per_block, (4,)),
                          dtype=np.int64, meta=np.empty((0, 0, 0, 0), np.int64))
    return compute(parts.sum(axis=(0, 1, 2)))[0].reshape(2, 2)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def metrics(cm: np.ndarray) -> dict:
    """The paper's metrics from ``cm[truth, pred]`` (see the module docstring)."""
    cm = np.asarray(cm, dtype=np.float64)
    out = {}
    for name, p in PHASES.items():
        tp = cm[p, p]
        fp = cm[:, p].sum() - tp
        fn = cm[p, :].sum() - tp
        out[f"jaccard_{name}"] = _ratio(tp, tp + fp + fn)
        out[f"precision_{name}"] = _ratio(tp, tp + fp)
        out[f"recall_{name}"] = _ratio(tp, tp + fn)
    out["accuracy"] = _ratio(np.trace(cm), cm.sum())
    return out


def score(labels, truth) -> dict:
    """Metrics of a binary segmentation `labels` against `truth` (arrays)."""
    cm = confusion(labels, truth)
    return {**metrics(cm), "confusion": cm.tolist()}


def check_labels(path: str | os.PathLike | Volume, *names: str) -> Volume:
    """The volume at `path`, checked to hold every label image in `names`."""
    volume = open_volume(path, mode="r")
    for name in names:
        if name not in volume.labels:
            raise InvalidVolumeError(
                f"{volume.path} has no label image {name!r}; it has {', '.join(volume.labels) or 'none'}: "
                "segment it first or name one of those")
    return volume


#: Values of the label images counted in this process, by volume, name and the time
#: the array was last written (every stage writes a new array).
_VALUES: dict[tuple, list[int]] = {}


def label_values(volume: Volume, name: str) -> list[int]:
    """The distinct values of ``labels/<name>``: those its ``image-label`` recorded
    when it was published, else (an older porevox's plain array) one counting pass
    on the cluster, once per written array. A label image that is not uint8 or
    uint16 raises, naming the fix."""
    arr = volume.array(f"{LABELS}/{name}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InvalidVolumeError(f"{volume.path}: labels/{name} is {arr.dtype}, not a label image (uint8 "
                                 "or uint16 of whole classes); segment the volume with porevox segment, "
                                 "or store integer labels")
    recorded = label_counts(volume, name)      # counted as its pyramid was written
    if recorded is not None:
        return sorted(v for v, n in recorded.items() if n)
    written = version(volume.path / LABELS / name / "zarr.json")
    key = (identity(volume.path), name, written)
    if key not in _VALUES:
        counts, _ = histogram(volume.to_dask(f"{LABELS}/{name}"))
        _VALUES[key] = np.flatnonzero(counts).tolist()
    return _VALUES[key]


def check_binary(volume: Volume, name: str, reader: str) -> None:
    """Refuse ``labels/<name>`` unless it holds only 0 (pore) and 1 (solid): `reader`
    (e.g. "quantify") would read any other value as something it is not."""
    values = label_values(volume, name)
    if set(values) <= {0, 1}:
        return
    shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
    binary = name.removesuffix("_annotation")
    hint = (f"use labels/{binary}, its binary segmentation" if binary != name and binary in volume.labels
            else "give a binary segmentation (0 pore, 1 solid) with --labels")
    raise InvalidVolumeError(f"{volume.path}: labels/{name} holds the values {shown}, not a binary "
                             f"segmentation (0 pore, 1 solid), so {reader} would misread it; {hint}")


def volume_phase(volume: Volume, name: str, phase, reader: str) -> tuple[int, ...] | None:
    """The values of `phase` in ``labels/<name>`` (see :func:`porevox.engine.phases.parse`),
    or None for the default: phase 1 of a binary image (checked binary where no phase
    is named, so that `reader` never reads a multi-valued image as binary). A phase
    none of whose values is there raises, naming the values there are."""
    if phase is None:
        check_binary(volume, name, reader)
        return None
    named = phases.names(volume.array(f"{LABELS}/{name}"))
    values = phases.parse(phase, named, where=f"{volume.path}: labels/{name}")
    present = label_values(volume, name)
    if not set(values) & set(present):
        shown = ", ".join(f"{v}" + (f" = {named[v]}" if v in named else "") for v in present[:8])
        raise InvalidVolumeError(f"{volume.path}: labels/{name} holds the values {shown}"
                                 f"{', ...' if len(present) > 8 else ''}; phase {phase!r} has no voxel "
                                 "there: name one of those")
    return None if values == phases.DEFAULT and set(present) <= {0, 1} else values


def phase_label(volume: Volume, name: str, values: tuple[int, ...] | None) -> str:
    """The phase's name (or values) for tables: ``phase`` of ``features.csv``."""
    return phases.label(values or phases.DEFAULT, phases.names(volume.array(f"{LABELS}/{name}")))


def score_volume(path: str | os.PathLike | Volume, *, labels: str, truth: str = "truth",
                 phase=None) -> dict:
    """Metrics of ``labels/<labels>`` against ``labels/<truth>`` of one volume: both
    binary, or of one `phase` each (a value, values joined by "+" or a name; see
    :func:`volume_phase`)."""
    volume = check_labels(path, labels, truth)
    read = {}
    for name in dict.fromkeys((labels, truth)):
        values = volume_phase(volume, name, phase, "score")
        read[name] = (phases.phase_of(volume.reader(f"{LABELS}/{name}"), values),
                      phase_label(volume, name, values))
    result = score(read[labels][0], read[truth][0])
    return {"volume": str(volume.path), "labels": labels, "truth": truth, "phase": read[labels][1],
            **result}


__all__ = ["check_binary", "check_labels", "confusion", "label_values", "metrics", "phase_label", "score",
           "score_volume", "volume_phase"]
