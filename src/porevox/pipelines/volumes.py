"""Volume stages: ingest a user's stack, describe a volume."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..engine import IngestPlan, histogram, open_volume, plan_ingest, run_ingest

logger = logging.getLogger(__name__)


def ingest_volume(plan: IngestPlan) -> dict:
    """Carry out a planned ingest (:func:`porevox.engine.plan_ingest` checks the input
    before any cluster starts); return the volume's summary plus ``"ingested"``
    (False when the same ingest had already been done)."""
    volume, did = run_ingest(plan)
    return {"ingested": did, **volume.summary()}


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


__all__ = ["ingest_volume", "plan_ingest", "volume_histogram", "volume_info"]
