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


# --------------------------------------------------------------------------- stored reductions
def _sum_and_edges(block, *, core, offset, volume_shape):
    """A reducing kernel: the core's sum and the halo it was given (for the check)."""
    return {"sum": int(block[core].astype(np.int64).sum()), "shape": block.shape, "offset": offset}


def test_block_tasks_on_a_stored_array_read_their_own_boxes(tmp_path, rng):
    """Read straight from the store, each task depends only on the array's handle (so
    the scheduler queues them as root tasks) and sees the same block as the Dask path."""
    import dask

    from porevox.engine import block_tasks
    from porevox.engine.storage import dense_array

    data = rng.integers(0, 255, (19, 37, 41), dtype=np.uint8)
    arr = dense_array(zarr.open_group(str(tmp_path / "g.zarr"), mode="w"), "a", shape=data.shape,
                      dtype=np.uint8, chunks=(5, 8, 13))
    arr[...] = data
    cores = list(block_slices(data.shape, (7, 11, 9)))        # not the storage chunks
    blocks, stored = block_tasks(_sum_and_edges, arr, cores, (1, 2, 3))
    _, lazy = block_tasks(_sum_and_edges, da.from_array(data, chunks=(5, 8, 13)), cores, (1, 2, 3))
    graph = dict(dask.delayed(stored).__dask_graph__())
    assert len(graph) == len(cores) + 2          # the tasks, one handle, the list
    got, want = dask.compute(stored, lazy)
    assert got == want
    assert sum(r["sum"] for r in got) == int(data.astype(np.int64).sum())


def test_checked_reads_across_chunks_name_the_bad_chunk(tmp_path, rng):
    from porevox.engine import create_volume
    from porevox.errors import ChunkError

    vol = create_volume(tmp_path / "v.zarr", (12, 16, 16), np.uint8, (1, 1, 1), chunks=(4, 8, 8))
    vol.image[...] = rng.integers(1, 255, (12, 16, 16), dtype=np.uint8)
    reader = vol.reader("image")
    box = (slice(2, 9), slice(3, 16), slice(0, 10))         # chunks (0..2, 0..1, 0..1)
    np.testing.assert_array_equal(reader[box], vol.image[box])
    chunk = tmp_path / "v.zarr" / "image" / "c" / "1" / "1" / "0"
    chunk.write_bytes(b"not a chunk")
    with pytest.raises(ChunkError, match=r"array image: chunk \(1, 1, 0\) cannot be read"):
        reader[box]
    chunk.unlink()
    with pytest.raises(ChunkError, match=r"array image: chunk \(1, 1, 0\) is missing"):
        reader[box]
    reader[:4, :8, :8]                                        # other chunks still read


@pytest.mark.parametrize("chunks", [(1, 256, 256), (64, 256, 256), (8, 16, 16)])
def test_compute_box_fits_the_budget_and_grows_toward_a_cube(monkeypatch, chunks):
    """Slice-wise, too large and small chunks all become boxes that fit one task's
    budget, are within 4x of a cube, leave every thread 4 boxes, and could not be
    doubled along their thinnest axis; explicit chunks are kept where they fit."""
    import importlib

    from porevox.engine.blockwise import compute_box

    cluster = importlib.import_module("porevox.engine.cluster")
    monkeypatch.setattr(cluster, "chunk_bytes_budget", lambda default=None: 2**20)   # 4.5 MiB a task
    monkeypatch.setattr(cluster, "total_threads", lambda: 2)
    shape, bpv, budget = (64, 256, 256), 32, 4.5 * 2**20

    def need(b):
        return np.prod([min(n, x + 2) for n, x in zip(shape, b)]) * bpv

    box = compute_box(shape, chunks, bpv, depth=1)
    assert need(box) <= budget
    assert max(box) <= 4 * min(box)
    assert np.prod([-(-n // b) for n, b in zip(shape, box)]) >= 8
    thin = int(np.argmin(box))
    assert need([2 * b if a == thin else b for a, b in enumerate(box)]) > budget
    kept = compute_box(shape, chunks, bpv, depth=1, grow=False)
    assert kept == tuple(chunks) if need(chunks) <= budget else need(kept) <= budget < need(chunks)
