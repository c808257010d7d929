"""NumPy or CuPy, chosen from the blocks.

The GPU is used only where CuPy imports *and* a CUDA device is present
(``cupy.cuda.is_available()``): on a machine without one, ``import cupy`` may
succeed and fail on first use.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

logger = logging.getLogger(__name__)


@functools.cache
def gpu_available() -> bool:
    try:
        import cupy
    except Exception:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def get_array_module(x):
    """``numpy`` or ``cupy``, whichever `x` belongs to."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def ndimage_module(x):
    """``scipy.ndimage`` or ``cupyx.scipy.ndimage`` to match `x`."""
    if get_array_module(x) is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def resolve(backend: str = "auto") -> str:
    """``"numpy"`` or ``"cupy"`` from a user's choice (``"auto"`` picks the GPU if any)."""
    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy'; got {backend!r}")
    if backend == "cupy" and not gpu_available():
        raise ValueError("backend='cupy' needs CuPy and a CUDA device; none is present, use 'numpy'")
    if backend == "auto":
        return "cupy" if gpu_available() else "numpy"
    return backend


def to_backend(darr, backend: str = "auto"):
    """Move a Dask array's blocks to the chosen array library."""
    name = resolve(backend)
    current = get_array_module(darr._meta).__name__
    if name == current:
        return darr
    if name == "cupy":
        import cupy

        return darr.map_blocks(cupy.asarray, dtype=darr.dtype, meta=cupy.empty((0,) * darr.ndim, darr.dtype))
    return darr.map_blocks(to_numpy, dtype=darr.dtype, meta=np.empty((0,) * darr.ndim, darr.dtype))


def to_device(x, backend: str):
    """`x` as an array of `backend` (``"numpy"`` or ``"cupy"``, as from :func:`resolve`)."""
    if backend == "cupy":
        import cupy

        return cupy.asarray(x)
    return to_numpy(x)


def to_numpy(x) -> np.ndarray:
    """A host copy of `x` (no-op for NumPy)."""
    return np.asarray(x) if get_array_module(x) is np else x.get()
