"""Training data for the generative models: 2-D crops of the segmented slices of a
study, labelled with their sample's paste, temperature and conductivity.

Crops are cut, never resized, so a crop keeps the slice's pixel size (the paper:
224 × 224 px of 18.6 nm; the CPU default here: 64 × 64). They tile each z-slice
without overlap (``stride`` = ``size`` by default) and are read from Zarr when asked
for (:class:`CropBatches`), so a study larger than memory streams. A class is a
(paste, temperature) pair; its conductivity is the mean over its samples' VOIs.
Samples marked ``held_out`` in ``study.yaml`` are left out unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import open_volume
from ..engine.storage import LABELS
from ..errors import InvalidVolumeError
from .segmentation_study import study_volumes


@dataclass
class CropIndex:
    """Where every crop of a study lies, and its condition."""

    paths: list[str]                    # one volume per sample used
    labels: str                         # the label image: labels/<labels>
    size: int
    pixel_size: tuple[float, float]     # (y, x), in the volumes' unit
    classes: list[dict]                 # {"paste", "temperature_c", "conductivity", "samples"}
    where: np.ndarray                   # (n, 4) int: volume, z, y0, x0
    label: np.ndarray                   # (n,) class index
    value: np.ndarray                   # (n,) the sample's conductivity
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.where)

    def read(self, i: int, arrays: dict | None = None) -> np.ndarray:
        """Crop `i` as a ``(size, size)`` uint8 image (1 = copper)."""
        v, z, y0, x0 = (int(a) for a in self.where[i])
        arrays = {} if arrays is None else arrays
        if v not in arrays:
            arrays[v] = open_volume(self.paths[v], mode="r").array(f"{LABELS}/{self.labels}")
        return np.asarray(arrays[v][z, y0:y0 + self.size, x0:x0 + self.size], dtype=np.uint8)

    def load(self, indices=None) -> np.ndarray:
        """The crops `indices` (default all) in memory, ``(n, size, size)`` uint8."""
        indices = range(len(self)) if indices is None else indices
        arrays: dict = {}
        return np.stack([self.read(i, arrays) for i in indices]) if len(indices) else \
            np.empty((0, self.size, self.size), np.uint8)


def crop_index(study: str | os.PathLike, *, labels: str = "unet", size: int = 64,
               stride: int | None = None, every: int = 1, held_out: bool = False) -> CropIndex:
    """Index the crops of every (training) sample of `study`: ``size`` × ``size``
    pixels every ``stride`` pixels in y and x, on every ``every``-th z-slice."""
    if size < 8 or size % 8:
        raise InvalidVolumeError(f"crop size must be a positive multiple of 8 pixels; got {size}")
    stride = size if stride is None else int(stride)
    if stride < 1 or every < 1:
        raise InvalidVolumeError(f"stride and every must be at least 1; got {stride}, {every}")
    folder, samples = study_volumes(study)
    samples = [s for s in samples if held_out or not s.get("held_out")]
    keys = sorted({(s["paste"], int(s["temperature_c"])) for s in samples},
                  key=lambda k: (k[0], k[1]))
    classes = [{"paste": p, "temperature_c": t, "samples": [], "conductivity": float("nan")}
               for p, t in keys]
    paths, where, label, value, pixel = [], [], [], [], None
    for s in samples:
        path = s["volume"]
        vol = open_volume(path, mode="r")
        if labels not in vol.labels:
            raise InvalidVolumeError(f"{path} has no labels/{labels}; segment it first or pass "
                                     f"--labels one of {', '.join(vol.labels) or 'none'}")
        nz, ny, nx = vol.array(f"{LABELS}/{labels}").shape
        if size > min(ny, nx):
            raise InvalidVolumeError(f"crop size {size} exceeds the {ny} × {nx} slices of {path}; "
                                     "choose a smaller --size")
        px = tuple(vol.voxel_size[1:])
        if pixel is None:
            pixel = px
        elif not np.allclose(px, pixel, rtol=1e-6):
            raise InvalidVolumeError(f"{path} has pixels of {px}, other samples {pixel}: crops "
                                     "are cut, not resized, so a study must share one pixel size")
        c = keys.index((s["paste"], int(s["temperature_c"])))
        classes[c]["samples"].append(s["id"])
        v = len(paths)
        paths.append(str(path))
        ys, xs = range(0, ny - size + 1, stride), range(0, nx - size + 1, stride)
        for z in range(0, nz, every):
            for y0 in ys:
                for x0 in xs:
                    where.append((v, z, y0, x0))
                    label.append(c)
                    value.append(float(s.get("conductivity", np.nan)))
    for c in classes:
        sig = [float(s.get("conductivity", np.nan)) for s in samples if s["id"] in c["samples"]]
        c["conductivity"] = float(np.mean(sig)) if sig else float("nan")
    return CropIndex(paths, labels, size, pixel, classes, np.asarray(where, dtype=np.int64).reshape(-1, 4),
                     np.asarray(label, dtype=np.int64), np.asarray(value, dtype=np.float64),
                     {"study": str(Path(folder)), "stride": stride, "every": every, "held_out": held_out})


class CropBatches:
    """The crops of a :class:`CropIndex` as a lazily read stack of signed images:
    ``batches[indices]`` reads those crops from Zarr and returns them as a float tensor
    ``(n, 1, s, s)`` in {−1, +1}, as indexing the in-memory stack would. Training
    draws its batches from this when the crops do not fit the memory allowed them,
    so a study larger than memory streams."""

    def __init__(self, index: CropIndex):
        self.index, self._arrays = index, {}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.index), 1, self.index.size, self.index.size)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, indices):
        from ..models.diffusion import to_signed

        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        return to_signed(np.stack([self.index.read(int(i), self._arrays) for i in idx]))


__all__ = ["CropBatches", "CropIndex", "crop_index"]
