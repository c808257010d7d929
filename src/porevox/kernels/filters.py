"""Smoothing filters (NumPy or CuPy blocks)."""

from __future__ import annotations

import numpy as np

from ..backend import ndimage_module


def gaussian(image, *, sigma=1.0, voxel_size=(1.0, 1.0, 1.0), truncate=4.0, mode="nearest"):
    """Gaussian smoothing with `sigma` in physical units (same unit as `voxel_size`).

    Parameters
    ----------
    image : (P, M, N) ndarray (NumPy or CuPy)
        Not modified.
    sigma : float or 3 floats
        Standard deviation along (z, y, x), in the unit of `voxel_size`; with the
        default unit voxel size it is in voxels.
    voxel_size : 3 floats
        Size along (z, y, x).
    truncate : float
        Kernel radius in standard deviations.
    mode : str
        How the filter extends the *outer faces of the volume* (inside a volume the
        engine provides real neighbours as a halo).

    Returns
    -------
    (P, M, N) float32 ndarray, same array library as `image`.
    """
    ndi = ndimage_module(image)
    return ndi.gaussian_filter(image.astype(np.float32, copy=False),
                               sigma=_sigma_voxels(sigma, voxel_size), truncate=truncate,
                               mode=mode)


def gaussian_depth(sigma=1.0, voxel_size=(1.0, 1.0, 1.0), truncate=4.0):
    """Halo (voxels per axis) :func:`gaussian` needs to match the whole-volume result."""
    # scipy's kernel radius is int(truncate * sigma + 0.5) voxels
    return tuple(int(truncate * s + 0.5) for s in _sigma_voxels(sigma, voxel_size))


def _sigma_voxels(sigma, voxel_size):
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (3,))
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (3,) or not np.all(vs > 0) or not np.all(sig >= 0):
        raise ValueError(
            f"sigma must be >= 0 and voxel_size 3 positive numbers; got {sigma!r}, {voxel_size!r}"
        )
    return tuple(float(s) for s in sig / vs)


__all__ = ["gaussian", "gaussian_depth"]
