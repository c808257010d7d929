"""Connected components across blocks: equal to scipy.ndimage.label on the whole volume."""

import dask
import numpy as np
import pytest
from scipy import ndimage as ndi

from porevox.engine import reduce_blocks
from porevox.engine.blockwise import tree_reduce
from porevox.kernels.components import (
    block_components,
    combine_components,
    components_depth,
    merge_components,
    percolating_fraction,
)

from ..conftest import porous


def reference(solid, axis):
    """Fraction of solid in 6-connected components touching both end faces."""
    labels, _ = ndi.label(solid, ndi.generate_binary_structure(3, 1))
    lo = np.unique(np.take(labels, 0, axis=axis))
    hi = np.unique(np.take(labels, solid.shape[axis] - 1, axis=axis))
    through = np.intersect1d(lo[lo > 0], hi[hi > 0])
    return np.isin(labels, through).sum() / solid.sum()


def merged(solid, chunks):
    return merge_components(r for _, r in reduce_blocks(block_components, solid, components_depth(),
                                                        chunks=chunks))


@pytest.mark.parametrize("porosity", [0.45, 0.7])
def test_chunked_equals_whole_volume_label(rng, porosity):
    solid = porous((41, 52, 63), rng, porosity=porosity, sigma=1.5)
    whole = merge_components([block_components(solid)])
    chunked = merged(solid, (17, 23, 31))
    labels, n = ndi.label(solid, ndi.generate_binary_structure(3, 1))
    expected = np.sort(np.bincount(labels.ravel())[1:])
    np.testing.assert_array_equal(np.sort(whole["sizes"]), expected)
    np.testing.assert_array_equal(np.sort(chunked["sizes"]), expected)
    for axis in range(3):
        assert percolating_fraction(chunked, axis) == pytest.approx(reference(solid, axis), abs=1e-12)


@pytest.mark.parametrize("fan", [2, 3])
def test_tree_of_combined_blocks_equals_the_flat_merge(rng, fan):
    """Blocks combined with their neighbours level by level (on the workers) give the
    components of the whole volume; each level keeps only its boxes' faces."""
    solid = porous((41, 52, 63), rng, porosity=0.6, sigma=1.5)
    parts = reduce_blocks(block_components, solid, components_depth(), chunks=(9, 11, 13))
    tasks = [dask.delayed(r) for _, r in parts]
    root = tree_reduce(tasks, [b.core for b, _ in parts], combine_components, fan=fan).compute()
    assert root["origin"] == (0, 0, 0) and root["shape"] == solid.shape
    assert all(f is None for pair in root["faces"] for f in pair)     # only outer faces remain
    tree, flat = merge_components([root]), merge_components([r for _, r in parts])
    np.testing.assert_array_equal(np.sort(tree["sizes"]), np.sort(flat["sizes"]))
    for axis in range(3):
        assert percolating_fraction(tree, axis) == pytest.approx(reference(solid, axis), abs=1e-12)


def test_serpentine_joined_only_through_many_blocks():
    # one path snaking through every block: each block alone sees pieces
    solid = np.zeros((5, 40, 40), dtype=np.uint8)
    for k, y in enumerate(range(1, 39, 4)):
        solid[2, y, 1:39] = 1
        x = 38 if k % 2 == 0 else 1
        solid[2, y:y + 5, x] = 1
    solid[2, 0, 1] = 1                           # joined to the y = 0 face ...
    solid[2, 39, 38 if (len(range(1, 39, 4)) - 1) % 2 == 0 else 1] = 1   # ... and to y = 39
    solid[:, :, :][0, 20, 20] = 1                # an isolated voxel
    m = merged(solid, (3, 7, 9))
    assert percolating_fraction(m, 1) == pytest.approx(reference(solid, 1))
    assert 0 < percolating_fraction(m, 1) < 1
    assert percolating_fraction(m, 2) == pytest.approx(reference(solid, 2))


def test_empty_and_all_solid():
    assert np.isnan(percolating_fraction(merged(np.zeros((6, 7, 8), np.uint8), (4, 4, 4)), 1))
    assert percolating_fraction(merged(np.ones((6, 7, 8), np.uint8), (4, 4, 4)), 1) == 1.0


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match="3-D"):
        block_components(np.ones((4, 4), np.uint8))
