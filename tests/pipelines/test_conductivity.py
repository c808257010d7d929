"""`pv.conductivity`: every input type gives the kernel's answer on the same data;
volumes supply their voxel size; the solve runs in the driver or on a worker."""

import json
import logging
import math

import dask.array as da
import numpy as np
import pytest
import zarr

from porevox import InvalidVolumeError, StageError
from porevox.engine.storage import create_volume, open_volume
from porevox.kernels.conductivity import NoPathWarning, effective_conductivity
from porevox.pipelines import transport as pipeline
from porevox.pipelines.transport import conductivity
from tests.conftest import porous

VS = (0.025, 0.0186, 0.0186)
KEYS = {"relative_conductivity", "tortuosity_factor", "relative_density", "percolating_fraction",
        "iterations", "residual", "flux_imbalance", "method", "seconds", "axis", "voxel_size",
        "shape", "ran_on", "memory_estimate_bytes", "blocks"}


@pytest.fixture(scope="module")
def solid():
    return porous((18, 22, 20), np.random.default_rng(3), porosity=0.4, sigma=1.5).astype(np.uint8)


@pytest.fixture(scope="module")
def expected(solid):
    return effective_conductivity(solid, voxel_size=VS, axis=1).relative_conductivity


@pytest.fixture
def volume_path(tmp_path, solid):
    path = tmp_path / "sample.zarr"
    vol = create_volume(path, solid.shape, "uint8", VS, chunks=(9, 11, 10))
    for name, data in (("truth", solid), ("otsu", 1 - solid)):
        arr = vol.group.create_array(f"labels/{name}", shape=solid.shape, dtype="uint8",
                                     chunks=(9, 11, 10))
        arr[...] = data
    return path


def test_numpy_input(solid, expected):
    out = conductivity(solid, voxel_size=VS)
    assert set(out) == KEYS
    assert out["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
    assert out["tortuosity_factor"] == pytest.approx(solid.mean() / expected, rel=1e-9)
    assert out["axis"] == "y" and out["voxel_size"] == list(VS) and out["shape"] == list(solid.shape)
    assert out["ran_on"] == "driver" and out["method"] == "mg"
    json.loads(json.dumps(out))  # plain JSON values
    assert all(isinstance(v, (int, float, str, list)) for v in out.values())


def test_dask_and_zarr_inputs(solid, expected):
    darr = da.from_array(solid, chunks=(7, 8, 9))
    assert conductivity(darr, voxel_size=VS)["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
    zarr_arr = zarr.create_array(store={}, shape=solid.shape, dtype="uint8", chunks=(5, 6, 7))
    zarr_arr[...] = solid
    assert conductivity(zarr_arr, voxel_size=VS)["relative_conductivity"] == \
        pytest.approx(expected, rel=1e-12)


def test_volume_path_reads_labels_and_voxel_size(volume_path, solid, expected):
    out = conductivity(volume_path)  # labels="truth", the volume's voxel size
    assert out["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
    assert out["voxel_size"] == list(VS)
    assert conductivity(str(volume_path), labels="otsu")["relative_conductivity"] == \
        pytest.approx(effective_conductivity(1 - solid, voxel_size=VS).relative_conductivity, rel=1e-12)
    iso = conductivity(open_volume(volume_path, mode="r"), voxel_size=(1, 1, 1))
    assert iso["relative_conductivity"] == pytest.approx(
        effective_conductivity(solid, axis=1).relative_conductivity, rel=1e-12)


def test_missing_labels_names_the_ones_there(volume_path):
    with pytest.raises(InvalidVolumeError, match=r"no label image 'unet'.*\['otsu', 'truth'\]"):
        conductivity(volume_path, labels="unet")


@pytest.mark.parametrize("axis, index", [("z", 0), ("y", 1), ("x", 2), (0, 0), (2, 2)])
def test_axis_names(solid, axis, index):
    out = conductivity(solid, voxel_size=VS, axis=axis)
    assert out["axis"] == "zyx"[index]
    assert out["relative_conductivity"] == pytest.approx(
        effective_conductivity(solid, voxel_size=VS, axis=index).relative_conductivity, rel=1e-12)


def test_default_voxel_size_is_isotropic_and_logged(solid, caplog):
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.transport"):
        out = conductivity(solid)
    assert out["voxel_size"] == [1.0, 1.0, 1.0]
    text = caplog.text
    assert "isotropic voxels assumed" in text
    assert "per-tomogram solve of 0.00792M voxels along y" in text and "in this process" in text


def test_solver_options_pass_through(solid, expected):
    out = conductivity(solid, voxel_size=VS, method="jacobi", rtol=1e-10)
    assert out["method"] == "jacobi"
    assert out["relative_conductivity"] == pytest.approx(expected, rel=1e-7)


def test_no_path_gives_zero_inf_and_warns(solid):
    broken = solid.copy()
    broken[:, 10] = 0
    with pytest.warns(NoPathWarning):
        out = conductivity(broken, axis="y")
    assert out["relative_conductivity"] == 0.0 and math.isinf(out["tortuosity_factor"])


def test_bad_inputs_raise(solid):
    with pytest.raises(TypeError, match="array or a volume path"):
        conductivity(3.0)
    with pytest.raises(InvalidVolumeError, match="3-D"):
        conductivity(solid[0])
    with pytest.raises(InvalidVolumeError, match="axis must be"):
        conductivity(solid, axis="w")
    with pytest.raises(InvalidVolumeError, match="voxel_size"):
        conductivity(solid, voxel_size=(1, 1))


def test_too_big_for_memory_says_how_to_fix(solid, monkeypatch):
    monkeypatch.setattr(pipeline, "memory_estimate", lambda shape, method="mg": 2**60)
    with pytest.raises(StageError, match="crop the volume"):
        conductivity(solid)


def test_external_cluster_solves_on_a_worker(client, volume_path, solid, expected, caplog):
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.transport"):
        out = conductivity(volume_path)
    assert out["ran_on"] == "worker" and "as one task on a Dask worker" in caplog.text
    assert out["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
    assert conductivity(solid, voxel_size=VS)["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
    broken = solid.copy()
    broken[:, 10] = 0
    with pytest.warns(NoPathWarning):  # raised on the worker, re-raised here
        assert conductivity(da.from_array(broken, chunks=9))["relative_conductivity"] == 0.0


def test_external_cluster_without_room_solves_here(client, solid, monkeypatch):
    monkeypatch.setattr(pipeline, "worker_memory_limit", lambda: 1000)
    assert conductivity(solid)["ran_on"] == "driver"


def test_in_process_local_cluster_solves_here(solid, expected):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as lc, Client(lc):
        out = conductivity(da.from_array(solid, chunks=9), voxel_size=VS)
    assert out["ran_on"] == "driver"
    assert out["relative_conductivity"] == pytest.approx(expected, rel=1e-12)
