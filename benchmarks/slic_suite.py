"""Suite ``slic``: porevox's numba SLIC vs scikit-image's on digital-twin slices.

``porevox.kernels.slic.slic_slices(block, method="numba", step=s, compactness=c)``
(the numba port) vs the same call with ``method="skimage"``
(``skimage.segmentation.slic(..., channel_axis=None, start_label=0)`` per slice,
``step`` mapped to ``n_segments``), each in its own spawned process with one thread
(``NUMBA_NUM_THREADS=1``, BLAS/OpenMP pools limited to 1), numba compiled (or loaded
from its cache) and both warmed up on one slice before timing. Input: a twin sample
(HPA 250 °C, the demo voxel size 0.0372 µm in-plane), 32 slices of 538 x 538 (quick:
8 of 256 x 256), as float64 ``image / 255``.

Each row also carries the quality of both sides against the twin's truth (copper =
1), mean over the slices: boundary recall at 0, 1 and 2 px tolerance, corrected
undersegmentation error, achievable segmentation accuracy, superpixels per slice;
and the fraction of pixels whose labels are identical between the two sides.
Superpixel sides of 3 and 4 px (0.11 and 0.15 µm, the hybrid annotation's range) at
compactness 0.2, the value of lowest undersegmentation error on the twin at both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .harness import best, isolated, log, peak, prepared, row

CASES = ((3.0, 0.2), (4.0, 0.2))   # (step in pixels, compactness)
TOLERANCES = (0, 1, 2)
DTYPE = "float64"                   # what the kernels see: image / 255


def setup(npz: str, shape) -> dict:
    """Render the twin slices (image and truth) to ``npz``."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    t0 = time.perf_counter()
    spec = SampleSpec("HPA", 250, 0, "demo", 0)
    model = FibSemModel()
    ms, thr = prepare(spec, model, shape=tuple(shape))
    truth, _annotation, image = render_box(ms, model, 0, tuple(slice(0, n) for n in ms.shape), thr,
                                           "uint8")
    np.savez(npz, image=image, truth=truth)
    return {"seconds": time.perf_counter() - t0, "voxel_size": [float(v) for v in ms.voxel_size],
            "copper_fraction": float(truth.mean())}


def quality(labels: np.ndarray, truth: np.ndarray) -> dict:
    """Mean over slices of the superpixel metrics against the truth."""
    from porevox.kernels.slic import (
        achievable_segmentation_accuracy,
        boundary_recall,
        undersegmentation_error,
    )

    per = {f"br{t}": [] for t in TOLERANCES} | {"ue": [], "asa": [], "segments": []}
    for lab, tru in zip(labels, truth):
        for t in TOLERANCES:
            per[f"br{t}"].append(boundary_recall(lab, tru, tolerance=t))
        per["ue"].append(undersegmentation_error(lab, tru))
        per["asa"].append(achievable_segmentation_accuracy(lab, tru))
        per["segments"].append(int(lab.max()) + 1)
    return {k: float(np.nanmean(v)) for k, v in per.items()}


def measure(method: str, npz: str, step: float, compactness: float, repeat: int,
            labels_path: str, other_labels: str | None = None) -> dict:
    """Time ``slic_slices(method=...)`` over all slices (best of `repeat`, after a
    warm-up slice); quality of the last result; save it to `labels_path`; compare
    with `other_labels` if given."""
    os.environ["NUMBA_NUM_THREADS"] = "1"     # before numba is imported in this process
    from threadpoolctl import threadpool_limits

    from porevox.kernels.slic import slic_slices

    with threadpool_limits(1):
        data = np.load(npz)
        image, truth = data["image"] / 255.0, data["truth"]
        kw = {"method": method, "step": step, "compactness": compactness}
        t0 = time.perf_counter()
        slic_slices(image[:1], **kw)                  # JIT compile / cache load, imports
        warmup = time.perf_counter() - t0
        times, labels = [], None
        for _ in range(repeat):
            del labels
            t0 = time.perf_counter()
            labels = slic_slices(image, **kw)
            times.append(time.perf_counter() - t0)
            log(f"    {method} step={step:g} c={compactness:g}: {times[-1]:.2f} s")
        result = {"time_s": best(times), "times_s": times, "warmup_s": warmup, "peak": peak()}
    if method == "numba":
        import numba

        result["numba_threads"] = numba.get_num_threads()
    result["quality"] = quality(labels, truth)
    np.save(labels_path, labels)
    if other_labels and Path(other_labels).exists():
        other = np.load(other_labels)
        result["identical_fraction"] = (float(np.mean(other == labels)) if other.shape == labels.shape
                                        else None)
    return result


def _q(side: dict) -> dict:
    return side.get("quality") or {}


def run(cfg) -> list[dict]:
    shape = cfg.pick((32, 538, 538), (8, 256, 256))
    rows = []
    with cfg.scratch("slic") as tmp:
        npz = tmp / "twin.npz"
        log(f"  rendering twin slices {shape}")
        made = prepared("rendering the twin", setup, str(npz), shape, timeout=cfg.timeout)
        for step, compactness in CASES:
            nb_path, sk_path = tmp / "numba.npy", tmp / "skimage.npy"
            pv = isolated(measure, "numba", str(npz), step, compactness, cfg.repeat, str(nb_path),
                          timeout=cfg.timeout)
            ref = isolated(measure, "skimage", str(npz), step, compactness, cfg.repeat, str(sk_path),
                           str(nb_path), timeout=cfg.timeout)
            qn, qs = _q(pv), _q(ref)
            same = ref.get("identical_fraction")
            extra = {f"porevox_{k}": v for k, v in qn.items()} | {f"reference_{k}": v
                                                                  for k, v in qs.items()}
            check = (f"labels identical on {same:.4%} of pixels; "
                     if same is not None else "labels not compared; ")
            if qn and qs:
                check += (f"UE {qn['ue']:.4f} vs {qs['ue']:.4f}, BR(1 px) {qn['br1']:.4f} vs "
                          f"{qs['br1']:.4f}, {qn['segments']:.0f} vs {qs['segments']:.0f} "
                          "superpixels/slice (numba vs skimage)")
            notes = (f"superpixel step {step:g} px = {step * made['voxel_size'][2]:.3f} µm, "
                     f"compactness {compactness:g}, 10 iterations, connectivity enforced; "
                     f"{shape[0]} twin slices of {shape[1]}x{shape[2]} (copper fraction "
                     f"{made['copper_fraction']:.2f}); one thread each; numba warm-up (JIT or "
                     f"cache load) {pv.get('warmup_s', float('nan')):.2f} s, not timed; "
                     "quality: mean over slices, boundary recall at 0/1/2 px (chessboard), "
                     "corrected undersegmentation error, ASA against the truth (copper)")
            r = row("slic", f"slic step={step:g} c={compactness:g}", shape=shape, dtype=DTYPE,
                    pv=pv, ref=ref, check=check, notes=notes,
                    reference="porevox.kernels.slic.slic_skimage per slice "
                              "(skimage.segmentation.slic, channel_axis=None)",
                    step_px=step, compactness=compactness, identical_fraction=same,
                    porevox_warmup_s=pv.get("warmup_s"), **extra)
            rows.append(r)
            ratio = r["ratio"]
            log(f"  slic step={step:g} c={compactness:g}: numba {r['porevox_s'] or float('nan'):.2f} s, "
                f"skimage {r['reference_s'] or float('nan'):.2f} s, ratio "
                f"{ratio if ratio is not None else float('nan'):.2f}; {check}")
    return rows
