"""Exact Euclidean feature and distance transforms, separable, one axis at a time.

The transform of the foreground (nonzero) is the nearest background voxel of every
voxel (its *feature*), found in three passes (Saito-Toriwaki / Felzenszwalb-
Huttenlocher): along axis 0 the nearest background voxel on each line; along axis 1
the lower envelope of the parabolas ``g(q) + (h₁(p − q))²`` over the line, ``g`` the
squared distance the first pass found at ``q``; along axis 2 the same with the sum of
both. Each pass needs whole lines along its axis and nothing else, so a volume of any
size is transformed in blocks that hold whole lines of one axis (memory ∝ the line
length times the block's cross-section, never the largest distance). A voxel's
feature depends only on the lines through it, never on how lines are grouped into
blocks: any split gives the same features, bit for bit.

Features are global voxel indices (``int32``, −1 where the volume holds no background
voxel). The distance is computed from them exactly as
``scipy.ndimage.distance_transform_edt(..., sampling=)`` does, so it equals SciPy's
wherever the nearest voxel is unique (ties, points at equal distance from two
background voxels, may pick the other one: the same distance, up to rounding).
Outer faces of the volume are not background: nothing lies beyond them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._checks import check_voxel_size


@njit(cache=True, nogil=True)
def _first(solid, out):
    """Pass along axis 0: the index of the nearest background voxel on each line."""
    n0, n1, n2 = solid.shape
    last = np.full((n1, n2), -1, np.int32)
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                if not solid[i, j, k]:
                    last[j, k] = i
                out[i, j, k] = last[j, k]
    nxt = np.full((n1, n2), -1, np.int32)
    for i in range(n0 - 1, -1, -1):
        for j in range(n1):
            for k in range(n2):
                if not solid[i, j, k]:
                    nxt[j, k] = i
                b = out[i, j, k]
                if nxt[j, k] >= 0 and (b < 0 or nxt[j, k] - i < i - b):
                    out[i, j, k] = nxt[j, k]


@njit(cache=True, nogil=True)
def _envelope(g, h, site, base, delta):
    """Lower envelope of ``g[q] + (h·(p − q))²`` over the sites q with finite g: the
    winning site of every p (−1 where the line has none). A breakpoint is kept as a
    site plus an offset computed from differences only, so the result does not
    depend on where the line starts (a block's line and the volume's agree)."""
    n = g.shape[0]
    k = -1
    hh = h * h
    for q in range(n):
        if not np.isfinite(g[q]):
            continue
        d = 0.0
        while k >= 0:
            v = site[k]
            # the parabolas of v and q cross at v + d
            d = ((g[q] - g[v]) / (hh * (q - v)) + (q - v)) / 2.0
            if k > 0 and (v - base[k]) + d <= delta[k]:
                k -= 1
            else:
                break
        k += 1
        site[k] = q
        if k > 0:
            base[k] = site[k - 1]
            delta[k] = d
    out = np.full(n, -1, np.int64)
    if k < 0:
        return out
    j = 0
    for p in range(n):
        while j < k and delta[j + 1] < p - base[j + 1]:
            j += 1
        out[p] = site[j]
    return out


@njit(cache=True, nogil=True)
def _next(feat, known, axis_pos, hs, h, out):
    """Pass along the last axis of ``feat`` (known, n1, n2, n): ``known`` feature
    components of each voxel (−1 in the first: none) → ``known + 1`` components.
    ``axis_pos[c]`` (n1, n2) is the line's global coordinate along component c."""
    _, n1, n2, n = feat.shape
    g = np.empty(n)
    site = np.empty(n, np.int64)
    base = np.empty(n, np.int64)
    delta = np.empty(n)
    for a in range(n1):
        for b in range(n2):
            for q in range(n):
                if feat[0, a, b, q] < 0:
                    g[q] = np.inf
                else:
                    s = 0.0
                    for c in range(known):
                        d = hs[c] * (axis_pos[c, a, b] - feat[c, a, b, q])
                        s += d * d
                    g[q] = s
            win = _envelope(g, h, site, base, delta)
            for p in range(n):
                q = win[p]
                if q < 0:
                    for c in range(known + 1):
                        out[c, a, b, p] = -1
                else:
                    for c in range(known):
                        out[c, a, b, p] = feat[c, a, b, q]
                    out[known, a, b, p] = q


def feature_pass(block, axis: int, *, voxel_size=(1.0, 1.0, 1.0), offset=(0, 0, 0)) -> np.ndarray:
    """One pass of the separable transform over a block holding whole lines along `axis`.

    Parameters
    ----------
    block : ndarray
        ``axis == 0``: the image (P, M, N), nonzero = foreground. ``axis == 1`` or
        ``2``: the previous pass's features, (axis, P, M, N) int32.
    axis : {0, 1, 2}
        The passes run in order 0, 1, 2.
    voxel_size : 3 floats
        Sampling along (z, y, x).
    offset : 3 ints
        Volume index of ``block[..., 0, 0, 0]`` (the block spans the whole volume
        along `axis`).

    Returns
    -------
    (axis + 1, P, M, N) int32 ndarray: the global indices of the nearest background
    voxel along axes ``0..axis`` (−1 where none).
    """
    vs = np.asarray(check_voxel_size(voxel_size), np.float64)
    if axis == 0:
        solid = np.ascontiguousarray(np.asarray(block) != 0)
        out = np.empty((1,) + solid.shape, np.int32)
        _first(solid, out[0])
        return out
    feat = np.asarray(block, np.int32)
    if feat.ndim != 4 or feat.shape[0] != axis:
        raise ValueError(f"pass {axis} needs the features of pass {axis - 1}, ({axis}, P, M, N); "
                         f"got shape {feat.shape}")
    shape = feat.shape[1:]
    others = [a for a in range(3) if a != axis]
    moved = np.ascontiguousarray(np.moveaxis(feat, axis + 1, -1))        # (axis, n_o1, n_o2, n)
    grids = np.meshgrid(*[np.arange(shape[a], dtype=np.int64) + int(offset[a]) for a in others],
                        indexing="ij")
    axis_pos = np.stack([grids[others.index(c)] for c in range(axis)]).astype(np.int64)
    out = np.empty((axis + 1,) + moved.shape[1:], np.int32)
    _next(moved, axis, axis_pos, vs[:axis].copy(), float(vs[axis]), out)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis + 1))


def feature_transform(image, *, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The feature transform of a whole volume: (3, P, M, N) int32, the indices of the
    nearest background voxel of every voxel (−1 everywhere where there is none)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be 3-D; got {image.ndim}-D")
    feat = feature_pass(image, 0, voxel_size=voxel_size)
    feat = feature_pass(feat, 1, voxel_size=voxel_size)
    return feature_pass(feat, 2, voxel_size=voxel_size)


@njit(cache=True, nogil=True)
def _feature_distance(features, vs, offset, out):
    _, n0, n1, n2 = features.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                if features[0, i, j, k] < 0:
                    out[i, j, k] = np.inf
                    continue
                a = float(features[0, i, j, k] - (i + offset[0])) * vs[0]
                b = float(features[1, i, j, k] - (j + offset[1])) * vs[1]
                c = float(features[2, i, j, k] - (k + offset[2])) * vs[2]
                out[i, j, k] = np.sqrt((a * a + b * b) + c * c)


def feature_distance(features, *, voxel_size=(1.0, 1.0, 1.0), offset=(0, 0, 0)) -> np.ndarray:
    """Distance from each voxel to its feature, in the unit of `voxel_size` (float64,
    inf where there is none), with SciPy's arithmetic: ``sqrt(Σ ((f_a − i_a)·h_a)²)``
    summed over the axes in order."""
    features = np.asarray(features)
    vs = np.asarray(check_voxel_size(voxel_size), np.float64)
    out = np.empty(features.shape[1:], np.float64)
    _feature_distance(features, vs, np.asarray(offset, np.int64), out)
    return out


def distance_transform(image, *, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Exact Euclidean distance of every nonzero voxel to the nearest zero voxel
    (``scipy.ndimage.distance_transform_edt(image, sampling=voxel_size)``)."""
    return feature_distance(feature_transform(image, voxel_size=voxel_size), voxel_size=voxel_size)


__all__ = ["distance_transform", "feature_distance", "feature_pass", "feature_transform"]
