"""Phases of a label image: the voxels whose value is one of a set, read as 1.

Every feature is of one phase (DESIGN.md): a value, a union of values (``"1+2"``) or
a name recorded on the label image (``porevox ingest --phase-names``). The default,
phase 1 of a binary image, is the solid of a porevox segmentation. A stored label
image is wrapped in a :class:`PhaseView`, so the tasks that read their own blocks
from the store read 0/1 blocks of the phase, and the rest of the engine sees a
binary array.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from ..errors import InvalidVolumeError
from .storage import CheckedArray

#: The attribute of a label array that names its phases: {"<value>": {"name", "voxels"}}.
PHASES = "phases"

#: The phase read when none is named: the solid of a porevox segmentation.
DEFAULT = (1,)


class PhaseView(CheckedArray):
    """A stored label image read as uint8 ``1`` where the value is one of `values`."""

    def __init__(self, base: CheckedArray, values: Sequence[int]):
        super().__init__(base.arr, base.tomogram, base.name)
        self.values = tuple(int(v) for v in values)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key):
        return select(super().__getitem__(key), self.values)

    def __dask_tokenize__(self):
        return super().__dask_tokenize__() + ("phase", self.values)


def select(labels, values: Sequence[int]):
    """0/1 (uint8) where `labels` (NumPy, CuPy or Dask) holds one of `values`."""
    values = tuple(int(v) for v in values)
    if hasattr(labels, "dask"):
        return labels.map_blocks(select, values, dtype=np.uint8)
    hit = labels == values[0]
    for v in values[1:]:
        hit |= labels == v
    return hit.view(np.uint8)


def phase_of(source: Any, values: Sequence[int] | None):
    """`source` (a stored label image, a NumPy or Dask array) read as the phase
    `values`; `source` itself where `values` is None (read nonzero as the phase)."""
    if values is None:
        return source
    if isinstance(source, zarr.Array):
        source = CheckedArray(source, str(source.store), source.path)
    if isinstance(source, CheckedArray):
        return PhaseView(source, values)
    return select(source, values)


def phase_dask(view: PhaseView):
    """A :class:`PhaseView` as a Dask array over its storage chunks."""
    import dask.array as da
    import dask.base

    return da.from_array(view, chunks=view.chunks, asarray=False, fancy=False,
                         meta=np.empty((0,) * view.ndim, np.uint8),
                         name=f"phase-{dask.base.tokenize(view)}")


# --------------------------------------------------------------------------- names
def names(arr: zarr.Array | None) -> dict[int, str]:
    """Value → name of the phases recorded on a label image (``--phase-names``)."""
    recorded = {} if arr is None else (arr.attrs.get(PHASES) or {})
    out = {}
    for value, info in recorded.items():
        name = info.get("name") if isinstance(info, Mapping) else None
        if name and name != f"phase {value}":      # ingest's stand-in for an unnamed value
            out[int(value)] = str(name)
    return out


def parse(spec: Any, named: Mapping[int, str] | None = None, *, where: str = "the labels") -> tuple[int, ...]:
    """A phase as its sorted values: an int, a name, or several joined by ``+`` or
    ``,`` (``"1+2"``, ``"LSM+YSZ"``), or a sequence of those. Raises a one-line error
    naming the phases there are."""
    named = dict(named or {})
    by_name = {n.lower(): v for v, n in named.items()}
    parts = ([spec] if isinstance(spec, (int, np.integer)) else
             list(spec) if isinstance(spec, (list, tuple)) else re.split(r"[+,]", str(spec)))
    values = set()
    for part in parts:
        text = str(part).strip()
        if re.fullmatch(r"\d+", text) and int(text) < 2**16:
            values.add(int(text))
        elif text.lower() in by_name:
            values.add(by_name[text.lower()])
        else:
            known = ", ".join(f"{v} = {n}" for v, n in sorted(named.items()))
            raise InvalidVolumeError(
                f"phase {spec!r}: {text!r} is neither a label value (0-65535) nor a phase name of "
                f"{where} ({known or 'it names none'}); give a value, values joined by '+', or a name")
    if not values:
        raise InvalidVolumeError(f"phase {spec!r} names no label value; give e.g. 1, 1+2 or a phase name")
    return tuple(sorted(values))


def label(values: Sequence[int], named: Mapping[int, str] | None = None) -> str:
    """The phase as people read it: its names where every value has one, else its
    values, joined by ``+``."""
    named = dict(named or {})
    if all(v in named for v in values):
        return "+".join(named[v] for v in values)
    return "+".join(map(str, values))


def key(labels: str, values: Sequence[int] | None) -> str:
    """Where a volume keeps results of phase `values` of ``labels/<labels>``: the label
    image's name for the default phase (1), else ``<labels>.phase<v>[_<v>...]``."""
    if values is None or tuple(values) == DEFAULT:
        return labels
    return f"{labels}.phase{'_'.join(map(str, values))}"


__all__ = ["DEFAULT", "PHASES", "PhaseView", "key", "label", "names", "parse", "phase_dask", "phase_of",
           "select"]
