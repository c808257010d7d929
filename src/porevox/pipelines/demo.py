"""`porevox demo`: the twin study end to end — ``porevox synth`` (demo preset) and
``porevox run`` on the embedded cluster, with its report.

The study: 18 twin samples (three pastes at six temperatures, with truth and a
"measured" conductivity from the conductivity solver) and three held-out test VOIs.
The run: preprocess and segment every sample four ways (CTA, hybrid, and U-Nets
trained on each) and score them against the truth — the paper's Table 1; quantify
every sample's microstructure on the U-Net Hybrid segmentation (the paper's choice)
and on the truth, with the figures of Fig. 2b–e and 3b–d; fit the structure–property
models of Table 2 to the "measured" conductivity with SHAP (Fig. 4); train the
conditional DDPM and the cGAN (``cpu`` preset, within a time budget) on the
U-Net-segmented crops, judge both by the Table-3 analog (Figs. 5–6) and design
microstructures for three target conductivities; then ``report.html``. Finally one
sample's image is taken out as a multi-page TIFF, as a microscope would deliver it,
and ingested like a user's stack.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engine import open_volume
from ..engine.outputs import claim
from .generation_study import DESIGN_TARGETS
from .run import run_study
from .studyfile import DEFAULT_STAGES
from .synth import study_specs, synthesize_study
from .volumes import ingest_volume, plan_ingest, volume_histogram

logger = logging.getLogger(__name__)

#: Segmentations the demo quantifies: the U-Net Hybrid's (the paper's) and the truth.
FEATURE_LABELS = ("unet", "truth")


def export_tiff(volume: str | os.PathLike, path: str | os.PathLike, name: str = "image") -> Path:
    """Write an array of a volume as a multi-page TIFF, one plane at a time."""
    import tifffile

    arr = open_volume(volume, mode="r").array(name)
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        for z in range(arr.shape[0]):
            tif.write(arr[z], contiguous=True)
    return path


#: The demo's U-Net epochs at most and generated images per class and design target
#: (sized so that `make demo` keeps under 15 minutes on two cores; `porevox demo`'s
#: options repeat them, as the CLI does not import the pipelines until a command runs).
EPOCHS, GENERATE_N = 20, 16


def demo_stages(*, epochs: int = EPOCHS, generate_minutes: float | None = 2.0,
                generate_steps: int | None = None, generate_n: int = GENERATE_N, seed: int = 0) -> dict:
    """The demo's stages: the defaults, the U-Nets' `epochs`, quantify and regress on
    the U-Net Hybrid segmentation and the truth, and generation."""
    stages = {k: dict(v) for k, v in DEFAULT_STAGES.items()}
    stages["unet"].update(epochs=epochs, seed=seed)
    stages["quantify"]["labels"] = stages["regress"]["labels"] = list(FEATURE_LABELS)
    stages["generate"] = {"kinds": ["ddpm", "cgan"], "minutes": generate_minutes, "steps": generate_steps,
                          "n": generate_n, "seed": seed, "design": list(DESIGN_TARGETS)}
    return stages


def run_demo(out: str | os.PathLike = "demo-out", *, seed: int = 0, epochs: int = EPOCHS,
             generate_minutes: float | None = 2.0, generate_steps: int | None = None,
             generate_n: int = GENERATE_N, progress: bool = False) -> dict:
    """The twin study under `out/study` through every stage (see the module), and one
    of its images ingested from TIFF. Returns the run record, the study and the
    ingest summary."""
    out = Path(out)
    claim(out, [f"{study_specs('demo', seed)[0].id}.tif", "ingested.zarr"], what="demo output")
    stages = demo_stages(epochs=epochs, generate_minutes=generate_minutes, generate_steps=generate_steps,
                         generate_n=generate_n, seed=seed)
    manifest = synthesize_study(out / "study", preset="demo", seed=seed, preview=True, stages=stages)
    record = run_study(out / "study", progress=progress)
    first = manifest["samples"][0]
    stack = out / f"{first['id']}.tif"
    if not stack.exists():
        export_tiff(out / "study" / first["path"], stack)
        logger.info("exported %s as a TIFF stack %s", first["id"], stack)
    vol = open_volume(out / "study" / first["path"], mode="r")
    summary = ingest_volume(plan_ingest(stack, out / "ingested.zarr", vol.voxel_size,
                                        sample=vol.sample))
    hist = volume_histogram(out / "ingested.zarr")
    return {"study": manifest, "run": record, "ingested": summary,
            "histogram_percentiles": hist["percentiles"]}
