"""Connected components of the solid across blocks: which solid is joined to the end
faces of the volume.

Each block labels its own core (6-connectivity: voxels sharing a face, the
connectivity that carries current and the fast-marching stencil's) and reports, per
local component, its size and which outer faces of the volume it touches, plus the
labels on the core's six faces. :func:`merge_components` joins components across
block faces with a union-find and returns the global components. Nothing but the
face planes leaves a block, so the merge holds one plane per block face.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..backend import to_numpy

#: Face connectivity (6-neighbours).
STRUCTURE = ndimage.generate_binary_structure(3, 1)


def components_depth() -> tuple[int, int, int]:
    """No halo: a block labels its core; faces are matched in the merge."""
    return (0, 0, 0)


def block_components(solid, *, core=None, offset=(0, 0, 0), volume_shape=None) -> dict:
    """Label the solid of a block's core and describe its components.

    Parameters
    ----------
    solid : (P, M, N) array (NumPy or CuPy), nonzero = solid
        The block (its core plus any halo). Not modified.
    core : 3 slices, optional
        The core inside `solid` (default: all of it).
    offset : 3 ints
        Volume index of ``solid[0, 0, 0]``.
    volume_shape : 3 ints, optional
        Shape of the whole volume (default: the block's).

    Returns
    -------
    dict
        ``origin`` (volume index of the core's first voxel), ``shape`` (the core's),
        ``sizes`` (int64, voxels of local components 1..n), ``touch`` ((n, 3, 2) bool:
        component touches the volume's low / high face along each axis), ``faces``
        (``faces[axis][side]``: the core's label plane on that side, in the smallest
        unsigned type that holds n; None on the volume's outer faces, which no other
        block shares).
    """
    solid = to_numpy(solid)
    if solid.ndim != 3:
        raise ValueError(f"solid must be 3-D (z, y, x); got {solid.ndim}-D of shape {solid.shape}: "
                         "pass a volume, not a slice")
    if core is None:
        core = tuple(slice(0, n) for n in solid.shape)
    volume_shape = tuple(volume_shape or solid.shape)
    block = solid[core] != 0
    labels, n = ndimage.label(block, STRUCTURE)
    labels = labels.astype(np.uint32, copy=False)
    small = np.min_scalar_type(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    origin = tuple(int(o + c.start) for o, c in zip(offset, core))
    touch = np.zeros((n, 3, 2), dtype=bool)
    faces = []
    for axis in range(3):
        lo = np.take(labels, 0, axis=axis)
        hi = np.take(labels, labels.shape[axis] - 1, axis=axis)
        first, last = origin[axis] == 0, origin[axis] + labels.shape[axis] == volume_shape[axis]
        if first:
            touch[np.unique(lo[lo > 0]) - 1, axis, 0] = True
        if last:
            touch[np.unique(hi[hi > 0]) - 1, axis, 1] = True
        # the merge needs the faces a neighbouring block shares, in the fewest bytes
        faces.append((None if first else lo.astype(small, copy=True),
                      None if last else hi.astype(small, copy=True)))
    return {"origin": origin, "shape": labels.shape, "sizes": sizes, "touch": touch,
            "faces": faces}


def _join(parts):
    """The global component of every local one, over blocks that share faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    base = np.cumsum([0] + [len(p["sizes"]) for p in parts])
    total = int(base[-1])
    where = {p["origin"]: (k, p) for k, p in enumerate(parts)}
    links = [np.empty((2, 0), dtype=np.int64)]
    for k, p in enumerate(parts):
        for axis in range(3):
            nxt = list(p["origin"])
            nxt[axis] += p["shape"][axis]
            if tuple(nxt) not in where:
                continue
            j, q = where[tuple(nxt)]
            a, b = p["faces"][axis][1], q["faces"][axis][0]
            if a.shape != b.shape:
                raise ValueError(f"blocks at {p['origin']} and {q['origin']} share a face of different "
                                 "shapes; merge blocks of one regular grid")
            both = (a > 0) & (b > 0)
            links.append(np.unique(np.stack([a[both].astype(np.int64) - 1 + base[k],
                                             b[both].astype(np.int64) - 1 + base[j]]), axis=1))
    links = np.concatenate(links, axis=1)
    graph = coo_matrix((np.ones(links.shape[1], dtype=np.int8), (links[0], links[1])),
                       shape=(total, total))
    m, inverse = connected_components(graph, directed=False)
    sizes = np.zeros(m, dtype=np.int64)
    touch = np.zeros((m, 3, 2), dtype=bool)
    if total:
        np.add.at(sizes, inverse, np.concatenate([p["sizes"] for p in parts]))
        np.logical_or.at(touch, inverse, np.concatenate([p["touch"] for p in parts]))
    return base, inverse, sizes, touch


def combine_components(parts) -> dict:
    """Join blocks that tile a box into one :func:`block_components` result for the
    box: its components, and its faces relabelled with them. Combining neighbours
    level by level (a tree) keeps every merge to one box's faces, whatever the
    number of blocks."""
    parts = list(parts)
    base, inverse, sizes, touch = _join(parts)
    lo = np.min([p["origin"] for p in parts], axis=0)
    hi = np.max([np.add(p["origin"], p["shape"]) for p in parts], axis=0)
    shape = tuple(int(h - o) for h, o in zip(hi, lo))
    small = np.min_scalar_type(len(sizes))
    faces = []
    for axis in range(3):
        sides = []
        for side, at in ((0, lo[axis]), (1, hi[axis])):
            plane = np.zeros([n for a, n in enumerate(shape) if a != axis], small)
            outer = False
            for k, p in enumerate(parts):
                edge = p["origin"][axis] + (p["shape"][axis] if side else 0)
                if edge != at:
                    continue
                face = p["faces"][axis][side]
                if face is None:
                    outer = True
                    continue
                lab = np.zeros(len(p["sizes"]) + 1, np.int64)
                lab[1:] = inverse[base[k]:base[k + 1]] + 1
                box = tuple(slice(p["origin"][a] - lo[a], p["origin"][a] - lo[a] + p["shape"][a])
                            for a in range(3) if a != axis)
                plane[box] = lab[face.astype(np.int64)]
            sides.append(None if outer else plane)
        faces.append(tuple(sides))
    return {"origin": tuple(int(o) for o in lo), "shape": shape, "sizes": sizes, "touch": touch,
            "faces": faces}


def merge_components(parts) -> dict:
    """Join the blocks' components (results of :func:`block_components` or
    :func:`combine_components`, any order) into the volume's.

    Returns
    -------
    dict
        ``sizes`` (int64 per global component), ``touch`` ((m, 3, 2) bool), and
        ``solid`` (all solid voxels).
    """
    _, _, sizes, touch = _join(list(parts))
    return {"sizes": sizes, "touch": touch, "solid": int(sizes.sum())}


def through_labels(parts, axis: int) -> list[np.ndarray]:
    """For each block of `parts` (results of :func:`block_components`), which of its
    local labels belong to a component joined to both end faces along `axis`: a
    uint8 table indexed by local label (0 for the background)."""
    parts = list(parts)
    base, inverse, _, touch = _join(parts)
    through = touch[:, axis, 0] & touch[:, axis, 1]
    tables = []
    for k, p in enumerate(parts):
        table = np.zeros(len(p["sizes"]) + 1, np.uint8)
        table[1:] = through[inverse[base[k]:base[k + 1]]]
        tables.append(table)
    return tables


def percolating_fraction(merged: dict, axis: int) -> float:
    """Solid voxels in components joined to both end faces along `axis`, over all
    solid voxels (NaN without solid)."""
    if merged["solid"] == 0:
        return float("nan")
    through = merged["touch"][:, axis, 0] & merged["touch"][:, axis, 1]
    return float(merged["sizes"][through].sum() / merged["solid"])


__all__ = ["block_components", "combine_components", "components_depth", "merge_components",
           "percolating_fraction", "through_labels"]
