"""`porevox demo`: the study end to end, as far as porevox goes so far.

Now: write a test tomogram (a porous gray-value stack as a multi-page TIFF), ingest
it into a volume on the active cluster, take its histogram and summary. Each later
stage (twin, segmentation, features, models) extends this.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .volumes import ingest_volume, plan_ingest, volume_histogram

logger = logging.getLogger(__name__)

DEMO_SHAPE = (96, 160, 160)
DEMO_VOXEL_SIZE = (0.025, 0.0186, 0.0186)


def write_test_stack(path: str | os.PathLike, shape=DEMO_SHAPE, rng=0) -> Path:
    """A porous test stack as a multi-page uint8 TIFF, written slice by slice.

    A smoothed random field thresholded at 40 % porosity gives solid and pore;
    solid is bright, pore dark, with blur and noise.
    """
    import tifffile

    rng = np.random.default_rng(rng)
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0)
    solid = field > np.quantile(field, 0.40)
    gray = np.where(solid, 170.0, 60.0).astype(np.float32)
    gray = ndi.gaussian_filter(gray, 0.8) + rng.normal(0, 12, shape)
    stack = np.clip(gray, 0, 255).astype(np.uint8)
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        for plane in stack:
            tif.write(plane, contiguous=True)
    return path


def run_demo(out: str | os.PathLike = "demo-out", *, rng=0) -> dict:
    """Write a test stack under `out`, ingest it, and summarise the volume."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stack = out / "test-stack.tif"
    if not stack.exists():
        write_test_stack(stack, rng=rng)
        logger.info("wrote test stack %s", stack)
    summary = ingest_volume(plan_ingest(stack, out / "sample.zarr", DEMO_VOXEL_SIZE,
                                        sample={"material": "test stack",
                                                "source": "porevox demo"}))
    hist = volume_histogram(out / "sample.zarr")
    result = {"volume": summary, "histogram_percentiles": hist["percentiles"]}
    try:
        from distributed import default_client

        result["dashboard"] = default_client().dashboard_link
    except ValueError:
        result["dashboard"] = None
    return result
