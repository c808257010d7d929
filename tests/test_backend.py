import dask.array as da
import numpy as np
import pytest

from porevox.backend import get_array_module
from porevox.engine import gpu_available, map_kernel, resolve_backend, to_backend
from porevox.kernels import gaussian, gaussian_depth


def test_numpy_blocks_stay_numpy():
    darr = da.zeros((8, 8, 8), chunks=4)
    assert to_backend(darr, "numpy") is darr
    assert get_array_module(np.zeros(3)) is np


def test_resolve_backend():
    assert resolve_backend("numpy") == "numpy"
    assert resolve_backend("auto") == ("cupy" if gpu_available() else "numpy")
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("opencl")
    if not gpu_available():
        with pytest.raises(ValueError, match="needs CuPy and a CUDA device"):
            resolve_backend("cupy")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_gaussian_on_cupy_blocks_equals_numpy(rng):
    import cupy

    img = rng.integers(0, 65535, (40, 50, 60), dtype=np.uint16)
    darr = da.from_array(img, chunks=(17, 23, 30))
    ref = map_kernel(gaussian, darr, gaussian_depth(1.5), np.float32, sigma=1.5).compute()
    gpu = map_kernel(gaussian, to_backend(darr, "cupy"), gaussian_depth(1.5), np.float32, sigma=1.5)
    assert isinstance(gpu._meta, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(gpu.compute()), ref, rtol=1e-5, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_run_by_block_on_gpu_equals_cpu(rng, tmp_path):
    from porevox.engine import run_by_block
    from porevox.engine.storage import create_volume

    vol = create_volume(tmp_path / "v.zarr", (30, 40, 50), "uint16", (1, 1, 1), chunks=(13, 17, 50))
    vol.image[:] = rng.integers(0, 65535, (30, 40, 50), dtype=np.uint16)
    for name, backend in (("labels/cpu", "numpy"), ("labels/gpu", "cupy")):
        run_by_block(vol, gaussian, "image", name, depth=gaussian_depth(1.5), dtype=np.float32,
                     backend=backend, sigma=1.5)
    np.testing.assert_allclose(vol.array("labels/gpu")[:], vol.array("labels/cpu")[:],
                               rtol=1e-5, atol=1e-2)
