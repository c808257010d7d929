"""porevox: tomograms of porous materials to numbers people can trust, at any scale."""

from ._version import __version__
from .engine import cluster, histogram, ingest, open_volume
from .errors import InvalidVolumeError, PorevoxError, StageError, VolumeNotFoundError
from .pipelines import conductivity, run_study, synthesize_study
from .pipelines.distance import distance_transform, feature_transform
from .pipelines.quantify import quantify
from .pipelines.regress import regress
from .pipelines.score import score
from .pipelines.segment import segment
from .pipelines.tortuosity import tortuosity

__all__ = [
    "InvalidVolumeError", "PorevoxError", "StageError", "VolumeNotFoundError", "__version__",
    "cluster", "conductivity", "distance_transform", "feature_transform", "histogram", "ingest",
    "open_volume", "quantify", "regress", "score",
    "run_study", "segment", "synthesize_study", "tortuosity",
]
