"""`pv.tortuosity`: every input type gives the kernel's answer on the same data; the
block-decomposed solver equals the whole-volume one (threads and a real LocalCluster,
odd chunks); placement and the automatic choice; bad input names the fix."""

import json
import logging
import math

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from porevox import InvalidVolumeError, StageError
from porevox.engine.storage import create_volume
from porevox.kernels.conductivity import NoPathWarning
from porevox.kernels.fmm import geodesic_tortuosity, inlet_distance
from porevox.pipelines import tortuosity as pipeline
from porevox.pipelines.tortuosity import PAPER_DIRECTIONS, BlockSolver, parse_directions, tortuosity
from tests.conftest import porous

VS = (0.025, 0.0186, 0.0186)
ODD = (17, 23, 31)
KEYS = {"tortuosity", "tortuosity_by_axis", "tortuosity_profile", "reachable_fraction",
        "reachable_fraction_by_axis", "n_averaged", "method", "order", "iterations",
        "iterations_by_axis", "seconds", "ran_on", "axis", "directions", "voxel_size", "shape",
        "last_fraction", "chunks", "memory_estimate_bytes"}


@pytest.fixture(scope="module")
def solid():
    return porous((40, 50, 60), np.random.default_rng(11), porosity=0.4, sigma=2.0).astype(np.uint8)


def kernel_tau(solid, name, voxel_size=VS, order=2):
    axis, sign = "zyx".index(name[1]), (1 if name[0] == "+" else -1)
    d = inlet_distance(solid, axis=axis, direction=sign, voxel_size=voxel_size, order=order)
    return geodesic_tortuosity(d, solid, axis=axis, direction=sign, voxel_size=voxel_size)


@pytest.fixture(scope="module")
def expected(solid):
    return {n: kernel_tau(solid, n) for n in PAPER_DIRECTIONS}


@pytest.fixture
def volume_path(tmp_path, solid):
    path = tmp_path / "sample.zarr"
    vol = create_volume(path, solid.shape, "uint8", VS, chunks=(20, 25, 30))
    for name, data in (("truth", solid), ("otsu", 1 - solid)):
        arr = vol.group.create_array(f"labels/{name}", shape=solid.shape, dtype="uint8", chunks=(20, 25, 30))
        arr[...] = data
    return path


# --------------------------------------------------------------------------- whole
def test_numpy_input_is_the_kernel(solid, expected):
    out = tortuosity(solid, voxel_size=VS)
    assert set(out) == KEYS
    ref = expected["+y"]
    assert out["tortuosity"] == pytest.approx(ref.tau, rel=1e-12)
    assert out["tortuosity_by_axis"] == {"+y": out["tortuosity"]}
    assert np.allclose(out["tortuosity_profile"], ref.profile, rtol=1e-12, equal_nan=True)
    assert len(out["tortuosity_profile"]) == solid.shape[1]
    assert out["reachable_fraction"] == pytest.approx(ref.reachable_fraction)
    assert out["n_averaged"] == ref.n_averaged
    assert out["method"] == "whole" and out["ran_on"] == "driver" and out["iterations"] == 0
    assert out["axis"] == "y" and out["directions"] == ["+y"] and out["order"] == 2
    assert out["voxel_size"] == list(VS) and out["shape"] == list(solid.shape)
    json.loads(json.dumps(out))


def test_paper_directions(solid, expected):
    out = tortuosity(solid, voxel_size=VS, directions="paper")
    assert tuple(out["tortuosity_by_axis"]) == PAPER_DIRECTIONS == ("+y", "-y", "+x", "-x", "+z")
    for name, ref in expected.items():
        assert out["tortuosity_by_axis"][name] == pytest.approx(ref.tau, rel=1e-12)
        assert out["reachable_fraction_by_axis"][name] == pytest.approx(ref.reachable_fraction)
    assert len({round(t, 9) for t in out["tortuosity_by_axis"].values()}) == 5  # really different
    x = tortuosity(solid, voxel_size=VS, axis="x", directions=["z", "-z"])
    assert list(x["tortuosity_by_axis"]) == ["+x", "+z", "-z"]
    assert x["tortuosity"] == pytest.approx(expected["+x"].tau, rel=1e-12)
    assert x["tortuosity_by_axis"]["-z"] == pytest.approx(kernel_tau(solid, "-z").tau, rel=1e-12)
    assert len(x["tortuosity_profile"]) == solid.shape[2]


def test_parse_directions():
    assert parse_directions(None, 1) == ("+y",)
    assert parse_directions("paper", 0) == ("+z", "+y", "-y", "+x", "-x")
    assert parse_directions(("y", "-Y", " +x"), 1) == ("+y", "-y", "+x")
    assert parse_directions("-x", 2) == ("+x", "-x")
    for bad in ("w", ["+y", "xy"], [1], "++y"):
        with pytest.raises(InvalidVolumeError, match=r"signed axis names from .*'paper'.*directions=\("):
            parse_directions(bad, 1)


def test_dask_zarr_and_volume_inputs(solid, expected, volume_path):
    ref = expected["+y"].tau
    assert tortuosity(da.from_array(solid, chunks=(7, 8, 9)), voxel_size=VS)["tortuosity"] == \
        pytest.approx(ref, rel=1e-12)
    z = zarr.create_array(store={}, shape=solid.shape, dtype="uint8", chunks=(5, 6, 7))
    z[...] = solid
    assert tortuosity(z, voxel_size=VS)["tortuosity"] == pytest.approx(ref, rel=1e-12)
    out = tortuosity(volume_path)  # labels="truth" and the volume's voxel size
    assert out["tortuosity"] == pytest.approx(ref, rel=1e-12) and out["voxel_size"] == list(VS)
    other = tortuosity(str(volume_path), labels="otsu")["tortuosity"]
    assert other == pytest.approx(kernel_tau(1 - solid, "+y").tau, rel=1e-12)
    with pytest.raises(InvalidVolumeError, match=r"no label image 'unet'.*\['otsu', 'truth'\]"):
        tortuosity(volume_path, labels="unet")


def test_anisotropic_voxels_and_order(solid):
    iso = tortuosity(solid)["tortuosity"]  # isotropic, logged
    aniso = tortuosity(solid, voxel_size=VS)["tortuosity"]
    assert iso == pytest.approx(kernel_tau(solid, "+y", (1, 1, 1)).tau, rel=1e-12)
    assert abs(iso - aniso) > 1e-3  # the voxel size matters
    first = tortuosity(solid, voxel_size=VS, order=1)
    assert first["order"] == 1 and first["tortuosity"] == pytest.approx(
        kernel_tau(solid, "+y", order=1).tau, rel=1e-12)


def test_all_solid_is_one_and_empty_is_nan():
    out = tortuosity(np.ones((8, 20, 9), np.uint8), voxel_size=VS, directions="paper")
    assert all(t == pytest.approx(1.0, abs=1e-12) for t in out["tortuosity_by_axis"].values())
    for empty in (np.zeros((8, 20, 9), np.uint8), np.zeros((0, 20, 9), np.uint8)):
        with pytest.warns(NoPathWarning, match=r"tortuosity along \+y: no percolating path"):
            assert math.isnan(tortuosity(empty)["tortuosity"])


def test_non_percolating_is_nan_with_warning(solid):
    cut = solid.copy()
    cut[:, 30] = 0
    for method in ("whole", "blocks"):
        with pytest.warns(NoPathWarning) as caught:
            out = tortuosity(cut, voxel_size=VS, directions=["-y", "+x"], method=method,
                             chunks=(20, 25, 30))
        assert sorted(str(w.message)[:18] for w in caught) == ["tortuosity along +", "tortuosity along -"]
        assert all("no percolating path" in str(w.message) for w in caught)
        assert math.isnan(out["tortuosity"]) and 0 < out["reachable_fraction"] < 1
        assert math.isnan(out["tortuosity_by_axis"]["-y"])
        assert out["tortuosity_by_axis"]["+x"] == pytest.approx(kernel_tau(cut, "+x").tau, rel=5e-3)


def test_input_not_modified(solid):
    before = solid.copy()
    tortuosity(solid, voxel_size=VS, directions=["-z"])
    tortuosity(solid, voxel_size=VS, method="blocks", chunks=(20, 25, 30), order=1)
    assert np.array_equal(solid, before)


def test_bad_inputs_raise(solid):
    with pytest.raises(TypeError, match="array or a volume path"):
        tortuosity(3.0)
    with pytest.raises(InvalidVolumeError, match=r"solid must be 3-D \(z, y, x\); got 2-D"):
        tortuosity(solid[0])
    with pytest.raises(InvalidVolumeError, match="axis must be 0, 1, 2 or 'z', 'y', 'x'; got 'w'"):
        tortuosity(solid, axis="w")
    with pytest.raises(InvalidVolumeError, match="signed axis names"):
        tortuosity(solid, directions=["+w"])
    with pytest.raises(InvalidVolumeError, match="order must be 1 or 2"):
        tortuosity(solid, order=3)
    with pytest.raises(InvalidVolumeError, match="method must be one of"):
        tortuosity(solid, method="fast")
    with pytest.raises(InvalidVolumeError, match="last_fraction"):
        tortuosity(solid, last_fraction=1.5)
    with pytest.raises(InvalidVolumeError, match="voxel_size"):
        tortuosity(solid, voxel_size=(1, 1))
    with pytest.raises(InvalidVolumeError, match=r"at least the halo \(2 voxels"):
        tortuosity(solid, method="blocks", chunks=(1, 25, 30))


# --------------------------------------------------------------------------- placement
def test_auto_falls_back_to_blocks_when_nothing_fits(solid, expected, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "memory_estimate", lambda shape: 2**60)
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.tortuosity"):
        out = tortuosity(solid, voxel_size=VS, chunks=(20, 25, 30), order=1)
    assert out["method"] == "blocks" and out["chunks"] == [20, 25, 30]
    assert "more than this process or a worker has free; block-decomposed" in caplog.text
    assert out["tortuosity"] == pytest.approx(kernel_tau(solid, "+y", order=1).tau, rel=1e-9)
    with pytest.raises(StageError, match="use method='blocks'"):
        tortuosity(solid, voxel_size=VS, method="whole")


def test_external_cluster_solves_each_direction_on_a_worker(client, solid, expected, volume_path, caplog):
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.tortuosity"):
        out = tortuosity(volume_path, directions=["-y", "+z"])
    assert out["method"] == "whole" and out["ran_on"] == "worker"
    assert "one task per direction on the Dask workers" in caplog.text
    for name in ("+y", "-y", "+z"):
        assert out["tortuosity_by_axis"][name] == pytest.approx(expected[name].tau, rel=1e-12)
    cut = solid.copy()
    cut[:, 30] = 0
    with pytest.warns(NoPathWarning):  # found on the worker, warned here
        assert math.isnan(tortuosity(cut, voxel_size=VS)["tortuosity"])


# --------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("order", [1, 2])
def test_blocks_equal_whole_on_odd_chunks(solid, order, tmp_path):
    """Threads (no cluster): the block solver's distances and τ against the
    whole-volume solve. Order 1 is monotone: equal to the tolerance. Order 2 switches
    stencils discontinuously at ties (see the module docstring): τ within 1e-3."""
    solver = BlockSolver(solid, voxel_size=VS, order=order, chunks=ODD, scratch=tmp_path)
    try:
        iterations = solver.run(["+y", "-x"])
        for name in ("+y", "-x"):
            axis, sign = "zyx".index(name[1]), (1 if name[0] == "+" else -1)
            whole = inlet_distance(solid, axis=axis, direction=sign, voxel_size=VS, order=order)
            blocks = solver.read(name)
            fin = np.isfinite(whole)
            assert np.array_equal(np.isfinite(blocks), fin)
            err = np.abs(blocks[fin] - whole[fin]) / VS[axis]
            tau = solver.tortuosity(name).tau
            ref = geodesic_tortuosity(whole, solid, axis=axis, direction=sign, voxel_size=VS).tau
            if order == 1:
                assert err.max() < 1e-4 and tau == pytest.approx(ref, rel=1e-7)
            else:
                assert np.median(err) < 0.01 and err.max() < 1.0 and tau == pytest.approx(ref, rel=1e-3)
            assert 2 <= iterations[name] < 40
    finally:
        solver.close()
    assert not any(tmp_path.iterdir())  # the scratch is removed


def test_blocks_never_read_what_a_task_writes(solid, monkeypatch):
    """Per iteration: each (array, chunk) written by one task only, and read by none."""
    log, real = [], pipeline._block_step
    iteration = [0]

    def recording(arrays, versions, solid_arr, core, outer, chunks, *args):
        b = tuple(s.start // c for s, c in zip(core, chunks))
        changed = real(arrays, versions, solid_arr, core, outer, chunks, *args)
        log.append((iteration[0], id(arrays[0]), {(v, c) for c, v in versions.items()},
                    (1 - versions[b], b) if changed else None))
        return changed

    real_compute = pipeline.compute

    def counting(*tasks):
        iteration[0] += 1
        return real_compute(*tasks)

    monkeypatch.setattr(pipeline, "_block_step", recording)
    monkeypatch.setattr(pipeline, "compute", counting)
    solver = BlockSolver(solid[:24, :30, :36], voxel_size=VS, chunks=(9, 11, 13))
    try:
        with dask.config.set(scheduler="synchronous"):
            iterations = solver.run(["-y"])
    finally:
        solver.close()
    assert iterations["-y"] > 2 and len(log) > 20 and sum(e[3] is not None for e in log) > 20
    for it in set(e[0] for e in log):
        for arr in set(e[1] for e in log if e[0] == it):
            tasks = [e for e in log if e[0] == it and e[1] == arr]
            writes = [e[3] for e in tasks if e[3] is not None]
            reads = set().union(*(e[2] for e in tasks))
            assert len(writes) == len(set(writes))
            assert not reads & set(writes)


def test_blocks_on_a_local_cluster(client, solid, volume_path, caplog):
    """A real 2-worker LocalCluster, odd chunks, a volume input (scratch beside it)."""
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.tortuosity"):
        out = tortuosity(volume_path, method="blocks", chunks=ODD, directions=["+x"])
    assert out["method"] == "blocks" and out["ran_on"] == "cluster" and out["chunks"] == list(ODD)
    assert f"scratch {volume_path.parent}/.porevox-tortuosity-" in caplog.text
    assert not list(volume_path.parent.glob(".porevox-tortuosity-*"))  # removed afterwards
    for name in ("+y", "+x"):
        ref = kernel_tau(solid, name).tau
        assert out["tortuosity_by_axis"][name] == pytest.approx(ref, rel=1e-3)
        assert out["iterations_by_axis"][name] >= 2
    assert out["reachable_fraction"] == pytest.approx(kernel_tau(solid, "+y").reachable_fraction)
    assert np.allclose(out["tortuosity_profile"], kernel_tau(solid, "+y").profile, rtol=5e-3,
                       equal_nan=True)
