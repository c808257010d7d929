"""Suite ``segmentation``: the hybrid annotation and U-Net inference on the cluster.

* ``hybrid annotation``: ``porevox.pipelines.segment_volume(vol, "hybrid")`` on a
  fresh 2-worker LocalCluster (1 thread each) — the distributed histogram, the
  thresholds, SLIC per slice in parallel, both label images written to Zarr — vs a
  serial loop of ``skimage.segmentation.slic`` over the same slices, each
  superpixel classified by its mean (the thresholds given), in one process.
* ``unet inference``: ``segment_volume(vol, "unet", model=...)`` on the same kind of
  cluster (the model loaded once per worker, tiles with the network's halo,
  blending, ``labels/unet`` written) vs a plain single-process torch loop
  (``torch.set_num_threads(2)``: all cores) over the same slices, whole slices, the
  result kept in memory. The ratio shows the engine's overhead (or gain).

The volume is a digital-twin sample (HPA 250 °C at the demo voxel size),
64 x 256 x 256 uint8 (quick: 16 x 128 x 128).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .harness import best, isolated, local_cluster, log, peak, prepared, row, worker_peaks

DTYPE = "uint8"


def setup(zarr_path: str, model_path: str, shape) -> dict:
    """The twin volume, and a U-Net (default widths, seeded random weights) saved."""
    import torch

    from porevox.engine import create_volume
    from porevox.models import unet
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    spec = SampleSpec("HPA", 250, 0, "demo", 0)
    model = FibSemModel()
    ms, threshold = prepare(spec, model, shape=tuple(shape))
    _, _, image = render_box(ms, model, 0, tuple(slice(0, n) for n in shape), threshold, DTYPE)
    vol = create_volume(zarr_path, shape, DTYPE, ms.voxel_size, chunks=(8, *shape[1:]))
    vol.image[:] = image
    torch.manual_seed(0)
    unet.save_model(unet.UNet(unet.UNetConfig()), model_path)
    return {"voxel_size": list(ms.voxel_size)}


def porevox_segment(zarr_path: str, method: str, repeat: int, model: str | None = None,
                    **params) -> dict:
    from porevox.pipelines import segment_volume

    with local_cluster(2, "4GB") as client:
        client.run(exec, "import skimage.segmentation, porevox.pipelines.segment")
        times, result = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = segment_volume(zarr_path, method, model=model, force=True, **params)
            times.append(time.perf_counter() - t0)
            log(f"    porevox {method}: {times[-1]:.2f} s")
        workers = worker_peaks(client)
    from porevox.engine import open_volume

    vol = open_volume(zarr_path, mode="r")
    name = "hybrid_annotation" if method == "hybrid" else "unet"
    np.save(Path(zarr_path).with_suffix(f".{method}.npy"), vol.array(f"labels/{name}")[:])
    return {"time_s": best(times), "times_s": times, "peak": peak(), "workers": workers,
            "thresholds": result["thresholds"]}


def reference_hybrid(zarr_path: str, thresholds: dict, step, compactness: float, repeat: int) -> dict:
    from skimage.segmentation import slic

    from porevox.engine import open_volume
    from porevox.kernels.segment import classify

    image = open_volume(zarr_path, mode="r").image[:]
    lo, hi = thresholds["lo"], thresholds["hi"]
    from porevox.kernels.slic import step_to_n_segments

    n_segments = step_to_n_segments(image.shape[1:], step)   # scikit-image's grid of `step` px
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = np.empty(image.shape, np.uint8)
        for z in range(image.shape[0]):
            gray = image[z].astype(np.float64)
            labels = slic((gray - lo) / (hi - lo), n_segments=n_segments, compactness=compactness,
                          channel_axis=None, start_label=0)
            means = np.bincount(labels.ravel(), gray.ravel()) / np.bincount(labels.ravel())
            out[z] = classify(means, thresholds["otsu"], thresholds["threshold"])[labels]
        times.append(time.perf_counter() - t0)
    pv = np.load(Path(zarr_path).with_suffix(".hybrid.npy"))
    return {"time_s": best(times), "times_s": times, "peak": peak(),
            "agreement": float((pv == out).mean())}


def reference_unet(zarr_path: str, model_path: str, thresholds: dict, repeat: int) -> dict:
    import torch

    from porevox.engine import open_volume
    from porevox.models import unet

    torch.set_num_threads(2)
    predictor = unet.Predictor(*unet.load_model(model_path))
    image = open_volume(zarr_path, mode="r").image[:]
    lo, hi = thresholds["lo"], thresholds["hi"]
    predictor.predict_proba(np.zeros((32, 32), np.float32))
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = np.empty(image.shape, np.uint8)
        for z in range(image.shape[0]):
            p = predictor.predict_proba((image[z].astype(np.float32) - lo) / (hi - lo))
            out[z] = p[0] > 0.5
        times.append(time.perf_counter() - t0)
    pv = np.load(Path(zarr_path).with_suffix(".unet.npy"))
    return {"time_s": best(times), "times_s": times, "peak": peak(),
            "agreement": float((pv == out).mean())}


def run(cfg) -> list[dict]:
    from porevox.pipelines.segment import COMPACTNESS

    shape = cfg.pick((64, 256, 256), (16, 128, 128))
    rows = []
    with cfg.scratch("segmentation") as tmp:
        zarr_path, model_path = str(tmp / "twin.zarr"), str(tmp / "unet.pt")
        log(f"  twin volume {shape}")
        made = prepared("setting up", setup, zarr_path, model_path, shape, timeout=cfg.timeout)
        # superpixels of a whole 3 px step, so that scikit-image's grid (whole pixels)
        # is the numba kernel's: the annotations are then comparable voxel by voxel
        vy, vx = made["voxel_size"][1:]
        superpixel_um = 3 * vy
        step = (3, 3)

        log("  hybrid annotation")
        pv = isolated(porevox_segment, zarr_path, "hybrid", cfg.repeat, superpixel_um=superpixel_um,
                      timeout=cfg.timeout)
        ref = isolated(reference_hybrid, zarr_path, pv.get("thresholds") or {}, step, COMPACTNESS,
                       cfg.repeat, timeout=cfg.timeout) if not pv.get("error") else {"error": "skipped"}
        rows.append(row("segmentation", "hybrid annotation", shape=shape, dtype=DTYPE, pv=pv, ref=ref,
                        reference="serial loop: skimage.segmentation.slic per slice + mean class",
                        check=f"annotation agreement {ref.get('agreement', float('nan')):.4f}",
                        notes="porevox: 2 workers x 1 thread, histogram + thresholds + SLIC + two "
                              "label images written; reference: SLIC and classification only, "
                              "thresholds given", agreement=ref.get("agreement")))

        log("  unet inference")
        pv = isolated(porevox_segment, zarr_path, "unet", cfg.repeat, model=model_path,
                      timeout=cfg.timeout)
        ref = isolated(reference_unet, zarr_path, model_path, pv.get("thresholds") or {}, cfg.repeat,
                       timeout=cfg.timeout) if not pv.get("error") else {"error": "skipped"}
        rows.append(row("segmentation", "unet inference", shape=shape, dtype=DTYPE, pv=pv, ref=ref,
                        reference="single process torch loop over whole slices, 2 threads",
                        check=f"label agreement {ref.get('agreement', float('nan')):.4f}",
                        notes="porevox: 2 workers x 1 torch thread, tiles 256 px + halo, "
                              "Gaussian blending, labels/unet written; default U-Net widths",
                        agreement=ref.get("agreement")))
    return rows
