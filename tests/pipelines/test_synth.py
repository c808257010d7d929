"""The demo twin study end to end: volumes, truth, calibration, Otsu difficulty,
study.yaml, resume and the contact sheet."""

import numpy as np
import pytest
import yaml
from skimage.filters import threshold_otsu

from porevox import open_volume
from porevox.pipelines import synthesize_study
from porevox.synthetic.microstructure import PASTES, TEMPERATURES, target_density


@pytest.fixture(scope="module")
def study(demo_twin):
    return demo_twin


def test_manifest_and_volumes(study):
    out, manifest = study
    assert yaml.safe_load((out / "study.yaml").read_text()) == {
        k: v for k, v in manifest.items() if k != "preview"}
    samples = manifest["samples"]
    assert [(s["paste"], s["temperature_c"]) for s in samples if s["voi"] == 0] == [
        (p, t) for p in PASTES for t in TEMPERATURES]
    # a second VOI of one sample per paste: the held-out test sets of the regression
    assert [s["id"] for s in samples if s["voi"] == 1] == ["HPA-225C-voi1", "HPB-400C-voi1",
                                                          "NPC-350C-voi1"]
    assert [s["id"] for s in samples if s["held_out"]] == [s["id"] for s in samples if s["voi"] == 1]
    for s in samples:
        vol = open_volume(out / s["path"], mode="r")
        assert vol.image.dtype == np.uint8 and vol.image.shape == (48, 128, 128)
        assert vol.voxel_size == (0.05, 0.0372, 0.0372)
        assert sorted(vol.labels) == ["truth", "truth_annotation"]
        assert vol.sample["paste"] == s["paste"] and vol.sample["temperature_c"] == s["temperature_c"]
        truth = vol.array("labels/truth")[:]
        assert abs(truth.mean() - target_density(s["paste"], s["temperature_c"])) < 0.02
        assert s["relative_density"] == pytest.approx(truth.mean(), abs=1e-6)
        assert 0 <= s["conductivity"] <= 285
        assert 0 <= s["relative_conductivity"] < s["relative_density"]   # tortuous paths
        if s["relative_conductivity"] > 0:     # a sparse HPB box may not percolate
            assert s["tortuosity_factor"] == pytest.approx(
                s["relative_density"] / s["relative_conductivity"], rel=1e-3)
    # the dense pastes conduct better the hotter they were sintered
    for paste in ("HPA", "NPC"):
        rel = [s["relative_conductivity"] for s in samples if s["paste"] == paste]
        assert rel[-1] > 2 * rel[0] > 0


def test_otsu_on_the_twin_scores_like_the_papers_cta(study):
    """Paper's CTA row: accuracy 0.87, pore recall 0.70; the twin must be as hard."""
    out, manifest = study
    accuracy, recall = [], []
    for s in manifest["samples"]:
        vol = open_volume(out / s["path"], mode="r")
        image, truth = vol.image[:], vol.array("labels/truth")[:].astype(bool)
        ann = vol.array("labels/truth_annotation")[:]
        called_solid = image > threshold_otsu(image)
        accuracy.append((called_solid == truth).mean())
        recall.append((~called_solid[~truth]).mean())
        # class 2 is the pore a global threshold calls copper
        assert abs((ann[~truth] == 2).mean() - called_solid[~truth].mean()) < 0.05, s["id"]
    assert 0.84 <= np.mean(accuracy) <= 0.91, np.mean(accuracy)
    assert 0.65 <= np.mean(recall) <= 0.80, np.mean(recall)


def test_rerun_skips_finished_samples(study, caplog):
    out, manifest = study
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.zarr/image/zarr.json")}
    with caplog.at_level("INFO", logger="porevox"):
        again = synthesize_study(out, preset="demo", seed=0)
    assert "0 of 21 samples to generate" in caplog.text
    assert again["samples"] == manifest["samples"]
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.zarr/image/zarr.json")}


def test_contact_sheet(study):
    out, manifest = study
    from PIL import Image

    with Image.open(manifest["preview"]) as png:
        assert png.format == "PNG" and png.size[0] > 1000 and png.size[1] > 1000


def test_bad_preset(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of demo, paper"):
        synthesize_study(tmp_path, preset="huge")
