"""The preprocess stage: chunked equals whole, resumable, and validated on the digital
twin against its artifact-free renderings (same noise, curtain and / or shading off)."""

from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
from skimage.filters import threshold_otsu

from porevox.engine import create_volume, open_volume
from porevox.kernels import preprocess as kp
from porevox.pipelines.preprocess import preprocess, preprocess_array, resolve_params

ODD = (5, 37, 50)


def rmse(a, b, mask=None):
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return float(np.sqrt(d[mask].mean() if mask is not None else d.mean()))


@pytest.fixture(scope="module")
def twin():
    """The demo twin sample HPA 250 °C (48 × 128 × 128), rendered with all artifacts,
    without curtains, without shading and without either — the same noise in all."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    model = FibSemModel()
    ms, thr = prepare(SampleSpec("HPA", 250, 0, "demo", 0), model)
    box = tuple(slice(0, n) for n in ms.shape)
    truth, _, image = render_box(ms, model, 0, box, thr, "uint8")
    out = {"image": image, "truth": truth.astype(bool), "voxel_size": tuple(float(v) for v in ms.voxel_size)}
    for key, changes in (("no_curtain", {"curtain": 0.0}), ("no_shading", {"shading": 0.0}),
                         ("clean", {"curtain": 0.0, "shading": 0.0})):
        out[key] = render_box(ms, replace(model, **changes), 0, box, thr, "uint8")[2]
    return out


def make_volume(path, image, voxel_size, chunks):
    vol = create_volume(path, image.shape, image.dtype, voxel_size, chunks=chunks)
    vol.image[:] = image
    return vol


def whole(image, voxel_size, destripe=True, shading=True, **params):
    """The kernels on the whole NumPy volume: the reference of every chunked run."""
    d = {k: params[k] for k in ("max_period", "band", "z_sigma", "adaptive") if k in params}
    s = {k: params[k] for k in ("regions", "method", "smooth") if k in params}
    if image.dtype == np.uint8:
        bins = kp.histogram_bins(np.uint8)
    else:
        bins = kp.histogram_bins(image.dtype, float(image.min()), float(image.max()))
    work = kp.destripe(image, voxel_size=voxel_size, **d) if destripe else image
    if shading:
        return kp.correct_shading(work, bins=bins, dtype=image.dtype, **s)
    return kp.to_dtype(work, image.dtype)


# --------------------------------------------------------------------------- chunked == whole
@pytest.mark.parametrize("destripe,shading", [(True, True), (True, False), (False, True)])
def test_array_on_odd_chunks_equals_whole(twin, destripe, shading):
    image, vs = twin["image"], twin["voxel_size"]
    out = preprocess_array(da.from_array(image, chunks=ODD), vs, destripe=destripe, shading=shading)
    assert isinstance(out, da.Array) and out.dtype == np.uint8
    assert np.array_equal(out.compute(), whole(image, vs, destripe, shading))


def test_stage_on_odd_chunks_equals_whole_on_cluster(tmp_path, twin, client):
    image, vs = twin["image"], twin["voxel_size"]
    vol = make_volume(tmp_path / "v.zarr", image, vs, ODD)
    r = preprocess(vol.path, regions=(2, 5, 4), method="shift", z_sigma=0.3)
    assert not r.skipped and r.name == "preprocessed"
    out = open_volume(vol.path, mode="r").array("preprocessed")
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.chunks[1:] == ODD[1:] and out.chunks[0] % ODD[0] == 0       # storage chunks split, aligned
    assert np.array_equal(out[:], whole(image, vs, regions=(2, 5, 4), method="shift", z_sigma=0.3))
    assert np.array_equal(open_volume(vol.path, mode="r").image[:], image)  # source untouched


def test_uint16_stage_equals_whole(tmp_path, rng):
    from tests.conftest import porous

    solid = porous((12, 48, 64), rng, porosity=0.4, sigma=2.0)
    fy = np.linspace(0, 1, 48)[None, :, None]
    image = np.where(solid, 30000.0, 6000.0) * (1 - 0.2 * fy) + 800 * rng.standard_normal(solid.shape)
    image = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    vs = (0.05, 0.04, 0.04)
    vol = make_volume(tmp_path / "v.zarr", image, vs, (7, 20, 30))
    preprocess(vol.path, name="pp16", regions=3)
    out = open_volume(vol.path, mode="r").array("pp16")
    assert out.dtype == np.uint16
    assert np.array_equal(out[:], whole(image, vs, regions=3))


def test_float_image_keeps_dtype_and_equals_whole(twin):
    image = (twin["image"][:16] / 255.0).astype(np.float32)
    vs = twin["voxel_size"]
    out = preprocess_array(da.from_array(image, chunks=ODD), vs, regions=4).compute()
    assert out.dtype == np.float32
    assert np.array_equal(out, whole(image, vs, regions=4))


# --------------------------------------------------------------------------- twin validation
def test_twin_destriping(twin):
    image, ref, truth = twin["image"], twin["no_curtain"], twin["truth"]
    out = preprocess_array(image, twin["voxel_size"], shading=False).compute()
    before, after = rmse(image, ref), rmse(out, ref)
    assert after < before / 2.5                     # measured 7.37 -> 2.31 (3.2×)
    # no blurring of the structure: Otsu's segmentation is as good as before, or better
    acc = [np.mean((a > threshold_otsu(a)) == truth) for a in (image, out)]
    assert acc[1] >= acc[0] - 0.002


def test_twin_shading(twin):
    image, ref, truth = twin["image"], twin["no_shading"], twin["truth"]
    out = preprocess_array(image, twin["voxel_size"], destripe=False).compute()
    assert rmse(out, ref) < rmse(image, ref) / 3                    # measured 12.4 -> 2.1
    assert rmse(out, ref, truth) < rmse(image, ref, truth) / 3      # copper 14.2 -> 2.3
    assert rmse(out, ref, ~truth) < rmse(image, ref, ~truth) / 2.5  # pore 8.0 -> 1.6
    shifted = preprocess_array(image, twin["voxel_size"], destripe=False, method="shift").compute()
    assert rmse(shifted, ref, truth) < rmse(image, ref, truth) / 3  # shifting fixes copper ...
    assert rmse(shifted, ref, ~truth) > 2 * rmse(out, ref, ~truth)  # ... not the (less shaded) pores


def test_twin_both(twin):
    image, ref, truth = twin["image"], twin["clean"], twin["truth"]
    out = preprocess_array(image, twin["voxel_size"]).compute()
    assert rmse(out, ref) < rmse(image, ref) / 3                    # measured 14.4 -> 3.1
    assert rmse(out, ref, truth) < rmse(image, ref, truth) / 3
    assert rmse(out, ref, ~truth) < rmse(image, ref, ~truth) / 2.5


# --------------------------------------------------------------------------- the stage
def test_stage_resumable_and_recorded(tmp_path, twin):
    vol = make_volume(tmp_path / "v.zarr", twin["image"], twin["voxel_size"], (16, 64, 64))
    first = preprocess(vol.path)
    rec = first.record
    assert rec["stage"] == "preprocess:preprocessed" and rec["outputs"] == ["preprocessed"]
    assert rec["params"]["z_sigma"] == kp.Z_SIGMA and rec["params"]["regions"] == [1, 6, 6]
    assert rec["params"]["voxel_size"] == list(twin["voxel_size"]) and "image" in rec["inputs"]
    report = rec["report"]
    assert report["destripe"]["stripe_rms"] == pytest.approx(7.3, abs=1.0)   # twin curtains: ~7.4 RMS
    assert report["shading"]["reference"] == [0, 0, 0]                       # least shadowed corner
    again = preprocess(vol.path)
    assert again.skipped and again.record["fingerprint"] == rec["fingerprint"]
    assert not preprocess(vol.path, force=True).skipped
    assert not preprocess(vol.path, method="shift").skipped                  # other params: rerun
    only = preprocess(vol.path, shading=False, name="destriped")
    assert not only.skipped and "regions" not in only.record["params"]
    assert open_volume(vol.path, mode="r").provenance.keys() >= {"preprocess:preprocessed",
                                                                  "preprocess:destriped"}


def test_failed_stage_leaves_nothing(tmp_path, twin, monkeypatch):
    vol = make_volume(tmp_path / "v.zarr", twin["image"], twin["voxel_size"], (16, 64, 64))

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(kp, "apply_shading", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        preprocess(vol.path)
    vol = open_volume(vol.path, mode="r")
    assert "preprocessed" not in vol.group and not vol.provenance
    assert not [p for p in vol.path.iterdir() if p.name.startswith(".tmp-")]


def one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_params_raise_one_line(tmp_path, twin):
    image, vs = twin["image"], twin["voxel_size"]
    one_line_value_error(lambda: preprocess_array(image, vs, destripe=False, shading=False), "nothing to do")
    one_line_value_error(lambda: preprocess_array(image, vs, sigma=2), "unknown preprocess parameter")
    one_line_value_error(lambda: preprocess_array(image, vs, max_period=-1), "max_period")
    one_line_value_error(lambda: preprocess_array(image, vs, method="gamma"), "method")
    one_line_value_error(lambda: preprocess_array(image, vs, regions=(1, 500, 6)), "regions")
    one_line_value_error(lambda: preprocess_array(image, vs, adaptive="yes"), "adaptive")
    one_line_value_error(lambda: preprocess_array(image, (0.05, 0, 0.03)), "voxel_size")
    vol = make_volume(tmp_path / "v.zarr", image, vs, (16, 64, 64))
    one_line_value_error(lambda: preprocess(vol.path, destripe=False, shading=False), "nothing to do")
    one_line_value_error(lambda: preprocess(vol.path, name="image"), "name")
    with pytest.raises(TypeError, match="gray values"):
        preprocess_array(np.zeros((2, 8, 8), bool), vs)


def test_resolve_params_defaults():
    p = resolve_params((10, 50, 50))
    assert p == {"destripe": True, "shading": True, "max_period": kp.MAX_PERIOD, "band": kp.BAND,
                 "z_sigma": kp.Z_SIGMA, "adaptive": True, "n_reference": kp.N_REFERENCE,
                 "regions": (1, 6, 6), "method": "linear", "smooth": kp.SMOOTH, "window": kp.WINDOW,
                 "min_fraction": kp.MIN_FRACTION, "min_count": kp.MIN_COUNT}
    assert resolve_params((10, 50, 50), shading=False, regions=3).keys() == {
        "destripe", "shading", "max_period", "band", "z_sigma", "adaptive", "n_reference"}
