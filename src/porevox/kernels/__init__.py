"""Pure per-block numerics: an array in, an array out; no Dask, no I/O.

Each kernel that looks at neighbours has a ``<kernel>_depth(...)`` function giving
the halo it needs from its own parameters.
"""

from .conductivity import (
    ConductivityResult,
    NoPathWarning,
    NotConvergedWarning,
    effective_conductivity,
)
from .filters import gaussian, gaussian_depth
from .segment import annotate, hybrid_threshold, otsu_threshold

__all__ = ["ConductivityResult", "NoPathWarning", "NotConvergedWarning", "annotate",
           "effective_conductivity", "gaussian", "gaussian_depth", "hybrid_threshold",
           "otsu_threshold"]
