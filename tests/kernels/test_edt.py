"""The separable feature and distance transforms against SciPy's on the whole volume,
and the invariance that makes them blockwise: a line's features do not depend on
where the line starts or how lines are grouped."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from porevox.kernels.edt import distance_transform, feature_distance, feature_pass, feature_transform

from ..conftest import porous

PAPER_VOXEL = (0.025, 0.0186, 0.0186)


@pytest.mark.parametrize("shape,vs,porosity", [
    ((40, 50, 60), (1.0, 1.0, 1.0), 0.5),
    ((37, 41, 53), PAPER_VOXEL, 0.3),
    ((30, 31, 29), (2.0, 1.0, 0.5), 0.02),          # few pores: long distances
])
def test_equals_scipy_on_every_voxel(shape, vs, porosity):
    solid = porous(shape, np.random.default_rng(3), porosity=porosity, sigma=2.5)
    ref, ref_ft = ndi.distance_transform_edt(solid, sampling=vs, return_indices=True)
    feats = feature_transform(solid, voxel_size=vs)
    got = feature_distance(feats, voxel_size=vs)
    # the same distance (ties, two pores at the same distance, may round differently)
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    same = np.all(feats == ref_ft, axis=0)
    assert np.array_equal(got[same], ref[same])      # bit for bit where the features agree
    assert same.mean() > 0.9
    np.testing.assert_array_equal(distance_transform(solid, voxel_size=vs), got)


def test_no_background_is_infinite_and_background_is_zero():
    d = distance_transform(np.ones((4, 5, 6), bool))
    assert np.isinf(d).all()
    solid = np.ones((5, 5, 5), bool)
    solid[2, 2, 2] = False
    d = distance_transform(solid, voxel_size=(2.0, 1.0, 1.0))
    assert d[2, 2, 2] == 0 and d[0, 2, 2] == 4.0 and d[2, 0, 2] == 2.0


def test_lines_in_any_bundle_and_offset_give_the_same_features():
    solid = porous((33, 47, 51), np.random.default_rng(5), porosity=0.4, sigma=2.0)
    vs = PAPER_VOXEL
    whole = feature_transform(solid, voxel_size=vs)
    f0 = feature_pass(solid, 0, voxel_size=vs)
    f1 = feature_pass(f0, 1, voxel_size=vs)
    # pass 2 (along x) over bundles of lines cut anywhere in z and y: global offsets
    parts = np.empty_like(whole)
    for z in (slice(0, 7), slice(7, 33)):
        for y in (slice(0, 20), slice(20, 47)):
            box = (slice(None), z, y, slice(None))
            parts[box] = feature_pass(f1[box], 2, voxel_size=vs, offset=(z.start, y.start, 0))
    np.testing.assert_array_equal(parts, whole)


def test_wrong_input_is_named():
    with pytest.raises(ValueError, match="pass 2 needs the features of pass 1"):
        feature_pass(np.zeros((1, 4, 4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="3-D"):
        feature_transform(np.zeros((4, 4), bool))
