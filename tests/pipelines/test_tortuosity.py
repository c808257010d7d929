"""`pv.tortuosity`: every input type gives the kernel's answer on the same data; the
block-decomposed solver equals the whole-volume one (threads, a real LocalCluster and
workers that each have a /tmp of their own; odd chunks, every direction, paths that
turn back); placement and the automatic choice; bad input names the fix."""

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
from tests.conftest import porous, stop_processes

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
def serpentine(ny=40, lanes=5, width=3, gap=2, depth=5):
    """A channel up lane 0 (the only one touching the inlet face y = 0), down lane 1, up
    lane 2, ...: paths along +y that turn back across the block layers again and again."""
    period = width + gap
    solid = np.zeros((depth, ny, lanes * period - gap), bool)
    for i in range(lanes):
        x0 = i * period
        solid[:, 0 if i == 0 else 2:, x0:x0 + width] = True
        if i < lanes - 1:
            turn = slice(ny - width, ny) if i % 2 == 0 else slice(2, 2 + width)
            solid[:, turn, x0:x0 + period + width] = True
    return solid


def check_blocks(solver, solid, names, order, voxel_size=VS, work=(2.5, 3.0)):
    """The block solver's distances and τ against the whole-volume solve: order 1 equal
    (relative 1e-6), order 2 within its stencil switching (see the module docstring);
    the voxels accepted within `work` (orders 1, 2) times the whole solve's."""
    for name in names:
        axis, sign = "zyx".index(name[1]), (1 if name[0] == "+" else -1)
        whole = inlet_distance(solid, axis=axis, direction=sign, voxel_size=voxel_size, order=order)
        blocks = solver.read(name)
        fin = np.isfinite(whole)
        assert np.array_equal(np.isfinite(blocks), fin), name
        tau = solver.tortuosity(name).tau
        ref = geodesic_tortuosity(whole, solid, axis=axis, direction=sign, voxel_size=voxel_size).tau
        if order == 1:
            assert np.allclose(blocks[fin], whole[fin], rtol=1e-6, atol=1e-9 * voxel_size[axis]), name
            assert tau == pytest.approx(ref, rel=1e-6), name
        else:
            err = np.abs(blocks[fin] - whole[fin]) / voxel_size[axis]
            assert np.median(err) < 0.01 and err.max() < 1.0, name
            assert tau == pytest.approx(ref, rel=1e-3), name
        stats = solver.stats[name]
        assert stats["voxels_accepted"] < work[order - 1] * fin.sum(), name
        assert stats["visits"] < 12 * math.prod(solver.grid), name


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("storage", ["memory", "scratch"])
def test_blocks_equal_whole_on_odd_chunks(solid, order, storage, tmp_path):
    """Threads here (no cluster), anisotropic voxels, odd blocks, every signed direction
    in one solve; blocks in memory or in a scratch folder, removed afterwards."""
    scratch = tmp_path if storage == "scratch" else None
    solver = BlockSolver(solid, voxel_size=VS, order=order, chunks=ODD, scratch=scratch)
    try:
        assert solver.grid == (3, 3, 2)
        solver.run(pipeline.SIGNED)
        check_blocks(solver, solid, pipeline.SIGNED, order)
    finally:
        solver.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("order", [1, 2])
def test_blocks_follow_paths_that_turn_back(order):
    """A serpentine whose geodesics cross the block layers back and forth (τ 2.7):
    still the whole solve (for order 2 the last block along z, thinner than the halo,
    joins the one before)."""
    solid = serpentine()
    solver = BlockSolver(solid, voxel_size=VS, order=order, chunks=(2, 7, 5))
    try:
        assert solver.grid == (3 if order == 1 else 2, 6, 5)
        solver.run(["+y", "-y"])
        assert solver.tortuosity("+y").tau > 2
        # each U-turn brings the front back into blocks it left: 2.3x (order 1) and
        # 2.85-2.87x (order 2, by the order in which the threads finish their visits)
        check_blocks(solver, solid, ["+y", "-y"], order)
    finally:
        solver.close()


def test_directions_take_turns_where_the_scratch_disk_is_short(solid, expected, tmp_path, monkeypatch,
                                                                caplog):
    """Where half the scratch disk's free space holds one direction's blocks, the
    directions run one after another, each one's blocks removed once its τ is known:
    the same τ as the whole-volume kernel."""
    import shutil

    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(pipeline, "SCRATCH_BYTES_PER_VOXEL", 0.4 * free / solid.size)
    solver = BlockSolver(solid, voxel_size=VS, order=2, chunks=ODD, scratch=tmp_path)
    folders = []
    drop = solver._drop
    monkeypatch.setattr(solver, "_drop", lambda n: (folders.append(solver.directions[n].folder), drop(n)))
    with caplog.at_level(logging.INFO, logger="porevox"):
        got = solver.solve(["+y", "-x"])
    assert "1 of 2 directions at a time" in caplog.text
    assert all(not os.path.exists(f) for f in folders) and len(folders) == 2
    for name in ("+y", "-x"):
        assert got[name]["tau"] == pytest.approx(expected[name].tau, rel=1e-3)
    assert not any(tmp_path.iterdir())


def test_blocks_in_memory_write_no_files(solid, monkeypatch):
    """An in-memory array without `scratch`: no scratch folder anywhere (the driver's
    temporary folder least of all)."""
    def no_scratch(home):
        raise AssertionError(f"a scratch folder was made in {home}")

    monkeypatch.setattr(pipeline, "_make_scratch", no_scratch)
    out = tortuosity(solid, voxel_size=VS, method="blocks", chunks=ODD, order=1)
    assert out["tortuosity"] == pytest.approx(kernel_tau(solid, "+y", order=1).tau, rel=1e-6)
    assert out["iterations"] > 0 and out["chunks"] == list(ODD)


def test_visits_never_overlap_a_neighbour_and_read_only_faces(solid, tmp_path, monkeypatch):
    """Four threads: no two visits of one direction run at once on one block or on two
    neighbours, and a visit reads its own box and at most six neighbour faces."""
    log, lock, local = [], threading.Lock(), threading.local()
    real_visit, real_load = pipeline._visit, pipeline._load

    def visit(v, *args):
        local.reads = []
        start = time.perf_counter()
        out = real_visit(v, *args)
        with lock:
            log.append((v.folder, v.block, v.sides, start, time.perf_counter(), local.reads))
        return out

    def load(path):
        local.reads.append(os.path.basename(path))
        return real_load(path)

    monkeypatch.setattr(pipeline, "_visit", visit)
    monkeypatch.setattr(pipeline, "_load", load)
    monkeypatch.setattr(pipeline, "_pool", lambda: pipeline._ThreadPool(4))
    solver = BlockSolver(solid, voxel_size=VS, chunks=ODD, scratch=tmp_path)
    try:
        solver.run(["+y", "-x"])
    finally:
        solver.close()
    assert len(log) > 2 * 18
    for folder, block, sides, start, end, reads in log:
        faces = {f"f-{'-'.join(map(str, pipeline._step(block, a, s)))}-{a}{'m' if s > 0 else 'p'}.npy"
                 for a, s in sides}
        assert len(reads) <= 6 and set(reads) <= faces  # (the box itself is read with np.load)
        for other in log:
            if other[0] == folder and other[3] < end and start < other[4] and other[1] != block:
                assert sum(abs(i - j) for i, j in zip(other[1], block)) > 1


def test_blocks_on_a_local_cluster(client, solid, volume_path, caplog):
    """A real 2-worker LocalCluster, odd chunks, a volume input: the scratch inside the
    volume's own folder, checked, removed afterwards."""
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.tortuosity"):
        out = tortuosity(volume_path, method="blocks", chunks=ODD, directions=["+x"])
    assert out["method"] == "blocks" and out["ran_on"] == "cluster" and out["chunks"] == list(ODD)
    assert f"scratch {volume_path}/.porevox-tortuosity-" in caplog.text
    assert not list(volume_path.glob(".porevox-tortuosity-*"))  # removed afterwards
    for name in ("+y", "+x"):
        ref = kernel_tau(solid, name).tau
        assert out["tortuosity_by_axis"][name] == pytest.approx(ref, rel=1e-3)
        assert out["iterations_by_axis"][name] >= 18
    assert out["reachable_fraction"] == pytest.approx(kernel_tau(solid, "+y").reachable_fraction)
    assert np.allclose(out["tortuosity_profile"], kernel_tau(solid, "+y").profile, rtol=5e-3,
                       equal_nan=True)
    # an in-memory array with a scratch folder the workers share (its boxes scattered once,
    # then kept there)
    scratch = volume_path.parent / "scratch"
    out = tortuosity(solid, voxel_size=VS, method="blocks", chunks=ODD, order=1, scratch=scratch)
    assert out["tortuosity"] == pytest.approx(kernel_tau(solid, "+y", order=1).tau, rel=1e-6)
    assert not any(scratch.iterdir())


def test_quantify_solves_in_blocks_here(solid):
    """quantify's block plan without a cluster: solved at the merge, in threads here."""
    import porevox as pv

    out = pv.quantify(solid, voxel_size=VS, features=["density", "tortuosity"], chunks=ODD,
                      tortuosity_method="blocks", order=1)
    assert out["tortuosity_method"] == "blocks"
    assert out["tortuosity"] == pytest.approx(kernel_tau(solid, "+y", order=1).tau, rel=1e-6)


def test_quantify_solves_in_blocks_on_a_cluster(client, solid, volume_path, caplog):
    """quantify's block plan on a cluster: the solve starts with the other passes (the
    scratch checked first) and is taken at the merge; a volume's scratch is in its
    folder."""
    import porevox as pv

    with caplog.at_level(logging.INFO, logger="porevox.pipelines.tortuosity"):
        out = pv.quantify(volume_path, features=["density", "tortuosity"], tortuosity_method="blocks",
                          order=1, directions=["-x"])
    assert out["tortuosity_method"] == "blocks"
    for name in ("+y", "-x"):
        assert out["tortuosity_by_axis"][name] == pytest.approx(kernel_tau(solid, name, order=1).tau,
                                                                rel=1e-6)
    assert f"scratch {volume_path}/.porevox-tortuosity-" in caplog.text
    assert not list(volume_path.glob(".porevox-tortuosity-*"))


# --------------------------------------------------------------------------- separate nodes
def _private_mount_works(folder) -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs tmpfs {folder}"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def private_tmp_cluster(tmp_path_factory):
    """A scheduler and two `dask worker` processes, each in a mount namespace of its own
    with a tmpfs on the temporary folder (``TMPDIR``) that the driver also uses: workers
    that see neither each other's temporary folder nor the driver's, as on separate
    nodes. (A tmpfs on a folder of its own, not on /tmp itself, which may hold the
    checkout and its environment.) Yields (scheduler address, that folder)."""
    private = tmp_path_factory.mktemp("driver-tmp")
    if not _private_mount_works(private):
        pytest.skip("needs unshare and mount (root) to give each worker a temporary folder of its own")
    sched_file = tmp_path_factory.mktemp("private") / "scheduler.json"
    dask_cli = str(Path(sys.executable).parent / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            worker = (f"mount -t tmpfs tmpfs {private} && TMPDIR={private} exec {dask_cli} worker "
                      f"{address} --nthreads 1 --memory-limit 2GB --no-nanny --no-dashboard "
                      f"--host 127.0.0.1 --name private-{i}")
            procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                           worker], **quiet))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address, private
    finally:
        stop_processes(procs)


def test_workers_with_a_tmp_of_their_own(private_tmp_cluster, solid, tmp_path, monkeypatch):
    """The bug this solver fixes: scratch in the driver's temporary folder read as fill
    values by workers that each have their own (τ 1.281 where the whole volume gave
    1.079). With the driver's temporary folder invisible to the workers, an in-memory
    array keeps its blocks in the workers' memory and a volume its scratch in its own
    folder, both giving the whole-volume τ of one process; a scratch the workers cannot
    see is a one-line error before any work."""
    from distributed import Client

    address, private = private_tmp_cluster
    monkeypatch.setattr(tempfile, "tempdir", str(private))      # the driver's temporary folder
    monkeypatch.setenv("TMPDIR", str(private))
    path = tmp_path / "sample.zarr"
    vol = create_volume(path, solid.shape, "uint8", VS, chunks=(20, 25, 30))
    vol.group.create_array("labels/truth", shape=solid.shape, dtype="uint8", chunks=(20, 25, 30))[...] = solid
    scratch = private / "scratch"
    scratch.mkdir()
    with Client(address):
        for order in (1, 2):
            out = tortuosity(solid, voxel_size=VS, method="blocks", chunks=ODD, order=order,
                             directions=["-x"])
            assert out["ran_on"] == "cluster"
            for name in ("+y", "-x"):
                assert out["tortuosity_by_axis"][name] == pytest.approx(
                    kernel_tau(solid, name, order=order).tau, rel=1e-6 if order == 1 else 1e-3)
        out = tortuosity(path, method="blocks", chunks=ODD, order=1)
        assert out["tortuosity"] == pytest.approx(kernel_tau(solid, "+y", order=1).tau, rel=1e-6)
        assert not list(path.glob(".porevox-tortuosity-*"))
        monkeypatch.setattr(BlockSolver, "run", lambda *a: pytest.fail("the solve started"))
        with pytest.raises(StageError, match=r"^the tortuosity scratch folder .* is not visible to 2 of "
                                             r"the 2 Dask workers .*; pass scratch=") as err:
            tortuosity(solid, voxel_size=VS, method="blocks", chunks=ODD, scratch=scratch)
        assert "\n" not in str(err.value)
    assert not any(scratch.iterdir())
    assert sorted(p.name for p in private.iterdir()) == ["scratch"]     # nothing else written there
