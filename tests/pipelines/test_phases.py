"""Any phase out: a phase (a value, values joined, a name) of a multi-phase label image
read as the binary image of that phase, through the arrays, the volumes, the study,
score, conductivity and regress; each against the same computation on the plain
binary image of the phase."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

import porevox as pv
from porevox.engine import as_dask, phases, plan_label_ingest, run_label_ingest
from porevox.engine.blockwise import stored_array
from porevox.errors import InvalidVolumeError
from porevox.pipelines.quantify import quantify_phases, quantify_volume

from ..conftest import porous

SCALARS = ("relative_density", "porosity", "percolating_fraction", "specific_surface_area",
           "euler_characteristic", "strut_diameter_mean", "tortuosity", "mean_curvature_mean",
           "gaussian_curvature_mean", "bruggeman_alpha", "beta", "specific_perimeter_2d",
           "shape_index_mean")
NAMES = {0: "pore", 1: "LSM", 2: "YSZ"}


def three_phases(shape=(30, 36, 34), seed=3):
    """An SOFC-cathode-like image: 0 pore, 1 LSM, 2 YSZ, each a connected-ish network."""
    rng = np.random.default_rng(seed)
    a = porous(shape, rng, porosity=0.55, sigma=2.0)
    b = porous(shape, rng, porosity=0.5, sigma=2.0)
    return np.where(a, 1, np.where(b, 2, 0)).astype(np.uint8)


def assert_same_features(got: dict, ref: dict) -> None:
    for key in SCALARS:
        a, b = got[key], ref[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15), key


@pytest.fixture(scope="module")
def labels3():
    return three_phases()


@pytest.fixture
def volume3(tmp_path, labels3):
    """A volume with an image and labels/three (uint16, named phases), odd chunks."""
    np.save(tmp_path / "image.npy", (labels3 * 90).astype(np.uint8))
    np.save(tmp_path / "three.npy", labels3.astype(np.uint16))
    vol = tmp_path / "cathode.zarr"
    pv.ingest(tmp_path / "image.npy", vol, voxel_size=(0.5, 0.4, 0.4), chunks=(13, 17, 19))
    run_label_ingest(plan_label_ingest(tmp_path / "three.npy", vol, "three",
                                       phase_names="0=pore,1=LSM,2=YSZ"))
    return vol


def test_a_phase_is_named_by_values_or_names():
    assert phases.parse(2) == (2,)
    assert phases.parse("2+1") == (1, 2) == phases.parse("1,2") == phases.parse([2, "1"])
    assert phases.parse("lsm+YSZ", NAMES) == (1, 2)
    assert phases.parse(["pore", 2], NAMES) == (0, 2)
    for bad in ("foam", "1+foam", "", "70000"):
        with pytest.raises(InvalidVolumeError, match="neither a label value"):
            phases.parse(bad, NAMES)
    assert phases.label((1, 2), NAMES) == "LSM+YSZ"
    assert phases.label((0, 3), NAMES) == "0+3"
    assert phases.key("seg", (1,)) == "seg" and phases.key("seg", None) == "seg"
    assert phases.key("seg", (0,)) == "seg.phase0" and phases.key("seg", (1, 2)) == "seg.phase1_2"


def test_a_phase_of_a_stored_image_reads_as_its_binary_image(tmp_path, labels3):
    """Boxes across odd chunks, the Dask array over them, and distinct graph keys per phase."""
    import dask.base
    import zarr

    arr = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=labels3.shape, dtype="uint8",
                          chunks=(7, 11, 13))
    arr[:] = labels3
    view = phases.phase_of(arr, (0, 2))
    assert stored_array(view) and view.dtype == np.uint8
    box = (slice(3, 25), slice(5, 31), slice(0, 34))
    np.testing.assert_array_equal(view[box], np.isin(labels3[box], (0, 2)))
    np.testing.assert_array_equal(as_dask(view).compute(), np.isin(labels3, (0, 2)))
    assert dask.base.tokenize(view) != dask.base.tokenize(phases.phase_of(arr, (2,)))
    np.testing.assert_array_equal(phases.phase_of(as_dask(arr), (1,)).compute(), labels3 == 1)


def test_quantify_of_a_phase_equals_quantify_of_its_binary_image(labels3):
    vs = (0.5, 0.4, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for phase, values in (("1+2", (1, 2)), (0, (0,))):
            ref = pv.quantify(np.isin(labels3, values).astype(np.uint8), voxel_size=vs)
            assert_same_features(pv.quantify(labels3, voxel_size=vs, phase=phase), ref)
            chunked = pv.quantify(labels3, voxel_size=vs, phase=phase, chunks=(13, 17, 19),
                                  tortuosity_method="whole")
            for key in SCALARS:
                assert chunked[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    with pytest.raises(InvalidVolumeError, match="phase name of an array"):
        pv.quantify(labels3, phase="YSZ")


def test_the_phases_of_a_volume_stored_apart_and_read_back(volume3, labels3, caplog):
    """Two phases of one label image in one run, with conductivity: each equal to the
    features and conductivity of its binary image; stored under their own keys; a
    rerun reads them back; the image is never read as binary without a phase."""
    vs = (0.5, 0.4, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = quantify_phases(volume3, labels="three", phases=["pore", "LSM+YSZ"], axis="x",
                                  with_conductivity=True)
    assert [r["phase"] for r in results] == ["pore", "LSM+YSZ"]
    assert [r["phase_values"] for r in results] == [[0], [1, 2]]
    for r in results:
        binary = np.isin(labels3, r["phase_values"]).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_same_features(r, pv.quantify(binary, voxel_size=vs, axis="x"))
            ref = pv.conductivity(binary, voxel_size=vs, axis="x")
        assert r["relative_conductivity"] == pytest.approx(ref["relative_conductivity"], rel=1e-12)
        assert r["tortuosity_factor"] == pytest.approx(ref["tortuosity_factor"], rel=1e-12)
    vol = pv.open_volume(volume3)
    assert {"three.phase0", "three.phase1_2"} <= set(vol.meta["features"])
    assert {"quantify:three.phase0", "quantify:three.phase1_2"} <= set(vol.provenance)
    with caplog.at_level("INFO", logger="porevox"):
        again = quantify_phases(volume3, labels="three", phases=[0], axis="x")
    assert "already computed" in caplog.text
    assert again[0]["relative_density"] == results[0]["relative_density"]
    with pytest.raises(InvalidVolumeError, match="not a binary segmentation"):
        quantify_volume(volume3, labels="three")
    with pytest.raises(InvalidVolumeError, match=r"holds the values 0 = pore, 1 = LSM, 2 = YSZ; phase 7"):
        quantify_volume(volume3, labels="three", phase=7)
    with pytest.raises(InvalidVolumeError, match="neither a label value"):
        quantify_volume(volume3, labels="three", phase="GDC")


def test_score_and_conductivity_of_a_phase(volume3, labels3, tmp_path):
    from porevox.pipelines.score import score, score_volume

    other = labels3.copy()
    other[:, :5] = 2                                       # a segmentation that differs
    np.save(tmp_path / "other.npy", other)
    run_label_ingest(plan_label_ingest(tmp_path / "other.npy", volume3, "other",
                                       phase_names="0=pore,1=LSM,2=YSZ"))
    got = score_volume(volume3, labels="other", truth="three", phase="YSZ")
    ref = score((other == 2).astype(np.uint8), (labels3 == 2).astype(np.uint8))
    assert got["phase"] == "YSZ"
    for key in ("jaccard_cu", "jaccard_pore", "precision_cu", "recall_cu", "accuracy"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    ref = pv.conductivity((labels3 == 1).astype(np.uint8), voxel_size=(0.5, 0.4, 0.4), axis="z")
    got = pv.conductivity(volume3, labels="three", phase="LSM", axis="z")
    assert got["relative_conductivity"] == pytest.approx(ref["relative_conductivity"], rel=1e-12)


def test_a_study_quantifies_each_phase_into_its_own_rows(volume3, tmp_path):
    """features.csv: one row per (tomogram, labels, phase), with the phase column; the
    study file's quantify.phase checked; regress chooses rows by --phase."""
    import shutil

    from porevox.pipelines.feature_study import quantify_study
    from porevox.pipelines.regress import InvalidTableError, plan_regression
    from porevox.pipelines.studyfile import load_study

    study = tmp_path / "study"
    study.mkdir()
    for k in range(2):
        shutil.copytree(volume3, study / f"s{k}.zarr")
    doc = {"samples": [{"id": f"s{k}", "path": f"s{k}.zarr"} for k in range(2)],
           "stages": {"quantify": {"labels": ["three"], "phase": ["pore", 2]}}}
    (study / "study.yaml").write_text(yaml.safe_dump(doc))
    assert load_study(study / "study.yaml").stages["quantify"]["phase"] == ["pore", 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = quantify_study(study, labels="three", phase=["pore", 2], features=["density", "surface"],
                           figures=False)
    table = pd.read_csv(r["csv"])
    assert list(zip(table["id"], table["phase"])) == [("s0", "pore"), ("s1", "pore"), ("s0", "YSZ"),
                                                      ("s1", "YSZ")]
    labels3 = np.load(tmp_path / "three.npy")
    assert table["relative_density"].tolist() == pytest.approx(
        [(labels3 == 0).mean()] * 2 + [(labels3 == 2).mean()] * 2, rel=1e-12)
    doc["stages"]["quantify"]["phase"] = []
    (study / "study.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception, match="quantify.phase"):
        load_study(study / "study.yaml")
    rows = pd.DataFrame({"id": [f"s{i}" for i in range(8)], "labels": "three",
                         "phase": ["pore"] * 4 + ["YSZ"] * 4, "conductivity": np.arange(8.0),
                         "relative_density": np.linspace(0.2, 0.5, 8), "tortuosity": np.linspace(1, 2, 8)})
    with pytest.raises(InvalidTableError, match="several phases .*choose one with --phase"):
        plan_regression(rows, features=["D", "tau"])
    plan = plan_regression(rows, features=["D", "tau"], phase="YSZ")
    assert plan.phase == "YSZ" and list(plan.train["conductivity"]) == [4.0, 5.0, 6.0, 7.0]


def test_the_pore_phase_sees_the_solids_interface_from_the_other_side(labels3):
    """The curvature of phase 0 against that of its complement: the normal reversed,
    so M changes sign and G does not (both principal curvatures change sign)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pore = pv.quantify(labels3, phase=0, features=["curvature", "surface"])
        rest = pv.quantify(labels3, phase="1+2", features=["curvature", "surface"])
    assert pore["mean_curvature_mean"] == pytest.approx(-rest["mean_curvature_mean"], rel=1e-9)
    assert pore["gaussian_curvature_mean"] == pytest.approx(rest["gaussian_curvature_mean"], rel=1e-9)
    assert pore["specific_surface_area"] == pytest.approx(rest["specific_surface_area"], rel=1e-12)


def test_block_tortuosity_of_a_phase_reads_the_stored_labels(volume3, labels3):
    """The block-decomposed fast marching over a stored phase (odd blocks, its scratch
    in the volume's store, removed after) against the whole-volume solve of the
    phase's binary image, to test_tortuosity's tolerance for blocks (order 1: rel 1e-6)."""
    from porevox.pipelines.tortuosity import tortuosity

    binary = (labels3 == 0).astype(np.uint8)
    options = {"directions": ["+y", "-x"], "order": 1}
    ref = tortuosity(binary, voxel_size=(0.5, 0.4, 0.4), method="whole", **options)
    got = tortuosity(volume3, labels="three", phase="pore", method="blocks", chunks=(13, 17, 19), **options)
    assert got["method"] == "blocks"
    assert got["tortuosity_by_axis"] == pytest.approx(ref["tortuosity_by_axis"], rel=1e-6)
    assert not any(p.name.startswith(".porevox-tortuosity") for p in volume3.iterdir())
