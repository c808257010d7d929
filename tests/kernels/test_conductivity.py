"""Effective conductivity: analytic structures, TauFactor's own test cases, an
assembled sparse direct solve (SciPy) and TauFactor itself as references."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage as ndi
from scipy.sparse.linalg import spsolve

from porevox import InvalidVolumeError
from porevox.kernels.conductivity import (
    ConductivityResult,
    NoPathWarning,
    NotConvergedWarning,
    effective_conductivity,
    memory_estimate,
)
from tests.conftest import porous

ANISO = (1.0, 2.0, 3.0)


def reference(solid, axis, voxel_size):
    """σ_eff/σ_bulk by an assembled finite-volume matrix and SciPy's direct solver,
    written independently of the kernel (same discretisation: TauFactor's)."""
    img = np.moveaxis(np.asarray(solid, bool), axis, 0)
    vs = np.array(voxel_size, float)
    vs = np.array([vs[axis], *np.delete(vs, axis)])
    lab, _ = ndi.label(img)
    keep = np.intersect1d(lab[0], lab[-1])
    m = np.isin(lab, keep[keep > 0])
    if not m.any():
        return 0.0
    idx = -np.ones(m.shape, np.int64)
    idx[m] = np.arange(m.sum())
    n = int(m.sum())
    rows, cols, vals, diag = [], [], [], np.zeros(n)
    for a in range(3):
        g = np.prod(np.delete(vs, a)) / vs[a]
        lo = tuple(slice(0, -1) if d == a else slice(None) for d in range(3))
        hi = tuple(slice(1, None) if d == a else slice(None) for d in range(3))
        both = m[lo] & m[hi]
        i, j = idx[lo][both], idx[hi][both]
        rows += [i, j]
        cols += [j, i]
        vals += [np.full(i.size, -g)] * 2
        np.add.at(diag, i, g)
        np.add.at(diag, j, g)
    gb = 2 * vs[1] * vs[2] / vs[0]
    first, last = idx[0][m[0]], idx[-1][m[-1]]
    diag[first] += gb
    diag[last] += gb
    b = np.zeros(n)
    b[first] = gb
    matrix = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n, n)) + sp.diags(diag)
    x = spsolve(matrix, b)
    current = gb * np.sum(1 - x[first])
    return current * img.shape[0] * vs[0] / (img.shape[1] * vs[1] * img.shape[2] * vs[2])


@pytest.fixture(scope="module")
def random_solid():
    return porous((19, 23, 15), np.random.default_rng(5), porosity=0.35, sigma=1.2)


# --------------------------------------------------------------------------- analytic
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), ANISO])
def test_full_block_gives_one(axis, voxel_size):
    res = effective_conductivity(np.ones((9, 12, 7), np.uint8), axis=axis, voxel_size=voxel_size)
    assert isinstance(res, ConductivityResult)
    assert res.relative_conductivity == pytest.approx(1.0, abs=1e-9)
    assert res.tortuosity_factor == pytest.approx(1.0, abs=1e-9)
    assert res.relative_density == 1.0 and res.percolating_fraction == 1.0
    assert res.flux_imbalance < 1e-8


def test_single_layer_full_block():
    assert effective_conductivity(np.ones((1, 5, 6), bool), axis=0).relative_conductivity == \
        pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), ANISO])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_straight_channels_give_their_area_fraction(axis, voxel_size):
    shape = [14, 16, 18]
    cross = np.zeros([s for a, s in enumerate(shape) if a != axis], bool)
    cross[2:5, 3:9] = True      # a 3 x 6 channel
    cross[7:9, 10:12] = True    # a 2 x 2 channel
    cross[11, 14] = True        # a one-voxel wire
    solid = np.expand_dims(cross, axis).repeat(shape[axis], axis=axis)
    res = effective_conductivity(solid, axis=axis, voxel_size=voxel_size)
    area = cross.mean()
    assert res.relative_conductivity == pytest.approx(area, rel=1e-9)
    assert res.tortuosity_factor == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), ANISO, (0.025, 0.0186, 0.0186)])
def test_resistances_in_series_add(voxel_size):
    """A one-voxel wire along z with lateral jogs: a chain of faces in series, so the
    resistance is the sum of the face resistances (the conductance their harmonic
    mean): half a voxel to each end face, the z faces, the y and x jogs."""
    vz, vy, vx = voxel_size
    solid = np.zeros((10, 6, 7), np.uint8)
    path = [(0, 1, 1), (1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 3, 1), (3, 3, 1), (4, 3, 1),
            (4, 3, 2), (4, 3, 3), (4, 3, 4), (5, 3, 4), (6, 3, 4), (6, 4, 4), (7, 4, 4),
            (8, 4, 4), (8, 4, 5), (9, 4, 5)]
    for p in path:
        solid[p] = 1
    gz, gy, gx = vy * vx / vz, vz * vx / vy, vz * vy / vx
    steps = np.abs(np.diff(np.array(path), axis=0))
    resistance = 2 / (2 * gz) + sum(s[0] / gz + s[1] / gy + s[2] / gx for s in steps)
    expected = (1 / resistance) * (10 * vz) / (6 * vy * 7 * vx)
    res = effective_conductivity(solid, axis=0, voxel_size=voxel_size)
    assert res.relative_conductivity == pytest.approx(expected, rel=1e-9)
    assert res.tortuosity_factor == pytest.approx(solid.mean() / expected, rel=1e-9)


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), ANISO])
def test_layers_in_series_give_the_harmonic_mean(voxel_size):
    """Two layers stacked along z: straight one-voxel wires (σ1), then the same wires
    each taking a sideways jog (σ2 < σ1). The wires never touch, so no current
    spreads at the junction and the stack's conductivity is exactly the
    thickness-weighted harmonic mean of the layers' own."""
    l1, l2, ny, nx = 5, 7, 12, 12
    top = np.zeros((l1, ny, nx), bool)
    top[:, ::3, ::3] = True  # wires 3 voxels apart
    bottom = np.zeros((l2, ny, nx), bool)
    bottom[:3, ::3, ::3] = True
    bottom[2, 1::3, ::3] = True  # the jog: one step along y at z = 2
    bottom[3:, 1::3, ::3] = True
    s1 = effective_conductivity(top, axis=0, voxel_size=voxel_size).relative_conductivity
    s2 = effective_conductivity(bottom, axis=0, voxel_size=voxel_size).relative_conductivity
    stack = effective_conductivity(np.concatenate([top, bottom]), axis=0, voxel_size=voxel_size)
    assert s1 == pytest.approx(16 / 144, rel=1e-9) and s2 < 0.9 * s1
    assert stack.relative_conductivity == pytest.approx((l1 + l2) / (l1 / s1 + l2 / s2), rel=1e-9)


def test_slanted_strip_matches_taufactor_test_case():
    """TauFactor's own test: img[i, i:i+2, i:i+2] = 1 on 20 x 21 x 21, along axis 0."""
    solid = np.zeros((20, 21, 21), np.uint8)
    for i in range(20):
        solid[i, i:i + 2, i:i + 2] = 1
    res = effective_conductivity(solid, axis=0)
    assert round(res.tortuosity_factor, 5) == 7.51667
    assert res.relative_conductivity == pytest.approx(solid.mean() / 7.516666666666, rel=1e-9)


def test_dead_end_gives_zero_with_a_warning():
    """TauFactor's dead-end test: a wire that stops short of the far face."""
    solid = np.zeros((10, 50, 50), np.uint8)
    solid[:8, 25, 25] = 1
    with pytest.warns(NoPathWarning, match="no solid cluster touches both end faces"):
        res = effective_conductivity(solid, axis=0)
    assert res.relative_conductivity == 0.0 and math.isinf(res.tortuosity_factor)
    assert res.percolating_fraction == 0.0 and res.relative_density == pytest.approx(8 / 25000)
    assert res.method == "none"


def test_all_pore_gives_zero_and_inf_with_a_warning():
    with pytest.warns(NoPathWarning, match="no solid"):
        res = effective_conductivity(np.zeros((6, 7, 8), bool), axis=1)
    assert res.relative_conductivity == 0.0 and math.isinf(res.tortuosity_factor)
    assert res.relative_density == 0.0


def test_pore_layer_across_the_axis_breaks_the_path():
    solid = np.ones((10, 8, 8), bool)
    solid[:, 4] = False  # a pore sheet across y
    with pytest.warns(NoPathWarning):
        assert effective_conductivity(solid, axis=1).relative_conductivity == 0.0
    assert effective_conductivity(solid, axis=0).relative_conductivity == pytest.approx(7 / 8)


def test_isolated_solid_counts_in_density_not_in_current():
    solid = np.zeros((10, 12, 12), bool)
    solid[:, 2:6, 2:6] = True             # a channel: area 16/144
    solid[3:6, 8:11, 8:11] = True          # floating solid, no current
    res = effective_conductivity(solid, axis=0)
    assert res.relative_conductivity == pytest.approx(16 / 144, rel=1e-9)
    assert res.relative_density == pytest.approx(solid.mean())
    assert res.percolating_fraction == pytest.approx(160 / (160 + 27))
    assert res.tortuosity_factor == pytest.approx(solid.mean() / (16 / 144), rel=1e-9)


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("voxel_size", [ANISO, (1.0, 1.0, 20.0)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_matches_direct_sparse_solve(random_solid, axis, voxel_size):
    expected = reference(random_solid, axis, voxel_size)
    for method in ("mg", "jacobi"):
        res = effective_conductivity(random_solid, axis=axis, voxel_size=voxel_size, method=method)
        assert res.relative_conductivity == pytest.approx(expected, rel=1e-7), method
        assert res.flux_imbalance < 1e-5


@pytest.mark.parametrize("voxel_size, axis", [((1.0, 1.0, 50.0), 1), ((50.0, 1.0, 1.0), 0)])
def test_strongly_anisotropic_voxels_converge(voxel_size, axis):
    """Face conductances 2500:1 apart: semi-coarsening keeps multigrid effective
    (without it, ~300 iterations and > 500 here)."""
    solid = porous((40, 40, 40), np.random.default_rng(1), porosity=0.4, sigma=2.0)
    mg = effective_conductivity(solid, axis=axis, voxel_size=voxel_size)
    jac = effective_conductivity(solid, axis=axis, voxel_size=voxel_size, method="jacobi",
                                 rtol=1e-10, maxiter=20000)
    assert mg.relative_conductivity == pytest.approx(jac.relative_conductivity, rel=1e-8)
    assert mg.iterations < 150 < jac.iterations


def test_methods_agree_on_several_multigrid_levels():
    solid = porous((37, 41, 29), np.random.default_rng(9), porosity=0.4, sigma=1.5)
    mg = effective_conductivity(solid, axis=1, method="mg", rtol=1e-10)
    jac = effective_conductivity(solid, axis=1, method="jacobi", rtol=1e-10)
    assert mg.relative_conductivity == pytest.approx(jac.relative_conductivity, rel=1e-9)
    assert mg.iterations < jac.iterations / 5
    assert mg.residual <= 1e-10


def test_amg_method_agrees(random_solid):
    pytest.importorskip("pyamg")
    res = effective_conductivity(random_solid, axis=1, voxel_size=ANISO, method="amg")
    assert res.relative_conductivity == pytest.approx(reference(random_solid, 1, ANISO), rel=1e-7)
    assert res.method == "amg"


def test_agrees_with_taufactor():
    """TauFactor (the `peers` extra) conducts along its first axis and reports
    tau = VF / D_rel with D_rel = σ_eff/σ_bulk; it stops at a 1e-3 flux spread here."""
    taufactor = pytest.importorskip("taufactor")
    solid = porous((64, 64, 64), np.random.default_rng(42), porosity=0.4, sigma=2.0)
    res = effective_conductivity(solid, axis=0)
    assert res.percolating_fraction > 0.99
    solver = taufactor.Solver(solid.astype(np.uint8), device="cpu")
    solver.solve(verbose=False, conv_crit=1e-3)
    assert res.tortuosity_factor == pytest.approx(float(solver.tau[0]), rel=0.01)
    assert res.relative_conductivity == pytest.approx(float(solver.D_eff[0]), rel=0.01)


# --------------------------------------------------------------------------- anisotropy
def test_axis_and_voxel_size_follow_a_transpose(random_solid):
    """Swapping two axes of the data and of the voxel size is the same physics."""
    a = effective_conductivity(random_solid, axis=1, voxel_size=ANISO)
    b = effective_conductivity(random_solid.transpose(1, 0, 2), axis=0,
                               voxel_size=(ANISO[1], ANISO[0], ANISO[2]))
    assert a.relative_conductivity == pytest.approx(b.relative_conductivity, rel=1e-9)


def test_uniform_voxel_size_does_not_matter(random_solid):
    a = effective_conductivity(random_solid, axis=2)
    b = effective_conductivity(random_solid, axis=2, voxel_size=(0.0186, 0.0186, 0.0186))
    assert a.relative_conductivity == pytest.approx(b.relative_conductivity, rel=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_anisotropic_voxels_match_the_upsampled_isotropic_structure(axis):
    """Voxels twice as long along z vs the same structure repeated twice along z on
    unit voxels. The two grids discretise the same blocky geometry at different
    resolutions, so they agree to the discretisation error (measured 1-3 % on this
    smooth structure), while ignoring the anisotropy would be off by far more."""
    solid = porous((16, 32, 32), np.random.default_rng(7), porosity=0.4, sigma=2.0)
    aniso = effective_conductivity(solid, axis=axis, voxel_size=(2.0, 1.0, 1.0))
    fine = effective_conductivity(np.repeat(solid, 2, axis=0), axis=axis)
    wrong = effective_conductivity(solid, axis=axis)  # voxel size ignored
    assert aniso.relative_conductivity == pytest.approx(fine.relative_conductivity, rel=0.04)
    assert abs(wrong.relative_conductivity / fine.relative_conductivity - 1) > \
        2 * abs(aniso.relative_conductivity / fine.relative_conductivity - 1)


# --------------------------------------------------------------------------- contract
def test_input_not_modified(random_solid):
    before = random_solid.copy()
    effective_conductivity(random_solid, axis=1)
    np.testing.assert_array_equal(random_solid, before)


def test_axis_names():
    solid = porous((12, 13, 14), np.random.default_rng(1), porosity=0.3, sigma=1.0)
    for name, index in zip("zyx", range(3)):
        a = effective_conductivity(solid, axis=name)
        assert a.axis == index
        assert a.relative_conductivity == effective_conductivity(solid, axis=index).relative_conductivity


def test_wrong_ndim_raises():
    with pytest.raises(InvalidVolumeError, match="3-D"):
        effective_conductivity(np.ones((4, 4), bool))


@pytest.mark.parametrize("kwargs, match", [
    ({"axis": 3}, "axis must be"), ({"axis": "w"}, "axis must be"),
    ({"voxel_size": (1, 1)}, "voxel_size must be 3 positive"),
    ({"voxel_size": (1, 0, 1)}, "voxel_size must be 3 positive"),
    ({"method": "lu"}, "method must be one of"), ({"rtol": 0}, "rtol must be"),
    ({"maxiter": 0}, "maxiter must be"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        effective_conductivity(np.ones((4, 4, 4), bool), **kwargs)


def test_gray_values_raise_type_error():
    with pytest.raises(TypeError, match="threshold or segment"):
        effective_conductivity(np.ones((4, 4, 4), np.float32))
    with pytest.raises(TypeError, match="3-D array"):
        effective_conductivity([[[1]]])


def test_not_converged_warns(random_solid):
    with pytest.warns(NotConvergedWarning, match="raise maxiter"):
        res = effective_conductivity(random_solid, axis=1, method="jacobi", maxiter=3)
    assert res.iterations == 3 and res.residual > 1e-8


def test_memory_estimate_is_per_voxel():
    assert memory_estimate((100, 100, 100)) == 36 * 10**6
