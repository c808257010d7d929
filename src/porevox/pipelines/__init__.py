"""Stages that compose engine, kernels and models. Each reads Zarr and writes Zarr
plus provenance, and is idempotent and resumable. The CLI calls these only."""

from ..engine.cluster import cluster as session
from .demo import run_demo
from .volumes import ingest_volume, plan_ingest, volume_histogram, volume_info

__all__ = ["ingest_volume", "plan_ingest", "run_demo", "session", "volume_histogram", "volume_info"]
