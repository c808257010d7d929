"""pv.distance_transform / pv.feature_transform on Dask arrays: equal to SciPy's on the
whole volume, on deliberately odd chunks, with bounded tasks."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

import porevox as pv
from porevox.kernels.edt import feature_transform as whole_features
from porevox.pipelines import distance
from porevox.pipelines.distance import _line_chunks, radius_grid

from ..conftest import porous


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.025, 0.0186, 0.0186)])
def test_chunked_equals_scipy_whole(vs):
    solid = porous((37, 41, 53), np.random.default_rng(11), porosity=0.3, sigma=2.5)
    arr = da.from_array(solid, chunks=(11, 13, 17))
    feats = pv.feature_transform(arr, voxel_size=vs)
    assert feats.shape == (3,) + solid.shape and feats.chunks[1:] == arr.chunks
    np.testing.assert_array_equal(feats.compute(), whole_features(solid, voxel_size=vs))
    ref = ndi.distance_transform_edt(solid, sampling=vs)
    got = pv.distance_transform(arr, voxel_size=vs).compute()
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    grid = radius_grid(feats, arr, voxel_size=vs).compute()
    assert grid.shape == (4, 4, 4) and grid.max() == ref.max()
    assert grid[0, 0, 0] == ref[:11, :13, :17].max()


def test_line_bundles_bounded_by_the_budget():
    # whole lines along the pass axis, the cross-section halved to fit
    assert _line_chunks((2048,) * 3, (64, 64, 64), 1, 2048 * 32 * 32) == (32, 2048, 32)
    assert _line_chunks((100, 50, 60), (20, 20, 20), 0, 10**9) == (100, 20, 20)


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (0.025, 0.0186, 0.0186)])
def test_stored_passes_equal_the_whole_kernel(tmp_path, monkeypatch, vs):
    """The transform whose passes go through Zarr arrays (a volume's path): every
    voxel's features equal the whole kernel's, and the radius grid the largest
    distance per chunk, on odd chunks, with bundles of one chunk's lines."""
    import dask
    import zarr

    solid = porous((37, 41, 53), np.random.default_rng(5), porosity=0.3, sigma=2.5).astype(np.uint8)
    chunks = (11, 13, 17)
    image = zarr.create_array(str(tmp_path / "image"), data=solid, chunks=(8, 20, 20))
    arrays = [zarr.create_array(str(tmp_path / f"f{k}"), shape=(k,) + solid.shape, dtype="int32",
                                chunks=(k,) + chunks) for k in (1, 2, 3)]
    monkeypatch.setattr(distance, "chunk_bytes_budget", lambda: 1)   # one chunk's lines a task
    assert len(distance._bundles(solid.shape, chunks, 0, 1)) == 4 * 4
    grid = distance.stored_feature_transform(image, arrays[2], arrays[:2], voxel_size=vs)
    with dask.config.set(scheduler="threads"):
        grid = dask.compute(grid)[0]
    np.testing.assert_array_equal(arrays[2][...], whole_features(solid, voxel_size=vs))
    ref = ndi.distance_transform_edt(solid, sampling=vs)
    assert grid.shape == (4, 4, 4) and grid.max() == ref.max()
    assert grid[1, 2, 3] == ref[11:22, 26:39, 51:53].max()
