"""Crops of a study's segmented slices for the generative models."""

import numpy as np
import pytest
import torch
import yaml

from porevox.engine.storage import create_volume
from porevox.errors import InvalidVolumeError
from porevox.pipelines.crops import CropBatches, crop_index


@pytest.fixture
def study(tmp_path):
    """Three small volumes: HPA 175 °C (a training VOI and a held-out one), NPC 400 °C."""
    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for sid, paste, t, voi, held, sigma in (("a0", "HPA", 175, 0, False, 10.0),
                                            ("a1", "HPA", 175, 1, True, 14.0),
                                            ("n0", "NPC", 400, 0, False, 200.0)):
        labels = (rng.random((5, 40, 52)) > 0.5).astype(np.uint8)
        vol = create_volume(tmp_path / f"{sid}.zarr", labels.shape, "uint8", (0.05, 0.04, 0.04),
                            chunks=(2, 16, 16))
        vol.group.create_array("labels/unet", data=labels, chunks=(2, 16, 16))
        arrays[sid] = labels
        rows.append({"id": sid, "path": f"{sid}.zarr", "paste": paste, "temperature_c": t, "voi": voi,
                     "held_out": held, "conductivity": sigma})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "t", "samples": rows}))
    return tmp_path, arrays


def test_crops_are_cut_from_the_slices_without_resizing(study):
    folder, arrays = study
    index = crop_index(folder, size=16)
    # 2 training volumes × 5 slices × (40 // 16 = 2) × (52 // 16 = 3) crops
    assert len(index) == 2 * 5 * 2 * 3 and index.pixel_size == (0.04, 0.04)
    assert [(c["paste"], c["temperature_c"], c["samples"], c["conductivity"]) for c in index.classes] == [
        ("HPA", 175, ["a0"], 10.0), ("NPC", 400, ["n0"], 200.0)]
    crops = index.load()
    for i in (0, 7, len(index) - 1):
        v, z, y0, x0 = index.where[i]
        sid = ["a0", "n0"][v]
        np.testing.assert_array_equal(crops[i], arrays[sid][z, y0:y0 + 16, x0:x0 + 16])
        assert index.label[i] == v and index.value[i] == (10.0, 200.0)[v]


def test_stride_every_and_held_out(study):
    folder, _ = study
    index = crop_index(folder, size=16, stride=8, every=2, held_out=True)
    assert len(index) == 3 * 3 * 4 * 5                 # z 0, 2, 4; y 0..24 by 8; x 0..36 by 8
    assert index.classes[0]["samples"] == ["a0", "a1"] and index.classes[0]["conductivity"] == 12.0


def test_batches_read_signed_crops_like_the_stack(study):
    folder, _ = study
    index = crop_index(folder, size=16)
    batches = CropBatches(index)
    stack = torch.from_numpy(index.load().astype(np.float32) * 2 - 1)[:, None]
    pick = torch.tensor([len(index) - 1, 0, 5, 5])
    assert batches.shape == tuple(stack.shape) and len(batches) == len(index)
    torch.testing.assert_close(batches[pick], stack[pick], rtol=0, atol=0)
    assert set(batches[pick].unique().tolist()) <= {-1.0, 1.0}


def test_bad_requests(study):
    folder, _ = study
    with pytest.raises(InvalidVolumeError, match="multiple of 8"):
        crop_index(folder, size=12)
    with pytest.raises(InvalidVolumeError, match="exceeds the 40 × 52 slices"):
        crop_index(folder, size=48)
    with pytest.raises(InvalidVolumeError, match="has no labels/truth"):
        crop_index(folder, labels="truth")
