"""`porevox synth`: a digital-twin study — one volume per (paste, temperature, VOI)
with image, truth and sample metadata, and a ``study.yaml`` manifest with a
"measured" conductivity per sample.

The demo preset has one VOI per sample (the 18 training samples of the paper's
Table 2) and a second VOI of three samples, one per paste: the paper's three held-out
test sets, marked ``held_out: true`` in ``study.yaml`` (the U-Nets do not train on
them, and regression tests on them). The paper preset has three VOIs per sample.

Every sample is generated block by block on the cluster from its particle list
(:mod:`porevox.synthetic`), never whole in one process; its volume is built under a
temporary name and published when complete, and a rerun skips finished samples.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import yaml

from ..engine import provenance
from ..engine.cluster import chunk_bytes_budget, compute
from ..engine.ome import complete_volume, label_array
from ..engine.outputs import claim, own
from ..engine.storage import LABELS, building, choose_chunks, create_volume, open_volume
from ..errors import StudyFileError
from ..synthetic.fibsem import FibSemModel, image_threshold, render_box
from ..synthetic.microstructure import (
    PASTES,
    TEMPERATURES,
    Microstructure,
    make_microstructure,
    target_density,
)

logger = logging.getLogger(__name__)

STAGE = "synth"
SIGMA_SCALE = 450.0       # µS/cm for σ_eff/σ_bulk = 1: puts the twin in the paper's 0–285
MEASUREMENT_NOISE = 0.03  # relative sd of the "4-point probe"


@dataclass(frozen=True)
class Preset:
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    vois: int
    dtype: str = "uint8"
    #: (paste, temperature) samples with one more VOI: held-out test sets for regression
    test_vois: tuple[tuple[str, int], ...] = ()


PRESETS = {
    # small enough to synthesise all 18 samples in under a minute on two cores
    "demo": Preset((48, 128, 128), (0.05, 0.0372, 0.0372), vois=1,
                   test_vois=(("HPA", 225), ("HPB", 400), ("NPC", 350))),
    # the paper's VOIs: 10 × 10 × 10 µm³, 538 × 538 × 400 voxels of 18.6 × 18.6 × 25 nm
    "paper": Preset((400, 538, 538), (0.025, 0.0186, 0.0186), vois=3),
}


@dataclass(frozen=True)
class SampleSpec:
    paste: str
    temperature_c: int
    voi: int
    preset: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.paste}-{self.temperature_c}C-voi{self.voi}"

    @property
    def rng_key(self) -> list[int]:
        return [self.seed, PASTES.index(self.paste), self.temperature_c, self.voi]


def study_specs(preset: str, seed: int) -> list[SampleSpec]:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    p = PRESETS[preset]
    return [SampleSpec(paste, t, v, preset, seed) for paste in PASTES for t in TEMPERATURES
            for v in range(p.vois + ((paste, t) in p.test_vois))]


def prepare(spec: SampleSpec, model: FibSemModel,
            shape: tuple[int, int, int] | None = None) -> tuple[Microstructure, float]:
    """The sample's particles (density calibrated) and its image threshold."""
    p = PRESETS[spec.preset]
    ms = make_microstructure(spec.paste, spec.temperature_c, shape or p.shape, p.voxel_size,
                             rng=spec.rng_key)
    return ms, image_threshold(ms, model, _seed(spec))


def _seed(spec: SampleSpec) -> int:
    return int(np.random.default_rng(spec.rng_key).integers(2**31))


def _render_block(ms, model, seed, threshold, dtype, block_info=None):
    loc = block_info[None]["array-location"][1:]
    return render_box(ms, model, seed, tuple(slice(a, b) for a, b in loc), threshold, dtype)


def sample_arrays(ms: Microstructure, model: FibSemModel, seed: int, threshold: float,
                  dtype: str = "uint8", chunks=None) -> da.Array:
    """Lazy ``(3, z, y, x)``: truth, annotation, image; each block rendered on its own."""
    if chunks is None:   # rendering holds ~32 bytes per voxel of a block and its halo
        chunks = choose_chunks(ms.shape, np.float64, chunk_bytes_budget() // 4)
    chunks = da.core.normalize_chunks(chunks, ms.shape)
    return da.map_blocks(_render_block, ms, model, seed, threshold, dtype,
                         chunks=((3,), *chunks), dtype=dtype,
                         meta=np.empty((0, 0, 0, 0), dtype))


def claim_study(out_dir: str | os.PathLike, *, preset: str = "demo", seed: int = 0,
                preview: bool = False) -> list[SampleSpec]:
    """Check, before any work, that the files of the twin study are absent from
    `out_dir` or porevox's own, and record them; returns the samples' specs."""
    specs = study_specs(preset, seed)
    claim(out_dir, ["study.yaml", *(["contact_sheet.png"] if preview else []),
                    *(f"{s.id}.zarr" for s in specs)], what="twin study's file")
    return specs


def synthesize_study(out_dir: str | os.PathLike, *, preset: str = "demo", seed: int = 0,
                     model: FibSemModel | None = None, preview: bool = False,
                     stages: dict | None = None) -> dict:
    """Write the twin study under `out_dir`; return the manifest (also ``study.yaml``).
    Its ``stages`` (what ``porevox run`` does) are `stages`, else those of an existing
    ``study.yaml`` there, else the defaults, written out in full for editing."""
    out_dir = Path(out_dir)
    if stages is None and own(out_dir / "study.yaml"):
        from .studyfile import read_yaml

        with contextlib.suppress(OSError, StudyFileError, AttributeError):
            stages = read_yaml(out_dir / "study.yaml").get("stages")
    if stages is None:
        from .studyfile import DEFAULT_STAGES

        stages = DEFAULT_STAGES
    model = model or FibSemModel()
    specs = claim_study(out_dir, preset=preset, seed=seed, preview=preview)
    todo = [s for s in specs if not _done(out_dir / f"{s.id}.zarr", s, model)]
    logger.info("synth: %d of %d samples to generate (preset %s, seed %d)",
                len(todo), len(specs), preset, seed)
    if todo:
        prepared = compute(*[dask.delayed(prepare)(s, model) for s in todo])
        _write_samples(out_dir, todo, prepared, model)
    manifest = {**_manifest(out_dir, specs, model, preset, seed), "stages": stages}
    tmp = out_dir / ".study.yaml.tmp"
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    os.replace(tmp, out_dir / "study.yaml")
    if preview:
        manifest["preview"] = str(contact_sheet(out_dir, manifest))
    return manifest


def _params(spec: SampleSpec, model: FibSemModel) -> dict:
    p = PRESETS[spec.preset]
    return {"paste": spec.paste, "temperature_c": spec.temperature_c, "voi": spec.voi,
            "preset": spec.preset, "seed": spec.seed, "shape": list(p.shape),
            "voxel_size": list(p.voxel_size), "dtype": p.dtype, "fibsem": model.as_dict()}


def _done(path: Path, spec: SampleSpec, model: FibSemModel) -> bool:
    if not path.exists():
        return False
    try:
        return bool(provenance.completed(open_volume(path, mode="r"), STAGE, _params(spec, model), {}))
    except Exception:
        return False


def _write_samples(out_dir: Path, todo: list[SampleSpec], prepared, model: FibSemModel) -> None:
    """Render and write the samples in one computation (all their blocks in
    parallel); each volume is built under a temporary name and published when all
    are complete. A failure removes every unfinished one."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        arrays, targets, volumes = [], [], []
        for spec, (ms, threshold) in zip(todo, prepared):
            p = PRESETS[spec.preset]
            tmp = stack.enter_context(building(out_dir / f"{spec.id}.zarr"))
            data = sample_arrays(ms, model, _seed(spec), threshold, p.dtype)
            chunks = tuple(c[0] for c in data.chunks[1:])
            sample = {"material": "sintered porous copper (digital twin)", "paste": spec.paste,
                      "temperature_c": spec.temperature_c, "voi": spec.voi,
                      "target_relative_density": round(target_density(spec.paste,
                                                                      spec.temperature_c), 6)}
            vol = create_volume(tmp, p.shape, p.dtype, p.voxel_size, sample=sample, chunks=chunks)
            labels = [label_array(vol, name, shape=p.shape, dtype="uint8", chunks=chunks)
                      for name in ("truth", "truth_annotation")]
            arrays += [data[2], data[0].astype(np.uint8), data[1].astype(np.uint8)]
            targets += [vol.image, *labels]
            volumes.append((vol, spec, ms, threshold))
        compute(da.store(arrays, targets, lock=False, compute=False))
        for vol, spec, ms, threshold in volumes:
            complete_volume(vol)       # the OME-Zarr pyramids and label metadata
            provenance.write_record(vol, STAGE, _params(spec, model), {},
                                    ["image", f"{LABELS}/truth", f"{LABELS}/truth_annotation"],
                                    started, image_threshold=threshold,
                                    particles=int(ms.radii.size), neck_um=ms.neck)
    logger.info("synth: wrote %d samples", len(todo))


def _manifest(out_dir: Path, specs: list[SampleSpec], model: FibSemModel, preset: str,
              seed: int) -> dict:
    from .transport import conductivity

    p = PRESETS[preset]
    samples = []
    for spec in specs:
        path = out_dir / f"{spec.id}.zarr"
        vol = open_volume(path, mode="r")
        cond = vol.provenance[STAGE].get("conductivity")
        if cond is None:   # solved once per sample (along y), kept in its synth record
            cond = conductivity(path, labels="truth", axis=1)   # a plain JSON-able dict
            provenance.amend(open_volume(path), STAGE, conductivity=cond)
        rng = np.random.default_rng([*spec.rng_key, 99])
        rel = float(cond["relative_conductivity"])
        measured = max(SIGMA_SCALE * rel * (1 + MEASUREMENT_NOISE * rng.standard_normal()), 0.0)
        samples.append({
            "id": spec.id, "path": path.name, "paste": spec.paste,
            "temperature_c": spec.temperature_c, "voi": spec.voi,
            "relative_density": round(float(cond["relative_density"]), 6),
            "relative_conductivity": round(rel, 6),
            "tortuosity_factor": round(float(cond["tortuosity_factor"]), 6),
            "conductivity": round(measured, 3),
            "held_out": spec.voi >= p.vois,     # a test VOI: no model trains on it
        })
    return {"name": f"porevox digital twin ({preset})", "preset": preset, "seed": seed,
            "voxel_size": list(p.voxel_size), "unit": "micrometer", "shape": list(p.shape),
            "conductivity_unit": "uS/cm", "conductivity_axis": "y",
            "sigma_scale": SIGMA_SCALE, "measurement_noise": MEASUREMENT_NOISE,
            "fibsem": model.as_dict(), "samples": samples}


def contact_sheet(out_dir: str | os.PathLike, manifest: dict | None = None) -> Path:
    """A PNG with the middle slice of image and truth of every sample (VOI 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if manifest is None:
        from .studyfile import read_yaml

        manifest = read_yaml(out_dir / "study.yaml")
    samples = [s for s in manifest["samples"] if s["voi"] == 0]
    temps = sorted({s["temperature_c"] for s in samples})
    pastes = [p for p in PASTES if any(s["paste"] == p for s in samples)]
    fig, axes = plt.subplots(2 * len(pastes), len(temps), squeeze=False,
                             figsize=(2.2 * len(temps), 2.2 * 2 * len(pastes)))
    for s in samples:
        r, c = 2 * pastes.index(s["paste"]), temps.index(s["temperature_c"])
        vol = open_volume(out_dir / s["path"], mode="r")
        mid = vol.image.shape[0] // 2
        axes[r, c].imshow(vol.image[mid], cmap="gray", vmin=0, vmax=np.iinfo(vol.image.dtype).max)
        axes[r + 1, c].imshow(vol.array(f"{LABELS}/truth")[mid], cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_title(f"{s['paste']} {s['temperature_c']} °C", fontsize=9)
        axes[r + 1, c].set_title(f"truth D={s['relative_density']:.2f}", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{manifest['name']}: slice z={mid}, image (FIB-SEM model) and truth", fontsize=10)
    fig.tight_layout()
    path = out_dir / "contact_sheet.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["PRESETS", "Preset", "SampleSpec", "claim_study", "contact_sheet", "prepare", "sample_arrays",
           "study_specs", "synthesize_study"]
