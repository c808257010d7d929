"""Stages that compose engine, kernels and models. Each reads Zarr and writes Zarr
plus provenance, and is idempotent and resumable. The CLI calls these only."""

from ..engine.cluster import cluster as session
from ..engine.provenance import finite as finite_json
from .demo import run_demo
from .feature_study import quantify_study
from .preprocess import preprocess as preprocess_volume
from .quantify import quantify_volume
from .regress import plan_regression, run_regression
from .report import write_report
from .run import run_study
from .score import score_volume
from .segment import segment_volume
from .segmentation_study import segmentation_study
from .synth import contact_sheet, synthesize_study
from .train import train_unet_volumes
from .transport import conductivity
from .volumes import (
           ingest_labels,
           ingest_volume,
           plan_ingest,
           plan_label_ingest,
           volume_histogram,
           volume_info,
)

__all__ = ["conductivity", "contact_sheet", "finite_json", "ingest_labels", "ingest_volume", "plan_ingest",
           "plan_label_ingest", "plan_regression",
           "preprocess_volume", "quantify_study", "quantify_volume", "run_demo",
           "run_regression", "run_study", "score_volume", "segment_volume", "segmentation_study", "session",
           "synthesize_study", "train_unet_volumes", "volume_histogram", "volume_info", "write_report"]
