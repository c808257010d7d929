"""Stages that compose engine, kernels and models. Each reads Zarr and writes Zarr
plus provenance, and is idempotent and resumable. The CLI calls these only."""

from ..engine.cluster import cluster as session
from .demo import run_demo
from .quantify import quantify_volume
from .synth import contact_sheet, synthesize_study
from .transport import conductivity
from .volumes import ingest_volume, plan_ingest, volume_histogram, volume_info

__all__ = ["conductivity", "contact_sheet", "ingest_volume", "plan_ingest", "quantify_volume",
           "run_demo", "session", "synthesize_study", "volume_histogram", "volume_info"]
