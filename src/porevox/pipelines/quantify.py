"""`porevox quantify`: numbers from a segmented volume.

So far: relative density and porosity (a distributed count) and, on request, the
effective conductivity along an axis. The paper's other features (surface area,
struts, tortuosity, curvature, 2D descriptors) extend this stage.
"""

from __future__ import annotations

import os

from ..engine import count_equal, open_volume
from ..kernels.conductivity import check_axis
from .transport import conductivity


def quantify_volume(path: str | os.PathLike, *, labels: str = "truth", axis: int | str = "y",
                    with_conductivity: bool = False) -> dict:
    """Features of the segmentation ``labels/<labels>`` of the volume at `path`."""
    axis = check_axis(axis)
    volume = open_volume(path, mode="r")
    solid = volume.to_dask(f"labels/{labels}")
    density = count_equal(solid, 1) / solid.size
    result = {"volume": str(path), "labels": labels, "axis": "zyx"[axis],
              "voxel_size": list(volume.voxel_size), "relative_density": density,
              "porosity": 1.0 - density}
    if with_conductivity:
        result.update(conductivity(path, labels=labels, axis=axis))
    return result
