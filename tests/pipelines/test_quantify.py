"""pv.quantify: every feature chunked == whole, undefined cases, analytic shapes through
the whole pipeline, volumes (attributes, resume) and studies on a real cluster."""

import math
import warnings

import numpy as np
import pytest
import yaml

import porevox as pv
from porevox.pipelines.quantify import FeatureWarning, load_distributions, make_options, quantify_volume

from ..conftest import porous

SCALARS = ("relative_density", "porosity", "percolating_fraction", "specific_surface_area",
           "euler_characteristic", "strut_diameter_mean", "tortuosity", "mean_curvature_mean",
           "gaussian_curvature_mean", "bruggeman_alpha", "beta", "specific_perimeter_2d",
           "shape_index_mean")


@pytest.fixture(scope="module")
def structure():
    return porous((40, 50, 60), np.random.default_rng(7), porosity=0.4, sigma=2.5).astype(np.uint8)


def test_chunked_equals_whole_for_every_feature(structure):
    vs = (0.05, 0.04, 0.04)
    whole = pv.quantify(structure, voxel_size=vs, directions=["-y", "+x"], distributions=True)
    chunked = pv.quantify(structure, voxel_size=vs, directions=["-y", "+x"], chunks=(17, 23, 31),
                          tortuosity_method="whole", distributions=True)
    for key in SCALARS:
        assert np.isfinite(whole[key]), key
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    assert chunked["tortuosity_by_axis"] == pytest.approx(whole["tortuosity_by_axis"], rel=1e-9)
    assert set(whole["tortuosity_by_axis"]) == {"+y", "-y", "+x"}
    np.testing.assert_allclose(chunked["distributions"]["gm_hist"]["hist"],
                               whole["distributions"]["gm_hist"]["hist"], rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(chunked["distributions"]["strut_hist"]["counts"],
                                  whole["distributions"]["strut_hist"]["counts"])
    assert chunked["strut_skeleton_voxels"] == whole["strut_skeleton_voxels"]
    for key in ("strut_diameter_median", "strut_diameter_sigma_log"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12), key
    # references computed plainly on the whole volume
    assert whole["relative_density"] == pytest.approx(structure.mean())
    tau = math.log(whole["tortuosity"])
    assert whole["bruggeman_alpha"] == pytest.approx(-tau / math.log(whole["relative_density"]))
    assert whole["beta"] == pytest.approx(whole["mean_curvature_mean"] / (
        abs(whole["gaussian_curvature_mean"]) * whole["strut_diameter_mean"]))


def test_struts_blocks_get_their_halos_from_the_distance_transform(structure, caplog):
    """Blocks planned from the volume's distance transform: no reruns, the whole
    volume's φ, the plain skeleton + φ of the whole volume as the reference."""
    from porevox.kernels import struts

    ref = struts.strut_diameters(structure)
    with caplog.at_level("INFO", logger="porevox"):
        chunked = pv.quantify(structure, features=["struts"], chunks=(17, 23, 31))
    assert "after the volume's distance transform" in caplog.text
    fit = struts.lognormal_fit(ref["diameters"])
    assert chunked["strut_skeleton_voxels"] == ref["skeleton_voxels"]
    assert chunked["strut_diameter_mean"] == pytest.approx(fit["mean"], rel=1e-12)
    assert chunked["strut_unmeasured_solid_fraction"] == 0


def test_struts_thicker_than_a_task_warn_and_measure_the_rest(monkeypatch):
    """A solid slab thicker than a task's budget can give a halo for, beside thin
    struts: a warning with the fraction left out, finite φ of the rest, no error."""
    from porevox.kernels import struts
    from porevox.pipelines import quantify as q

    solid = np.zeros((48, 60, 60), np.uint8)
    solid[:, 4:56, 4:30] = 1                                  # a slab 26 voxels thick
    solid[:, 10:14, 36:56:6] = 1                              # thin struts beside it
    solid[:, 40:44, 36:56] = 1
    monkeypatch.setattr(q, "task_budget", lambda: q.struts_whole_bytes((40, 40, 40)))  # 40³ voxels
    with pytest.warns(FeatureWarning, match="lies deeper than one task's memory"):
        got = pv.quantify(solid, features=["struts"], chunks=(16, 20, 20))
    assert 0.5 < got["strut_unmeasured_solid_fraction"] < 1           # most of the slab
    assert math.isfinite(got["strut_diameter_mean"]) and got["strut_skeleton_voxels"] > 0
    thin = struts.strut_diameters(solid)["diameters"]
    assert got["strut_skeleton_voxels"] < thin.size


def test_volume_keeps_its_distance_transform(tmp_path, twin_arrays, monkeypatch, caplog):
    """A volume's struts in blocks: the feature transform is stored in the volume
    (distance/<labels>, equal to the whole-volume kernel's), recorded, and read back
    by the next run instead of recomputed; φ equals the whole-volume kernel's."""
    from porevox.kernels import struts
    from porevox.kernels.edt import feature_transform
    from porevox.pipelines import quantify as q
    from tests.conftest import twin_volume

    monkeypatch.setattr(q, "STRUTS_SPLIT_VOXELS", 1)          # split even this small volume
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (8, 32, 48))
    vs = tuple(vol.voxel_size)
    with caplog.at_level("INFO", logger="porevox"):
        first = pv.quantify(vol.path, labels="truth", features=["struts"])
    assert "after the volume's distance transform" in caplog.text
    stored = pv.open_volume(vol.path)
    np.testing.assert_array_equal(stored.array("distance/truth")[...],
                                  feature_transform(twin_arrays["truth"], voxel_size=vs))
    assert "distance:truth" in stored.provenance
    assert sorted(p.name for p in (vol.path / "distance").iterdir()) == ["truth", "zarr.json"]  # passes gone
    ref = struts.lognormal_fit(struts.strut_diameters(twin_arrays["truth"], voxel_size=vs)["diameters"])
    assert first["strut_diameter_mean"] == pytest.approx(ref["mean"], rel=1e-12)
    assert first["strut_skeleton_voxels"] == ref["n"]
    caplog.clear()
    with caplog.at_level("INFO", logger="porevox"):
        again = pv.quantify(vol.path, labels="truth", features=["struts"])
    assert "reading the stored distance transform" in caplog.text
    assert again["strut_diameter_mean"] == first["strut_diameter_mean"]


def test_input_not_modified_and_dask_or_zarr_input(structure, tmp_path):
    import dask.array as da
    import zarr

    before = structure.copy()
    a = pv.quantify(structure, features=["density", "surface"])
    np.testing.assert_array_equal(structure, before)
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=structure.shape, dtype="uint8", chunks=(20, 25, 30))
    z[:] = structure
    b = pv.quantify(z, features=["density", "surface"])
    c = pv.quantify(da.from_array(structure, chunks=(13, 50, 60)), features=["density", "surface"])
    for r in (b, c):
        assert r["specific_surface_area"] == pytest.approx(a["specific_surface_area"], rel=1e-12)


@pytest.mark.parametrize("case", ["empty", "all_solid", "non_percolating"])
def test_undefined_features_are_nan_with_a_warning(case):
    solid = np.zeros((20, 24, 24), np.uint8)
    if case == "all_solid":
        solid[:] = 1
    elif case == "non_percolating":
        solid[5:15, 2:10, 5:15] = 1                     # a block that never reaches y = 23
    with pytest.warns(FeatureWarning):
        f = pv.quantify(solid, voxel_size=(0.05, 0.04, 0.04))
    assert math.isnan(f["tortuosity"]) if case != "all_solid" else f["tortuosity"] == pytest.approx(1.0)
    if case == "empty":
        assert f["relative_density"] == 0 and math.isnan(f["strut_diameter_mean"])
    if case == "all_solid":
        assert f["relative_density"] == 1 and f["specific_surface_area"] == 0
        assert math.isnan(f["mean_curvature_mean"]) and math.isnan(f["bruggeman_alpha"])
    if case == "non_percolating":
        assert f["percolating_fraction"] == 0 and math.isnan(f["bruggeman_alpha"])
        assert np.isfinite(f["specific_surface_area"]) and np.isfinite(f["strut_diameter_mean"])


def test_sphere_through_the_pipeline_anisotropic():
    """A ball of radius 0.3 µm sampled at the paper's voxel size: SA, M, G in µm units."""
    vs = (0.025, 0.0186, 0.0186)
    r = 0.3
    shape = (60, 78, 78)          # the ball clear of the curvature's outer-face margin
    z, y, x = np.indices(shape, dtype=float)
    c = [(n - 1) / 2 for n in shape]
    ball = (((z - c[0]) * vs[0]) ** 2 + ((y - c[1]) * vs[1]) ** 2 + ((x - c[2]) * vs[2]) ** 2 <= r * r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureWarning)      # no path along y: τ undefined
        f = pv.quantify(ball.astype(np.uint8), voxel_size=vs, chunks=(23, 31, 37),
                        features=["density", "surface", "curvature"])
    volume = math.prod(n * v for n, v in zip(shape, vs))
    assert f["specific_surface_area"] == pytest.approx(4 * math.pi * r * r / volume, rel=0.02)
    assert f["mean_curvature_mean"] == pytest.approx(1 / r, rel=0.03)
    assert f["gaussian_curvature_mean"] == pytest.approx(1 / r**2, rel=0.05)
    assert f["euler_characteristic"] == 1
    assert f["gauss_bonnet_euler"] == pytest.approx(1, abs=0.1)


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="directions must be"):
        make_options(directions=["up"])
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        make_options(order=3)
    with pytest.raises(ValueError, match="unknown feature group"):
        make_options(features=["colour"])
    with pytest.raises(ValueError, match="axis"):
        make_options(axis="w")
    with pytest.raises(ValueError, match="3-D"):
        pv.quantify(np.ones((4, 4), np.uint8))


def test_volume_features_stored_and_resumed(tmp_path, twin_arrays, caplog):
    from tests.conftest import twin_volume

    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (8, 64, 80))
    groups = ["density", "surface", "slices", "struts", "tortuosity"]  # 16 slices: inside the
    first = quantify_volume(vol.path, labels="truth", features=groups)  # curvature's margin
    stored = pv.open_volume(vol.path).meta["features"]["truth"]
    assert stored["relative_density"] == pytest.approx(twin_arrays["truth"].mean())
    assert stored["specific_surface_area"] == first["specific_surface_area"]
    dist = load_distributions(vol.path, "truth")
    assert dist["strut_hist_counts"].sum() == first["strut_skeleton_voxels"]
    assert len(dist["slices_relative_density"]) == 16
    with caplog.at_level("INFO", logger="porevox"):
        again = quantify_volume(vol.path, labels="truth", features=groups)
    assert "nothing to do" in caplog.text
    assert again["strut_diameter_mean"] == first["strut_diameter_mean"]
    other = quantify_volume(vol.path, labels="truth", features=groups, order=1)   # new parameters
    assert other["tortuosity"] != first["tortuosity"]
    with pytest.raises(pv.InvalidVolumeError, match="no label image 'unet'"):
        quantify_volume(vol.path, labels="unet")


def test_study_on_a_cluster(tmp_path, client):
    """Two tomograms quantified together on a real LocalCluster: the table holds what
    pv.quantify gives for each alone; figures are written."""
    import pandas as pd

    from porevox.engine import create_volume
    from porevox.pipelines import quantify_study

    vs = (0.05, 0.04, 0.04)
    samples, arrays = [], []
    for k, porosity in enumerate((0.55, 0.3)):
        solid = porous((48, 56, 56), np.random.default_rng(k), porosity=porosity, sigma=2.5)
        vol = create_volume(tmp_path / f"s{k}.zarr", solid.shape, "uint8", vs, chunks=(24, 56, 56))
        vol.group.create_array("labels/truth", data=solid.astype(np.uint8), chunks=(24, 28, 56))
        arrays.append(solid.astype(np.uint8))
        samples.append({"id": f"s{k}", "path": f"s{k}.zarr", "paste": "HPA", "temperature_c": 175 + 225 * k,
                        "voi": 0, "conductivity": 10.0 * (k + 1)})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "t", "samples": samples}))
    result = quantify_study(tmp_path / "study.yaml", labels="truth")
    table = pd.read_parquet(tmp_path / "features.parquet")
    assert list(table["id"]) == ["s0", "s1"] and list(table["conductivity"]) == [10.0, 20.0]
    csv = pd.read_csv(tmp_path / "features.csv")
    assert csv["relative_density"].tolist() == pytest.approx(table["relative_density"].tolist())
    for k, solid in enumerate(arrays):
        alone = pv.quantify(solid, voxel_size=vs)
        for key in SCALARS:
            assert table[key][k] == pytest.approx(alone[key], rel=1e-9), key
    assert quantify_volume(tmp_path / "s1.zarr", labels="truth")["tortuosity"] == table["tortuosity"][1]
    assert sorted(result["figures"]["truth"]) == ["curvature", "strut_diameters", "trends"]
    for path in result["figures"]["truth"].values():
        assert path.endswith(".png") and (tmp_path / "figures").is_dir()
