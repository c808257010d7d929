"""`porevox demo`: the study end to end, as far as porevox goes so far.

Now: synthesise the digital-twin demo study (18 samples: three pastes at six
temperatures, with truth and a "measured" conductivity from the conductivity
solver) with its contact sheet; segment every sample four ways (CTA, hybrid, and
U-Nets trained on each) and score them against the truth — the paper's Table 1;
quantify every sample's microstructure — D, SA, strut diameters, tortuosity,
curvature, α, β and the 2-D descriptors — on the U-Net Hybrid segmentation (the
paper's choice) and on the truth, into ``features.csv`` / ``.parquet`` and the
figures of Fig. 2b–e and 3b–d; fit the structure–property models of Table 2 to the
"measured" conductivity (18 training samples by LOOCV, three held-out test VOIs;
the non-percolating sample, whose τ and α are undefined, left out) with SHAP
(Fig. 4); train the conditional DDPM and the cGAN (``cpu`` preset, within a time
budget) on the U-Net-segmented crops, judge both by the Table-3 analog (Figs. 5–6),
and design microstructures for three target conductivities with the DDPM, σ
predicted back; then take one sample's image out as a multi-page TIFF, as a
microscope would deliver it, and ingest it like a user's stack.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engine import open_volume
from ..engine.cluster import active_client
from .feature_study import quantify_study, trend_summary
from .regress import regress
from .segmentation_study import segmentation_study
from .synth import synthesize_study
from .volumes import ingest_volume, plan_ingest, volume_histogram

logger = logging.getLogger(__name__)

#: Segmentations the demo quantifies: the U-Net Hybrid's (the paper's) and the truth.
FEATURE_LABELS = ("unet", "truth")
#: Inverse-design targets (µS/cm), within the twin's measured range.
DESIGN_TARGETS = (50.0, 100.0, 200.0)


def generation_stage(study, *, minutes: float | None = None, steps: int | None = None, n: int = 64,
                     seed: int = 0, progress: bool = False) -> dict:
    """Train the DDPM and the cGAN (``cpu`` preset; `minutes` each at most, `steps`
    at most), the Table-3 analog with `n` images per class, and inverse design."""
    from .generate import train_generator
    from .generation_study import design, evaluate_generators

    trained = {kind: train_generator(study, kind=kind, preset="cpu", minutes=minutes, steps=steps,
                                     seed=seed, progress=progress) for kind in ("ddpm", "cgan")}
    evaluation = evaluate_generators(study, [t["model"] for t in trained.values()], n=n, seed=seed)
    designed = design(study, trained["ddpm"]["model"], DESIGN_TARGETS, n=n, seed=seed)
    return {"training": trained, "evaluation": evaluation, "design": designed}


def export_tiff(volume: str | os.PathLike, path: str | os.PathLike, name: str = "image") -> Path:
    """Write an array of a volume as a multi-page TIFF, one plane at a time."""
    import tifffile

    arr = open_volume(volume, mode="r").array(name)
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        for z in range(arr.shape[0]):
            tif.write(arr[z], contiguous=True)
    return path


def run_demo(out: str | os.PathLike = "demo-out", *, seed: int = 0, epochs: int = 30,
             generate_minutes: float | None = 3.0, generate_steps: int | None = None,
             generate_n: int = 64, progress: bool = False) -> dict:
    """The twin study under `out/study` through every stage (see the module), and one
    of its images ingested from TIFF."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = synthesize_study(out / "study", preset="demo", seed=seed, preview=True)
    table1 = segmentation_study(out / "study", seed=seed, epochs=epochs, progress=progress)
    features = quantify_study(out / "study", labels=list(FEATURE_LABELS))
    regression = {name: regress(features["csv"], labels=name, drop_nan=True, out="auto")
                  for name in FEATURE_LABELS}
    generation = generation_stage(out / "study", minutes=generate_minutes, steps=generate_steps,
                                  n=generate_n, seed=seed, progress=progress)
    first = manifest["samples"][0]
    stack = out / f"{first['id']}.tif"
    if not stack.exists():
        export_tiff(out / "study" / first["path"], stack)
        logger.info("exported %s as a TIFF stack %s", first["id"], stack)
    vol = open_volume(out / "study" / first["path"], mode="r")
    summary = ingest_volume(plan_ingest(stack, out / "ingested.zarr", vol.voxel_size,
                                        sample=vol.sample))
    hist = volume_histogram(out / "ingested.zarr")
    import pandas as pd

    table = pd.DataFrame(features["rows"])
    trends = {name: trend_summary(table[table["labels"] == name]) for name in FEATURE_LABELS}
    result = {"study": manifest, "table1": table1, "features": features, "trends": trends,
              "regression": regression, "generation": generation, "ingested": summary,
              "histogram_percentiles": hist["percentiles"]}
    client = active_client()
    result["dashboard"] = client.dashboard_link if client is not None else None
    return result
