"""Judging generated images: descriptors equal the quantification's kernels, R² and
the Table-3 analog."""

import math

import numpy as np
import pytest

from porevox.kernels.descriptors2d import descriptors_2d
from porevox.kernels.statistics2d import two_point_correlation
from porevox.pipelines import generation_eval as ge
from tests.models.test_diffusion import blobs

PIXEL = (0.0372, 0.0372)


def test_image_descriptors_are_the_quantification_kernels():
    images = np.r_[blobs(0.3, 3, size=32, seed=1), blobs(0.7, 3, size=32, seed=2)]
    got = ge.image_descriptors(images, PIXEL)
    for i, image in enumerate(images):
        ref = descriptors_2d(image, pixel_size=PIXEL)
        for key in ("relative_density", "specific_perimeter", "shape_index_mean"):
            assert got[key][i] == ref[key]


def test_class_statistics():
    images = blobs(0.4, 5, size=32, seed=3)
    stats = ge.class_statistics(images, PIXEL, max_distance=0.3)
    d = ge.image_descriptors(images, PIXEL)
    assert stats["relative_density"]["mean"] == pytest.approx(d["relative_density"].mean())
    assert stats["specific_perimeter"]["sd"] == pytest.approx(d["specific_perimeter"].std())
    r, s2 = two_point_correlation(images[0], pixel_size=PIXEL, max_distance=0.3)
    assert stats["s2"]["r"] == pytest.approx(r.tolist())
    assert stats["s2"]["s2"][0] == pytest.approx(d["relative_density"].mean())
    assert 0 < stats["chord_solid_mean"] < 32 * PIXEL[0] and stats["n"] == 5


def test_r2():
    real = np.array([0.6, 0.62, 0.65, 0.67, 0.77, 0.78])
    assert ge.r2(real, real) == 1.0
    assert ge.r2(real, np.full(6, real.mean())) == pytest.approx(0.0, abs=1e-12)
    assert ge.r2(real, real + 0.1) < 0
    assert math.isnan(ge.r2([0.5], [0.4]))


def test_table3_per_paste_and_average():
    classes = [{"paste": p, "temperature_c": t} for p in ("HPA", "NPC") for t in (175, 250, 400)]

    def stats(values):
        return [{k: {"mean": v + j, "sd": 0.0} for j, (k, _, _) in enumerate(ge.DESCRIPTORS)}
                for v in values]

    real = stats([0.6, 0.7, 0.8, 0.5, 0.6, 0.7])
    table = ge.table3(classes, real, {"perfect": real, "flat": stats([0.7, 0.7, 0.7, 0.6, 0.6, 0.6])})
    assert table["perfect"]["HPA"] == {"relative_density": 1.0, "specific_perimeter": 1.0,
                                       "shape_index_mean": 1.0, "average": 1.0}
    assert table["flat"]["NPC"]["average"] == pytest.approx(0.0, abs=1e-12)
    md = ge.markdown(table)
    assert "| perfect | HPA | 1.00 | 1.00 | 1.00 | 1.00 |" in md
