"""The conductivity solve in blocks equals the whole-volume solve (the kernel on the
whole array) on every kind of structure, its iteration count stays near the whole
solve's however many blocks there are, and on a real cluster it survives a worker
killed mid-solve with the same answer."""

import logging
import math
import os
import signal

import dask.array as da
import numpy as np
import pytest

from porevox import StageError
from porevox.engine.storage import create_volume
from porevox.kernels.conductivity import NoPathWarning, effective_conductivity
from porevox.pipelines import transport as pipeline
from porevox.pipelines.transport import conductivity
from porevox.pipelines.transport_blocks import conductivity_blocks, plan_layout
from tests.conftest import porous, real_data

EQUAL = 1e-5  # the bound; both solves stop at relative residual 1e-8


def whole(solid, vs=(1.0, 1.0, 1.0), axis=1):
    return effective_conductivity(solid, voxel_size=vs, axis=axis)


def assert_same(out, ref, rel=EQUAL):
    assert out["relative_conductivity"] == pytest.approx(ref.relative_conductivity, rel=rel)
    assert out["tortuosity_factor"] == pytest.approx(ref.tortuosity_factor, rel=rel)
    assert out["relative_density"] == ref.relative_density
    assert out["percolating_fraction"] == pytest.approx(ref.percolating_fraction, rel=1e-12)
    assert out["flux_imbalance"] < 1e-5          # current in = current out, as the whole solve checks
    assert out["residual"] <= 1e-8


def dead_ends(shape, rng):
    """Thin solid: a sparse lattice of wires along y, most cut short, with side
    branches that end in the pore (a structure rich in dead ends)."""
    solid = np.zeros(shape, np.uint8)
    for z in range(1, shape[0], 4):
        for x in range(1, shape[2], 4):
            stop = shape[1] if rng.random() < 0.4 else int(rng.integers(shape[1] // 3, shape[1] - 2))
            solid[z, :stop, x] = 1
            for y in rng.integers(0, stop, 3):
                solid[z, y, x:x + int(rng.integers(1, 4))] = 1   # branches into the pore
    solid[:, ::7, :] |= (rng.random((shape[0], len(range(0, shape[1], 7)), shape[2])) < 0.15)
    return solid


# --------------------------------------------------------------------------- in this process
@pytest.mark.parametrize("case", ["blobs", "anisotropic", "dead_ends"])
def test_blocks_equal_whole(case):
    rng = np.random.default_rng(7)
    shape, vs, blocks = (37, 45, 41), (1.0, 1.0, 1.0), (13, 17, 11)   # odd blocks, ragged edges
    solid = porous(shape, rng, porosity=0.45, sigma=1.5).astype(np.uint8)
    if case == "anisotropic":
        vs = (0.025, 0.0186, 0.0093)      # FIB-SEM-like: semi-coarsening along z and y only
    if case == "dead_ends":
        solid = dead_ends(shape, rng)
    ref = whole(solid, vs)
    assert ref.percolating_fraction < 1 or case != "dead_ends"
    out = conductivity(solid, voxel_size=vs, method="distributed", block_shape=blocks)
    assert out["ran_on"] == "driver" and out["method"] == "distributed" and out["blocks"] > 8
    assert_same(out, ref)


def test_twin_along_each_axis(twin_arrays):
    truth, vs = twin_arrays["truth"], twin_arrays["voxel_size"]
    for axis in (0, 1, 2):
        out = conductivity(truth, voxel_size=vs, axis=axis, method="distributed", block_shape=(8, 24, 24))
        assert_same(out, whole(truth, vs, axis))


def test_fiberform_ct_pore_phase():
    """The real X-ray CT of PuMA's FiberForm (pore phase, along x): the solve in
    blocks equals the whole one, which is within 0.05 % of PuMA's published
    D_eff,x / D_0 = 0.6341499."""
    solid = np.load(real_data("fiberform") / "fiberform_solid_ge90.npy")
    pore = (solid == 0).astype(np.uint8)
    ref = whole(pore, (1.3, 1.3, 1.3), axis=2)
    out = conductivity(pore, voxel_size=(1.3, 1.3, 1.3), axis="x", method="distributed",
                       block_shape=(34, 50, 26))
    assert_same(out, ref)
    assert out["relative_conductivity"] == pytest.approx(0.6341499, rel=5e-4)


def test_no_path_in_blocks_is_zero_inf_with_a_warning():
    solid = porous((20, 24, 22), np.random.default_rng(2)).astype(np.uint8)
    solid[:, 11] = 0
    with pytest.warns(NoPathWarning):
        out = conductivity(solid, method="distributed", block_shape=(7, 9, 8))
    assert out["relative_conductivity"] == 0.0 and math.isinf(out["tortuosity_factor"])
    assert out["method"] == "none" and out["percolating_fraction"] == 0.0


def test_coarse_levels_held_in_blocks():
    """Every level held in blocks, down to the coarsest, which is gathered: blocks
    rounded up to whole aggregates of both coarse levels."""
    solid = porous((40, 44, 36), np.random.default_rng(5), sigma=1.5).astype(np.uint8)
    layout = plan_layout((40, 44, 36), (1.0, 1.0, 1.0), (10, 12, 9), coarse_cells=100)
    assert len(layout.factors) == 2 and not layout.tail and layout.edges == (12, 12, 12)
    out, caught = conductivity_blocks(solid, (1.0, 1.0, 1.0), 0, edges=(10, 12, 9), coarse_cells=100)
    assert not caught
    assert_same(out, whole(solid, axis=0))


def test_iterations_stay_near_the_whole_solve_as_blocks_grow():
    """1, 8, 64 and 512 blocks of one 32³ structure: every count within a few
    iterations of the whole solve's, and the same σ."""
    solid = porous((32, 32, 32), np.random.default_rng(0), sigma=2.0).astype(np.uint8)
    ref = whole(solid, axis=0)
    counts = {}
    for edge in (32, 16, 8, 4):
        out, _ = conductivity_blocks(solid, (1.0, 1.0, 1.0), 0, edges=(edge,) * 3)
        counts[out["blocks"]] = out["iterations"]
        assert_same(out, ref)
    assert sorted(counts) == [1, 8, 64, 512]
    assert counts[1] == ref.iterations
    assert max(counts.values()) <= ref.iterations + 4, counts


def test_without_a_cluster_a_too_big_solve_says_how_to_fix(monkeypatch):
    solid = porous((12, 12, 12), np.random.default_rng(1)).astype(np.uint8)
    monkeypatch.setattr(pipeline, "memory_estimate", lambda shape, method="mg": 2**60)
    with pytest.raises(StageError, match=r"run it on a Dask cluster .* or crop the volume"):
        conductivity(solid)


# --------------------------------------------------------------------------- on the cluster
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    solid = porous((30, 34, 28), np.random.default_rng(11), sigma=1.5).astype(np.uint8)
    path = tmp_path_factory.mktemp("blocks") / "sample.zarr"
    vol = create_volume(path, solid.shape, "uint8", (0.02, 0.02, 0.03), chunks=(7, 9, 11))
    arr = vol.group.create_array("labels/truth", shape=solid.shape, dtype="uint8", chunks=(7, 9, 11))
    arr[...] = solid
    return path, solid, whole(solid, (0.02, 0.02, 0.03))


def test_on_the_cluster_equals_whole_and_logs_progress(client, sample, caplog):
    path, _, ref = sample
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.transport_blocks"):
        out = conductivity(path, method="distributed", block_shape=(15, 17, 28))
    assert out["ran_on"] == "cluster" and out["blocks"] == 4
    assert_same(out, ref)
    assert f"iteration {out['iterations']}, residual" in caplog.text
    assert "across 4 blocks" in caplog.text


def test_whole_solve_too_big_for_any_process_goes_to_blocks(client, sample, monkeypatch, caplog):
    path, _, ref = sample
    monkeypatch.setattr(pipeline, "place", lambda need, **kw: None)   # no process has the room
    with caplog.at_level(logging.INFO, logger="porevox.pipelines.transport"):
        out = conductivity(da.from_array(np.asarray(sample[1]), chunks=10), voxel_size=(0.02, 0.02, 0.03))
    assert out["ran_on"] == "cluster" and out["blocks"] >= 2    # at least one per worker thread
    assert "solving in blocks on the cluster" in caplog.text
    assert_same(out, ref)


def test_worker_killed_mid_solve_gives_the_same_answer(sample):
    """SIGKILL a worker process at iteration 3: its blocks are recomputed from their
    lineage on the cluster, and σ is the undisturbed solve's."""
    from distributed import Client, LocalCluster

    _, solid, ref = sample
    clean = conductivity(solid, voxel_size=(0.02, 0.02, 0.03), method="distributed",
                         block_shape=(15, 17, 14))        # the same blocks, in this process
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      host="127.0.0.1") as lc, Client(lc) as c:
        pids = c.run(os.getpid)
        killed = []

        class Killer(logging.Handler):
            def emit(self, record):
                if not killed and "iteration 3," in record.getMessage():
                    addr = sorted(pids)[0]
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)

        handler = Killer()
        log = logging.getLogger("porevox.pipelines.transport_blocks")
        log.addHandler(handler)
        old = log.level
        log.setLevel(logging.INFO)
        try:
            out = conductivity(solid, voxel_size=(0.02, 0.02, 0.03), method="distributed",
                               block_shape=(15, 17, 14))
        finally:
            log.removeHandler(handler)
            log.setLevel(old)
        assert killed and killed[0] not in c.scheduler_info()["workers"]
    assert out["iterations"] == clean["iterations"]
    assert out["relative_conductivity"] == pytest.approx(clean["relative_conductivity"], rel=1e-12)
    assert_same(out, ref)


def test_a_grid_too_small_to_decompose_is_solved_whole():
    solid = porous((12, 14, 10), np.random.default_rng(4)).astype(np.uint8)
    out = conductivity(solid, axis="x", method="distributed", block_shape=(4, 4, 4))
    assert out["blocks"] == 1 and out["method"] == "mg" and out["axis"] == "x"
    assert out["relative_conductivity"] == pytest.approx(whole(solid, axis=2).relative_conductivity,
                                                         rel=1e-12)
