"""Volume stages: ingest a user's stack, describe a volume."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..engine import (
    IngestPlan,
    LabelPlan,
    histogram,
    open_volume,
    plan_ingest,
    plan_label_ingest,
    run_ingest,
    run_label_ingest,
)
from ..engine.location import is_remote
from ..engine.storage import remove_partial_writes

logger = logging.getLogger(__name__)


def ingest_volume(plan: IngestPlan) -> dict:
    """Carry out a planned ingest (:func:`porevox.engine.plan_ingest` checks the input
    before any cluster starts); return the volume's summary plus ``"ingested"``
    (False when the same ingest had already been done)."""
    volume, did = run_ingest(plan)
    return {"ingested": did, **volume.summary()}


def ingest_labels(plan: LabelPlan) -> dict:
    """Carry out a planned segmentation ingest (:func:`porevox.engine.plan_label_ingest`
    checks it before any cluster starts); returns the volume, the labels' name,
    ``"ingested"`` (False when already done) and the phases (value -> name, voxels)."""
    volume, did, phases = run_label_ingest(plan)
    return {"volume": str(volume.path), "labels": plan.name, "ingested": did, "phases": phases}


def tidy_volume(path: str | os.PathLike) -> list[str]:
    """Remove what a killed process half-wrote in the volume at `path` (see
    :func:`porevox.engine.storage.remove_partial_writes`); for a command about to
    write to it, before anything else does."""
    return remove_partial_writes(path) if is_remote(path) or os.path.isdir(path) else []


def volume_info(path: str | os.PathLike) -> dict:
    """Summary of a volume: shape, dtype, chunks, voxel size, metadata, labels, provenance."""
    return open_volume(path, mode="r").summary()


def volume_histogram(path: str | os.PathLike, name: str = "image") -> dict:
    """Gray-value histogram of an array of a volume, with its percentiles."""
    volume = open_volume(path, mode="r")
    counts, edges = histogram(volume.to_dask(name))
    cdf = np.cumsum(counts) / max(int(counts.sum()), 1)
    pct = {p: float(edges[int(np.searchsorted(cdf, p / 100))]) for p in (1, 50, 99)}
    return {"counts": counts.tolist(), "edges": edges.tolist(), "percentiles": pct,
            "voxels": int(counts.sum())}


__all__ = ["ingest_labels", "ingest_volume", "plan_ingest", "plan_label_ingest", "tidy_volume",
           "volume_histogram", "volume_info"]
