"""`porevox segment` and `porevox train-unet`: Otsu (CTA), the paper's hybrid SLIC
annotation, and a U-Net trained on it with distributed tiled inference.

Every method reads the volume's ``preprocessed`` image where there is one (else
``image``; the choice is logged and recorded) and writes uint8 label images with
1 = copper, 0 = pore:

* ``otsu``: one global Otsu threshold from the distributed histogram of the whole
  volume (the paper's CTA) → ``labels/otsu``;
* ``threshold``: a fixed global threshold the user gives (1 where gray ≥ it, as PuMA
  and most labs segment a CT) → ``labels/threshold``;
* ``hybrid``: the hybrid threshold rule (:mod:`porevox.kernels.segment`) and SLIC
  superpixels per slice, sized in micrometres → ``labels/hybrid_annotation`` (0
  copper, 1 pore, 2 shine-through) and ``labels/hybrid`` (copper = class 0);
* ``unet``: a trained network (``.pt`` from ``porevox train-unet``, or a Keras 3
  ``.keras`` model) over every slice, tiled with a halo of at least the network's
  context and blended inside each chunk → ``labels/unet``: copper where class 0
  holds more than half the probability (pore = class 1 ∪ class 2, so the pore
  classes' probabilities add up; an argmax over three classes would call a voxel
  copper at P = (0.4, 0.3, 0.3)); on request also ``probabilities/unet`` (classes
  × z × y × x, uint8, 255 = 1).

Gray values are scaled per volume by its 0.1–99.9 % percentiles (from the
distributed histogram) before SLIC and the network, so uint8 and uint16 volumes
and volumes of different contrast are treated alike.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np

from ..engine import as_dask, histogram, open_volume, store
from ..engine.blockwise import fit_chunks_to_depth, slice_chunks
from ..engine.cluster import balanced_depth, chunk_bytes_budget
from ..engine.provenance import fingerprint_array, writers
from ..engine.storage import LABELS, Volume
from ..errors import InvalidVolumeError, OutputError, PorevoxError
from ..kernels import segment as ks
from .studyfile import ID_PATTERN

logger = logging.getLogger(__name__)

METHODS = ("otsu", "threshold", "hybrid", "unet")
#: Default superpixel side in micrometres (~5 px at the paper's 18.6 nm pixels).
SUPERPIXEL_UM = 0.1
COMPACTNESS = 0.2
PERCENTILES = (0.1, 99.9)


# --------------------------------------------------------------------------- helpers
def source_name(volume: Volume, src: str | None = None) -> str:
    """The image to segment: `src`, else ``preprocessed`` where present, else ``image``."""
    if src is None:
        src = "preprocessed" if "preprocessed" in volume.group else "image"
    if src not in volume.group:
        volume.array(src)   # a volume of label images only has its own one-line error
        raise InvalidVolumeError(f"{volume.path} has no array {src!r}; use image or run preprocess first")
    return src


def gray_stats(image) -> dict:
    """Otsu and hybrid thresholds and the percentile span of a whole image, from one
    distributed histogram."""
    image = as_dask(image)
    if image.dtype.kind == "f":
        counts, edges = histogram(image, bins=1024)
    else:
        counts, edges = histogram(image)
    stats = ks.hybrid_threshold(counts, edges)
    stats["lo"], stats["hi"] = (ks.percentile(counts, edges, q) for q in PERCENTILES)
    return stats


def normalize(gray: np.ndarray, stats: dict) -> np.ndarray:
    """Gray values scaled by the volume's percentile span (:func:`gray_stats`) to
    about [0, 1], float32: the U-Net's input, in training and inference alike."""
    return (gray.astype(np.float32) - np.float32(stats["lo"])) * np.float32(
        1.0 / max(stats["hi"] - stats["lo"], 1e-12))


def superpixel_step(voxel_size, size_um: float) -> tuple[float, float]:
    """SLIC grid step in pixels (y, x) for superpixels `size_um` wide."""
    if size_um <= 0:
        raise ValueError(f"superpixel size must be > 0 µm; got {size_um}")
    return (max(size_um / voxel_size[1], 1.0), max(size_um / voxel_size[2], 1.0))


# --------------------------------------------------------------------------- Python API
def segment(image, method: str = "otsu", *, voxel_size=None, model=None, stats: dict | None = None,
            threshold: float | None = None, **params) -> da.Array:
    """A lazy segmentation (1 = copper) of `image` by `method`.

    `image` is any array or a volume path. ``threshold`` needs `threshold` (1 where
    gray ≥ it); ``hybrid`` needs `voxel_size` (or a volume) to size its superpixels;
    ``unet`` needs `model` (a ``.pt`` or ``.keras`` path). The other thresholds come
    from one pass over the whole image, computed now.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_threshold(method, threshold)
    if isinstance(image, (str, os.PathLike, Volume)):
        volume = open_volume(image, mode="r")
        voxel_size = voxel_size or volume.voxel_size
        image = volume.to_dask(source_name(volume))
    image = as_dask(image)
    if method == "threshold":
        return (image >= threshold).astype(np.uint8)
    if method == "unet":
        if model is None:
            raise ValueError("method unet needs model=<path to a .pt or .keras model>")
        return unet_copper(image, model, stats=stats, **params)
    stats = stats or gray_stats(image)
    if method == "otsu":
        return (image > stats["otsu"]).astype(np.uint8)
    return (hybrid_annotation(image, voxel_size, stats=stats, **params) == ks.COPPER).astype(np.uint8)


def hybrid_annotation(image, voxel_size=None, *, stats: dict | None = None,
                      superpixel_um: float = SUPERPIXEL_UM, compactness: float = COMPACTNESS,
                      slic_method: str = "auto") -> da.Array:
    """The lazy hybrid annotation (0 copper, 1 pore, 2 shine-through) of `image`."""
    image = as_dask(image)
    if voxel_size is None:
        logger.info("hybrid: no voxel size given; 1 µm isotropic assumed for the superpixel size")
        voxel_size = (1.0, 1.0, 1.0)
    stats = stats or gray_stats(image)
    step = superpixel_step(voxel_size, superpixel_um)
    method = _slic_method(slic_method)
    logger.info("hybrid: Otsu %.4g, hybrid threshold %.4g%s; SLIC (%s) step %.2f x %.2f px, "
                "compactness %g", stats["otsu"], stats["threshold"],
                " (no copper foot found: Otsu used)" if stats["fallback"] else "",
                method, *step, compactness)
    image = slice_chunks(image, 64, balance=True)
    return image.map_blocks(ks.annotate, otsu=stats["otsu"], hybrid=stats["threshold"], step=step,
                            compactness=compactness, method=method,
                            dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))


def _slic_method(method: str) -> str:
    if method == "auto":
        return ks.SLIC_METHOD
    if method not in ("numba", "skimage"):
        raise ValueError(f"slic_method must be auto, numba or skimage; got {method!r}")
    return method


# --------------------------------------------------------------------------- U-Net inference
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def load_predictor(path: str | os.PathLike):
    """The model at `path` as a predictor, loaded once per process (a Dask worker
    keeps it for every later block); torch threads follow the worker's."""
    path = Path(path)
    if not path.is_file():
        raise PorevoxError(f"model file {path} not found; train one with porevox train-unet")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from ..models import unet

            _limit_torch_threads()
            if path.suffix == ".keras":
                _MODELS[key] = unet.load_keras(path)
            else:
                import torch

                model, metadata = unet.load_model(path)
                if torch.cuda.is_available():   # a GPU worker runs the network on its device
                    model = model.to("cuda")
                _MODELS[key] = unet.Predictor(model, metadata)
        return _MODELS[key]


def _limit_torch_threads() -> None:
    try:
        from distributed import get_worker

        n = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    torch.set_num_threads(max(1, n))


def _predict_block(block, *, model, stats, tile, halo, block_info=None):
    """Class probabilities (C, z, y, x) of one overlapped block, cropped to its core."""
    from ..models.unet import predict_tiled

    predictor = load_predictor(model)
    info = block_info[0]
    loc, num = info["chunk-location"], info["num-chunks"]
    probs = np.stack([predict_tiled(predictor, normalize(s, stats), tile=tile, halo=halo)
                      for s in block], axis=1)
    crop = [slice(None), slice(None)]
    for axis in (1, 2):
        a = halo if loc[axis] > 0 else 0
        b = halo if loc[axis] < num[axis] - 1 else 0
        crop.append(slice(a, block.shape[axis] - b))
    return probs[tuple(crop)]


def unet_probabilities(image, model: str | os.PathLike, *, stats: dict | None = None, tile: int = 256,
                       halo: int | None = None) -> da.Array:
    """Lazy class probabilities ``(C, z, y, x)`` float32 of `image` by the model at
    `model`: each chunk is extended in y and x by `halo` (default: the network's
    context) from its neighbours, tiled, blended and cropped back."""
    image = as_dask(image)
    predictor = load_predictor(model)
    halo = predictor.context if halo is None else int(halo)
    if halo < predictor.context:
        logger.warning("unet: halo %d px is below the network's context %d px: tiles may differ "
                       "from whole-slice inference at their seams", halo, predictor.context)
    stats = stats or gray_stats(image)
    # Every block, grown by its halo, must start on the network's stride grid, so that
    # its pixels have the phase they have in the whole slice: halo and in-plane chunk
    # sizes are rounded up to multiples of the stride.
    stride = predictor.stride
    halo = -(-halo // stride) * stride
    ny, nx = image.shape[1:]
    depth = balanced_depth(image.shape[0], chunk_bytes_budget() // (48 * ny * nx))
    plane = [min(n, -(-max(c[0], min(n, tile)) // stride) * stride)
             for c, n in zip(image.chunks[1:], image.shape[1:])]
    image = image.rechunk((depth, *plane))
    image, depth3 = fit_chunks_to_depth(image, (0, halo, halo))
    image = image.rechunk((image.chunks[0][0], *(c[0] if len(c) == 1 else -(-c[0] // stride) * stride
                                                 for c in image.chunks[1:])))
    grown = da.overlap.overlap(image, depth=dict(enumerate(depth3)), boundary="none")
    n_classes = predictor.n_classes
    logger.info("unet: %s over %d chunks %s, halo %d px, tiles %d px, %d classes", Path(model).name,
                image.npartitions, image.chunksize, depth3[1], tile, n_classes)
    return da.map_blocks(_predict_block, grown, model=str(model),
                         stats={k: stats[k] for k in ("lo", "hi")}, tile=tile, halo=depth3[1], new_axis=0,
                         chunks=((n_classes,), *image.chunks), dtype=np.float32,
                         meta=np.empty((0, 0, 0, 0), np.float32))


def unet_copper(image, model, **params) -> da.Array:
    """Lazy segmentation (1 = copper) by a U-Net: copper where its probability
    exceeds that of all pore classes together (pore = class 1 ∪ class 2, as the
    paper reads its 3-class output), i.e. P(copper) > 0.5."""
    return copper_from_probabilities(unet_probabilities(image, model, **params))


def copper_from_probabilities(probs: da.Array, scale: float = 1.0) -> da.Array:
    """1 where class 0 (copper) holds more than half the probability (`scale`: the
    probabilities' full scale, 255 for stored uint8 ones)."""
    return (probs[ks.COPPER].astype(np.float32) > 0.5 * scale).astype(np.uint8)


# --------------------------------------------------------------------------- stages
def check_threshold(method: str, threshold) -> None:
    """A fixed threshold goes with the ``threshold`` method, and only with it."""
    if method == "threshold":
        number = isinstance(threshold, (int, float, np.number)) and not isinstance(threshold, bool)
        if not number or not np.isfinite(threshold):
            raise ValueError(f"method threshold needs --threshold <gray value> (1 where gray >= it); "
                             f"got {threshold!r}")
    elif threshold is not None:
        raise ValueError(f"--threshold goes with --method threshold, not {method}; drop it or use "
                         "--method threshold")


def check_segment(path, method: str, *, model=None, src: str | None = None, name: str | None = None,
                  threshold: float | None = None) -> None:
    """Check a segmentation request before any work (and before a cluster starts):
    the method (and its threshold), the volume and its source image, the label images
    it would replace (only segmentations of the same name), and for ``unet`` the model
    file (loaded safely now, so a refused file fails here)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_threshold(method, threshold)
    volume = open_volume(path, mode="r")
    source_name(volume, src)
    name = name or method
    if not ID_PATTERN.fullmatch(name):
        raise ValueError(f"--name must be letters, digits, '.', '_' or '-'; got {name!r}")
    for out in [name, *([f"{name}_annotation"] if method == "hybrid" else [])]:
        if out in volume.labels and f"segment:{out}" not in volume.provenance:
            by = writers(volume, f"{LABELS}/{out}")
            raise OutputError(f"{volume.path}: labels/{out} exists and was written by "
                              f"{', '.join(by) or 'something other than porevox segment'}, not by "
                              "segment; porevox replaces only its own segmentations: choose another --name")
    if method == "unet":
        if model is None:
            raise ValueError("method unet needs --model <model.pt or model.keras>")
        load_predictor(model)


def segment_volume(path: str | os.PathLike | Volume, method: str, *, name: str | None = None,
                   src: str | None = None, model: str | os.PathLike | None = None,
                   probabilities: bool = False, force: bool = False, threshold: float | None = None,
                   **params) -> dict:
    """Segment the volume at `path` with `method`, writing ``labels/<name>`` (default:
    the method's name) as a resumable stage. Returns what was written, with the
    thresholds used."""
    check_segment(path, method, model=model, src=src, name=name, threshold=threshold)
    volume = open_volume(path)
    src = source_name(volume, src)
    name = name or method
    logger.info("segment %s: %s of %s", method, src, volume.path.name)
    started = time.time()
    stats = gray_stats(volume.to_dask(src))
    image = volume.to_dask(src)
    inputs = {src: fingerprint_array(volume, src)}
    base = {"method": method, "src": src, **stats}
    written = []
    if method == "otsu":
        seg = (image > stats["otsu"]).astype(np.uint8)
        written.append(store(volume, f"{LABELS}/{name}", seg, stage=f"segment:{name}",
                             params=base, inputs=inputs, force=force))
    elif method == "threshold":
        seg = (image >= threshold).astype(np.uint8)
        written.append(store(volume, f"{LABELS}/{name}", seg, stage=f"segment:{name}",
                             params={**base, "fixed_threshold": float(threshold)}, inputs=inputs,
                             force=force))
    elif method == "hybrid":
        params = {"superpixel_um": SUPERPIXEL_UM, "compactness": COMPACTNESS, **params}
        params["slic_method"] = _slic_method(params.get("slic_method", "auto"))
        ann_name = f"{LABELS}/{name}_annotation"
        ann = hybrid_annotation(image, volume.voxel_size, stats=stats, **params)
        written.append(store(volume, ann_name, ann, stage=f"segment:{name}_annotation",
                             params={**base, **params}, inputs=inputs, force=force))
        ann = volume.to_dask(ann_name)
        written.append(store(volume, f"{LABELS}/{name}", (ann == ks.COPPER).astype(np.uint8),
                             stage=f"segment:{name}", params={**base, **params},
                             inputs={ann_name: fingerprint_array(volume, ann_name)}, force=force))
    else:
        model = Path(model)
        predictor = load_predictor(model)
        params = {"tile": 256, "halo": predictor.context, **params}
        model_inputs = {**inputs, "model": _file_digest(model)}
        mparams = {**base, "model": str(model), **params}
        if probabilities:
            pname = f"probabilities/{name}"
            probs = unet_probabilities(image, model, stats=stats, **params)
            q = (da.clip(probs * 255 + 0.5, 0, 255)).astype(np.uint8)
            written.append(store(volume, pname, q, stage=f"segment:{pname}", params=mparams,
                                 inputs=model_inputs, force=force))
            copper = copper_from_probabilities(volume.to_dask(pname), 255)
        else:
            copper = unet_copper(image, model, stats=stats, **params)
        written.append(store(volume, f"{LABELS}/{name}", copper, stage=f"segment:{name}", params=mparams,
                             inputs=model_inputs, force=force))
    return {"volume": str(volume.path), "method": method, "source": src,
            "written": [w.name for w in written], "skipped": all(w.skipped for w in written),
            "thresholds": {**{k: stats[k] for k in ("otsu", "threshold", "lo", "hi", "fallback")},
                           **({"fixed": float(threshold)} if method == "threshold" else {})},
            "seconds": round(time.time() - started, 3)}


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


__all__ = ["METHODS", "check_segment", "gray_stats", "hybrid_annotation", "load_predictor", "normalize",
           "segment", "segment_volume", "source_name", "unet_copper", "unet_probabilities"]
