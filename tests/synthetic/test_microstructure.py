"""The twin's microstructures: calibrated densities, determinism, block == whole."""

import dask.array as da
import numpy as np
import pytest

from porevox.pipelines.synth import PRESETS, SampleSpec, prepare, sample_arrays
from porevox.synthetic.fibsem import FibSemModel, render_box
from porevox.synthetic.microstructure import (
    PASTES,
    TEMPERATURES,
    make_microstructure,
    sinter_progress,
    target_density,
)

PAPER_175 = {"HPA": 0.424, "HPB": 0.617, "NPC": 0.452}
DENSIFICATION = {"HPA": 0.185, "HPB": 0.073, "NPC": 0.208}


def test_calibration_targets_are_the_papers():
    for paste in PASTES:
        assert target_density(paste, 175) == pytest.approx(1 - PAPER_175[paste])
        assert target_density(paste, 400) - target_density(paste, 175) == pytest.approx(
            DENSIFICATION[paste])
    temps = np.linspace(175, 400, 46)
    u = [sinter_progress(t) for t in temps]
    assert u[0] == 0 and u[-1] == pytest.approx(1) and np.all(np.diff(u) > 0)
    with pytest.raises(ValueError, match="paste must be one of"):
        target_density("XYZ", 200)


@pytest.mark.parametrize("paste", PASTES)
def test_demo_preset_densities(paste):
    p = PRESETS["demo"]
    for t in TEMPERATURES:
        ms = make_microstructure(paste, t, p.shape, p.voxel_size, rng=[0, t])
        assert abs(ms.render().mean() - target_density(paste, t)) < 0.02, (paste, t)


@pytest.mark.slow
@pytest.mark.parametrize("paste", PASTES)
def test_paper_preset_densities_on_a_subvolume(paste):
    """The paper preset (538 × 538 × 400) checked on a sub-volume: four 8-plane slabs
    across the whole VOI, rendered block-wise (calibration samples random voxels
    through another code path). One compact sub-volume would not do: a few 1–2 µm
    particles swing its density."""
    p = PRESETS["paper"]
    slabs = [(slice(z, z + 8), slice(0, 538), slice(0, 538)) for z in (40, 140, 240, 340)]
    for t in TEMPERATURES:
        ms = make_microstructure(paste, t, p.shape, p.voxel_size, rng=[1, t])
        density = np.mean([ms.render(b).mean() for b in slabs])
        assert abs(density - target_density(paste, t)) < 0.02, (paste, t, density)


def test_same_seed_same_bytes_other_seed_differs():
    spec = SampleSpec("HPA", 250, 0, "demo", seed=3)
    model = FibSemModel()
    (a, ta), (b, tb) = prepare(spec, model, (24, 40, 40)), prepare(spec, model, (24, 40, 40))
    whole = tuple(slice(0, n) for n in a.shape)
    ra, rb = render_box(a, model, 5, whole, ta), render_box(b, model, 5, whole, tb)
    assert ra.tobytes() == rb.tobytes()
    c, tc = prepare(SampleSpec("HPA", 250, 0, "demo", seed=4), model, (24, 40, 40))
    assert render_box(c, model, 5, whole, tc).tobytes() != ra.tobytes()


@pytest.mark.parametrize("paste", ["HPA", "NPC"])
def test_block_by_block_equals_whole(paste):
    model = FibSemModel()
    ms, thr = prepare(SampleSpec(paste, 225, 0, "demo", 0), model, (40, 70, 90))
    whole = render_box(ms, model, 11, tuple(slice(0, n) for n in ms.shape), thr)
    blocks = sample_arrays(ms, model, 11, thr, chunks=(17, 23, 64))
    assert blocks.numblocks == (1, 3, 4, 2)
    np.testing.assert_array_equal(blocks.compute(scheduler="threads"), whole)
    assert isinstance(blocks, da.Array)


def test_truth_and_annotation_are_consistent():
    model = FibSemModel()
    ms, thr = prepare(SampleSpec("NPC", 175, 0, "demo", 0), model, (30, 60, 60))
    truth, ann, image = render_box(ms, model, 1, tuple(slice(0, n) for n in ms.shape), thr)
    assert set(np.unique(truth)) == {0, 1} and set(np.unique(ann)) == {0, 1, 2}
    np.testing.assert_array_equal(ann == 0, truth == 1)
    # shine-through pores are brighter than pores with nothing behind them
    assert image[ann == 2].mean() > image[ann == 1].mean() + 40
    assert image[truth == 1].mean() > image[ann == 1].mean() + 60


def test_uint16_images():
    model = FibSemModel()
    ms, thr = prepare(SampleSpec("HPB", 400, 0, "demo", 0), model, (16, 40, 40))
    out8 = render_box(ms, model, 2, tuple(slice(0, n) for n in ms.shape), thr, "uint8")
    out16 = render_box(ms, model, 2, tuple(slice(0, n) for n in ms.shape), thr, "uint16")
    assert out16.dtype == np.uint16 and out16[2].max() > 255
    np.testing.assert_allclose(out16[2] / 65535, out8[2] / 255, atol=2 / 255)
