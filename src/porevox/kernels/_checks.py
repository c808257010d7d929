"""Argument checks shared by the kernels: one message for one mistake."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError

_AXES = {2: "(y, x)", 3: "(z, y, x)"}


def check_voxel_size(voxel_size: Any, n: int = 3, name: str = "voxel_size") -> tuple[float, ...]:
    """`voxel_size` as `n` positive floats, or InvalidVolumeError naming what came."""
    message = f"{name} must be {n} positive numbers {_AXES[n]}; got {voxel_size!r}"
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as err:
        raise InvalidVolumeError(message) from err
    if len(values) != n or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidVolumeError(message)
    return values


def check_positive(value: Any, name: str, detail: str = "",
                   error: type[Exception] = InvalidVolumeError) -> float:
    """`value` as a finite float > 0, else `error` saying "`name` must be a positive
    number`detail`; got ..." (`detail` names the unit)."""
    message = f"{name} must be a positive number{detail}; got {value!r}"
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise error(message) from err
    if not (math.isfinite(out) and out > 0):
        raise error(message)
    return out


def check_segmentation(solid: Any, name: str = "solid", ndim: int = 3, hint: str = ""):
    """`solid` itself (NumPy or CuPy, not converted) if it is an `ndim`-D bool or integer
    array (nonzero = solid); else TypeError / InvalidVolumeError naming the fix (`hint`
    appended to the wrong-ndim message)."""
    if not hasattr(solid, "shape") or not hasattr(solid, "dtype") or not hasattr(solid, "ndim"):
        raise TypeError(f"{name} must be a {ndim}-D array (1 = solid); got {type(solid).__name__}")
    if solid.ndim != ndim:
        raise InvalidVolumeError(f"{name} must be {ndim}-D {_AXES[ndim]}; got {solid.ndim}-D of shape "
                                 f"{tuple(solid.shape)}{hint}")
    if solid.dtype != bool and not np.issubdtype(solid.dtype, np.integer):
        raise TypeError(f"{name} must be a bool or integer segmentation (nonzero = solid); got "
                        f"{solid.dtype}; threshold or segment the image first")
    return solid
