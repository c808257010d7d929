"""Blockwise execution: chunked results equal the whole-volume library call."""

import logging

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from porevox import InvalidVolumeError
from porevox.engine import map_kernel, run_by_block, store, write_blockwise
from porevox.engine.blockwise import block_slices, fit_chunks_to_depth
from porevox.engine.storage import create_volume
from porevox.kernels import gaussian, gaussian_depth

ODD = (17, 23, 64)
VS = (0.025, 0.0186, 0.0186)


def reference(image, sigma_vox):
    return ndi.gaussian_filter(image.astype(np.float32), sigma_vox, mode="nearest")


@pytest.fixture
def image(rng):
    return rng.integers(0, 65535, (45, 60, 150), dtype=np.uint16)  # last chunks >= halo


def test_map_kernel_equals_whole_volume_on_odd_chunks(image):
    darr = da.from_array(image, chunks=ODD)
    out = map_kernel(gaussian, darr, gaussian_depth(2.0), np.float32, sigma=2.0)
    assert out.chunks == darr.chunks
    np.testing.assert_allclose(out.compute(), reference(image, 2.0), rtol=1e-6, atol=1e-3)


def test_anisotropic_sigma_in_physical_units(image):
    sigma = 0.05  # µm: 2 voxels along z, ~2.7 along y and x
    depth = gaussian_depth(sigma, VS)
    assert depth == (8, 11, 11)
    out = map_kernel(gaussian, da.from_array(image, chunks=ODD), depth, np.float32,
                     sigma=sigma, voxel_size=VS)
    expected = reference(image, [sigma / v for v in VS])
    np.testing.assert_allclose(out.compute(), expected, rtol=1e-6, atol=1e-3)


def test_chunks_smaller_than_halo_are_rechunked_and_logged(image, caplog):
    darr = da.from_array(image, chunks=(5, 7, 9))
    with caplog.at_level(logging.INFO, logger="porevox"):
        out = map_kernel(gaussian, darr, gaussian_depth(2.0), np.float32, sigma=2.0)
    assert "must be at least the halo" in caplog.text
    for axis_chunks in out.chunks:
        assert min(axis_chunks) >= 8 or len(axis_chunks) == 1
        assert all(c == axis_chunks[0] for c in axis_chunks[:-1])   # regular: aligned
    np.testing.assert_allclose(out.compute(), reference(image, 2.0), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("n,chunk,depth", [(100, 17, 16), (45, 17, 8), (64, 64, 10), (30, 4, 12)])
def test_fit_chunks_to_depth(n, chunk, depth):
    darr = da.zeros((n, 8, 8), chunks=(chunk, 8, 8))
    fitted, d = fit_chunks_to_depth(darr, (depth, 0, 0))
    c = fitted.chunks[0]
    assert sum(c) == n
    assert len(c) == 1 or (min(c) >= depth and d[0] == depth)
    assert all(x == c[0] for x in c[:-1])


def test_inputs_numpy_zarr_and_path(image, tmp_path):
    vol = create_volume(tmp_path / "v.zarr", image.shape, image.dtype, VS, chunks=ODD)
    vol.image[:] = image
    ref = reference(image, 1.0)
    for src in (image, vol.image, tmp_path / "v.zarr"):
        out = map_kernel(gaussian, src, gaussian_depth(1.0), np.float32, sigma=1.0)
        np.testing.assert_allclose(out.compute(), ref, rtol=1e-6, atol=1e-3)


def test_input_not_modified(image):
    before = image.copy()
    map_kernel(gaussian, image, 3, np.float32, sigma=1.0).compute()
    np.testing.assert_array_equal(image, before)


def test_wrong_ndim_raises():
    with pytest.raises(InvalidVolumeError, match="must be 3-D"):
        map_kernel(gaussian, np.zeros((10, 10)), 2, np.float32)


@pytest.mark.parametrize("fill", [0, 1])
def test_constant_volumes(fill):
    img = np.full((20, 30, 40), fill, np.uint8)
    out = map_kernel(gaussian, da.from_array(img, chunks=(7, 11, 13)), 5, np.float32, sigma=1.2)
    np.testing.assert_allclose(out.compute(), fill, atol=1e-6)


def test_block_slices_cover_exactly():
    shape, chunks = (10, 7, 5), (4, 3, 5)
    hits = np.zeros(shape, int)
    for box in block_slices(shape, chunks):
        hits[box] += 1
    assert (hits == 1).all()


def test_write_blockwise_and_run_by_block_equal_whole(image, tmp_path, client):
    """Both runners, on a real cluster, write aligned chunks equal to scipy's result."""
    vol = create_volume(tmp_path / "v.zarr", image.shape, image.dtype, VS, chunks=ODD)
    vol.image[:] = image
    ref = reference(image, 1.5)
    a = write_blockwise(vol, gaussian, "image", "labels/smooth", depth=gaussian_depth(1.5),
                        dtype=np.float32, sigma=1.5)
    b = run_by_block(vol, gaussian, "image", "labels/smooth2", depth=gaussian_depth(1.5),
                     dtype=np.float32, sigma=1.5)
    assert not a.skipped and not b.skipped
    for name in ("labels/smooth", "labels/smooth2"):
        arr = zarr.open_array(str(tmp_path / "v.zarr" / name), mode="r")
        np.testing.assert_allclose(arr[:], ref, rtol=1e-6, atol=1e-3)
    assert vol.array("labels/smooth2").chunks == (17, 23, 64)
    assert sorted(vol.labels) == ["smooth", "smooth2"]


def test_store_rejects_nothing_regular_chunks(tmp_path, rng):
    """Irregular Dask chunks are made regular so storage chunks stay aligned."""
    data = rng.random((30, 20, 10)).astype(np.float32)
    darr = da.from_array(data, chunks=((5, 15, 10), (20,), (10,)))
    vol = create_volume(tmp_path / "v.zarr", (30, 20, 10), "uint8", VS)
    res = store(vol, "labels/x", darr)
    assert vol.array("labels/x").chunks == (5, 20, 10)
    np.testing.assert_array_equal(vol.array("labels/x")[:], data)
    assert res.record["outputs"] == ["labels/x"]
