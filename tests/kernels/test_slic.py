import numpy as np
import pytest
from scipy import ndimage as ndi

from porevox.kernels import slic as ks


@pytest.fixture(scope="module")
def twin():
    """Digital-twin slices (HPA 250 °C, demo preset 48 x 128 x 128): image / 255 and
    truth (1 = copper)."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    spec = SampleSpec("HPA", 250, 0, "demo", 0)
    model = FibSemModel()
    ms, thr = prepare(spec, model)
    truth, _annotation, image = render_box(ms, model, 0, tuple(slice(0, n) for n in ms.shape), thr,
                                           "uint8")
    zs = [0, 15, 30, 47]
    return image[zs] / 255.0, truth[zs]


# --------------------------------------------------------------------------- equal to skimage
@pytest.mark.parametrize("n_segments, compactness, spacing", [
    (1000, 0.1, None), (1500, 0.3, None), (300, 1.0, None), (1000, 0.2, (2, 1)), (3000, 0.05, None),
])
@pytest.mark.parametrize("enforce", [True, False])
def test_labels_equal_skimage_given_n_segments(twin, n_segments, compactness, spacing, enforce):
    image, _ = twin
    for im in image[:2]:
        kw = dict(n_segments=n_segments, compactness=compactness, spacing=spacing,
                  enforce_connectivity=enforce)
        np.testing.assert_array_equal(ks.slic(im, **kw), ks.slic_skimage(im, **kw))


@pytest.mark.parametrize("step", [3, 4])
@pytest.mark.parametrize("spacing", [None, (0.05, 0.0372), (2, 1)])
def test_labels_equal_skimage_given_integer_step(twin, step, spacing):
    """With `step`, slic_skimage maps step to n_segments and spacing to skimage's
    normalisation: same grid and the same distance up to rounding."""
    image, _ = twin
    a = ks.slic(image[1], step=step, compactness=0.2, spacing=spacing)
    b = ks.slic_skimage(image[1], step=step, compactness=0.2, spacing=spacing)
    assert np.mean(a == b) > 0.999


def test_integer_image_equals_skimage(twin):
    image, _ = twin
    im8 = np.round(image[2] * 255).astype(np.uint8)
    np.testing.assert_array_equal(ks.slic(im8, n_segments=1000, compactness=0.2),
                                  ks.slic_skimage(im8, n_segments=1000, compactness=0.2))


@pytest.mark.parametrize("shape, n", [((1, 128, 128), 1000), ((1, 538, 538), 18000), ((1, 7, 300), 50),
                                      ((1, 64, 33), 5000), ((1, 10, 10), 7.5), ((1, 50, 60), 1),
                                      ((1, 5, 5), 40)])
def test_regular_grid_equals_skimage(shape, n):
    from skimage.util import regular_grid

    starts, steps = ks._regular_grid(shape, n)
    ref = regular_grid(shape, n)
    assert starts == [s.start for s in ref]
    assert steps == [s.step for s in ref]


# --------------------------------------------------------------------------- equal quality
@pytest.mark.parametrize("step", [3, 4])
def test_quality_matches_skimage_on_twin(twin, step):
    """Boundary recall (1 and 2 px), undersegmentation error, ASA and the number of
    superpixels of the numba kernel equal skimage's on twin slices. Measured
    differences: 0 (the labels are identical); tolerances 0.002 (BR, ASA),
    0.002 (UE) and 1 % (count) leave room for rounding only."""
    image, truth = twin
    for im, tru in zip(image, truth):
        a = ks.slic(im, step=step, compactness=0.2)
        b = ks.slic_skimage(im, step=step, compactness=0.2)
        for tol in (1, 2):
            assert ks.boundary_recall(a, tru, tol) == pytest.approx(ks.boundary_recall(b, tru, tol),
                                                                    abs=0.002)
        assert ks.undersegmentation_error(a, tru) == pytest.approx(
            ks.undersegmentation_error(b, tru), abs=0.002)
        assert ks.achievable_segmentation_accuracy(a, tru) == pytest.approx(
            ks.achievable_segmentation_accuracy(b, tru), abs=0.002)
        assert a.max() + 1 == pytest.approx(b.max() + 1, rel=0.01)
        # and the superpixels are useful: they follow the copper boundaries
        assert ks.boundary_recall(a, tru, 1) > 0.98
        assert ks.undersegmentation_error(a, tru) < 0.15


# --------------------------------------------------------------------------- label properties
@pytest.mark.parametrize("kw", [dict(step=3, compactness=0.2), dict(step=4, compactness=0.05),
                                dict(step=(2.5, 4.0), compactness=0.3, spacing=(0.05, 0.0372)),
                                dict(n_segments=200, compactness=0.1)])
def test_labels_contiguous_and_connected(twin, kw):
    image, _ = twin
    labels = ks.slic(image[3], **kw)
    assert labels.dtype == np.int32 and labels.shape == image[3].shape
    n = int(labels.max()) + 1
    assert labels.min() == 0
    assert np.all(np.bincount(labels.ravel(), minlength=n) > 0)          # 0 .. K-1, all used
    for k, box in enumerate(ndi.find_objects(labels + 1)):
        _, pieces = ndi.label(labels[box] == k)                         # 4-connectivity
        assert pieces == 1, f"label {k} has {pieces} pieces"


def test_without_connectivity_labels_are_contiguous(twin):
    image, _ = twin
    labels = ks.slic(image[0], step=4, compactness=0.05, enforce_connectivity=False)
    n = int(labels.max()) + 1
    assert np.all(np.bincount(labels.ravel(), minlength=n) > 0)


def test_constant_image_gives_the_grid():
    image = np.full((40, 40), 0.5)
    labels = ks.slic(image, step=4, compactness=0.2)
    assert labels.max() + 1 == 100
    np.testing.assert_array_equal(labels, ks.slic_skimage(image, step=4, compactness=0.2))
    assert ks.slic(np.zeros((3, 3)), n_segments=1).max() == 0


@pytest.mark.parametrize("shape", [(1, 1), (2, 50), (3, 3), (50, 1)])
def test_images_smaller_than_the_step(rng, shape):
    image = rng.random(shape)
    for kw in (dict(step=4), dict(n_segments=30)):
        labels = ks.slic(image, compactness=0.2, **kw)
        assert labels.shape == shape and labels.min() == 0
        assert np.all(np.bincount(labels.ravel()) > 0)
        ref = ks.slic_skimage(image, compactness=0.2, **kw)
        assert ref.shape == shape and ref.min() == 0
        if "n_segments" in kw:
            np.testing.assert_array_equal(labels, ref)


def test_fractional_step_count():
    labels = ks.slic(np.zeros((70, 70)), step=3.5, compactness=1.0, enforce_connectivity=False)
    assert labels.max() + 1 == 20 * 20


# --------------------------------------------------------------------------- anisotropy
def extents(labels):
    """Mean per-superpixel standard deviation of y and of x (pixels)."""
    idx = np.arange(labels.max() + 1)
    yy, xx = np.indices(labels.shape)
    return (np.sqrt(np.mean(ndi.variance(yy, labels, idx))),
            np.sqrt(np.mean(ndi.variance(xx, labels, idx))))


def test_anisotropic_step_elongates_segments(twin):
    """Pixels twice as tall as wide (spacing (2, 1)): per-axis steps (2, 4) make
    superpixels of one physical size, half as tall as wide in pixels. skimage's grid
    is square in pixels whatever the spacing, so on the same input its superpixels
    stay square (spacing only reweights the distance) — and slic given n_segments
    and the spacing reproduces that exactly."""
    image, _ = twin
    im = image[1]
    sy, sx = extents(ks.slic(im, step=(2, 4), spacing=(2, 1), compactness=1.0))
    assert 0.4 < sy / sx < 0.55                 # 2-px vs 4-px sides: 0.5/1.118 = 0.447
    n = im.size / 16
    sk = ks.slic_skimage(im, n_segments=n, spacing=(2, 1), compactness=1.0)
    ky, kx = extents(sk)
    assert 0.9 < ky / kx < 1.1
    np.testing.assert_array_equal(ks.slic(im, n_segments=n, spacing=(2, 1), compactness=1.0), sk)


def test_step_mode_does_not_depend_on_the_unit_of_spacing(twin):
    image, _ = twin
    a = ks.slic(image[2], step=(3, 4), spacing=(4, 3), compactness=0.2)
    b = ks.slic(image[2], step=(3, 4), spacing=(0.0496, 0.0372), compactness=0.2)   # µm
    assert np.mean(a == b) > 0.999


# --------------------------------------------------------------------------- slices
@pytest.mark.parametrize("method", ["numba", "skimage"])
def test_slic_slices_equals_per_slice_calls(twin, method):
    image, _ = twin
    block = image[:3]
    out = ks.slic_slices(block, method=method, step=4, compactness=0.2)
    func = ks.slic if method == "numba" else ks.slic_skimage
    assert out.dtype == np.int32 and out.shape == block.shape
    for z in range(block.shape[0]):
        np.testing.assert_array_equal(out[z], func(block[z], step=4, compactness=0.2))
        assert out[z].min() == 0


def test_input_not_modified(twin):
    image, _ = twin
    block = image[:2].copy()
    before = block.copy()
    ks.slic_slices(block, step=4)
    ks.slic(block[0], n_segments=500)
    np.testing.assert_array_equal(block, before)


# --------------------------------------------------------------------------- errors
def test_wrong_input_raises():
    with pytest.raises(ValueError, match="2-D"):
        ks.slic(np.zeros((2, 8, 8)), step=4)
    with pytest.raises(ValueError, match="3-D"):
        ks.slic_slices(np.zeros((8, 8)), step=4)
    with pytest.raises(ValueError, match="exactly one"):
        ks.slic(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="exactly one"):
        ks.slic(np.zeros((8, 8)), 10, step=4)
    with pytest.raises(ValueError, match="NaN"):
        ks.slic(np.full((8, 8), np.nan), step=4)
    with pytest.raises(ValueError, match="step"):
        ks.slic(np.zeros((8, 8)), step=(1, 2, 3))
    with pytest.raises(ValueError, match="spacing"):
        ks.slic(np.zeros((8, 8)), step=2, spacing=(0, 1))
    with pytest.raises(ValueError, match="n_segments"):
        ks.slic(np.zeros((8, 8)), 0.5)
    with pytest.raises(ValueError, match="method"):
        ks.slic_slices(np.zeros((1, 8, 8)), method="cupy", step=4)
    with pytest.raises(TypeError):
        ks.slic(np.zeros((8, 8), bool), step=4)


# --------------------------------------------------------------------------- means, paint
def test_superpixel_means_equals_ndimage_mean(twin):
    image, _ = twin
    labels = ks.slic(image[0], step=4, compactness=0.2)
    means = ks.superpixel_means(image[0], labels)
    idx = np.arange(labels.max() + 1)
    np.testing.assert_allclose(means, ndi.mean(image[0], labels, idx), rtol=1e-12)
    painted = ks.paint(labels, means)
    assert painted.shape == labels.shape
    np.testing.assert_array_equal(painted, means[labels])


def test_superpixel_means_unused_label_is_nan():
    means = ks.superpixel_means(np.array([[1.0, 3.0], [5.0, 7.0]]), np.array([[0, 0], [2, 2]]))
    np.testing.assert_array_equal(means[[0, 2]], [2.0, 6.0])
    assert np.isnan(means[1])


# --------------------------------------------------------------------------- metrics by hand
def test_boundaries_by_hand():
    labels = np.array([[0, 0, 1],
                       [0, 0, 1],
                       [2, 2, 2]])
    expect = np.array([[0, 1, 1],
                       [1, 1, 1],
                       [1, 1, 1]], bool)
    np.testing.assert_array_equal(ks.boundaries(labels), expect)


def test_boundary_recall_by_hand():
    """Truth: columns 0-2 | 3-5 (boundary pixels: columns 2 and 3, 12 px).
    Superpixels: columns 0-4 | 5 (boundary: columns 4 and 5). Tolerance 0: none
    recalled; 1: column 3 (6 of 12); 2: both columns."""
    truth = np.zeros((6, 6), int)
    truth[:, 3:] = 1
    labels = np.zeros((6, 6), np.int32)
    labels[:, 5] = 1
    assert ks.boundary_recall(labels, truth, 0) == 0.0
    assert ks.boundary_recall(labels, truth, 1) == 0.5
    assert ks.boundary_recall(labels, truth, 2) == 1.0
    assert ks.boundary_recall(truth, truth, 0) == 1.0
    assert np.isnan(ks.boundary_recall(labels, np.zeros((6, 6), int)))


def test_undersegmentation_error_and_asa_by_hand():
    """Truth G0 = pixels 0-3, G1 = 4-9. Superpixels S0 = 0-2, S1 = 3-8, S2 = 9.
    UE = [S0: min(3, 0)] + [S1: min(1, 5) + min(5, 1)] + [S2: min(1, 0)] = 2 → 2/10.
    ASA = (3 + 5 + 1) / 10."""
    truth = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    labels = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1, 2]])
    assert ks.undersegmentation_error(labels, truth) == pytest.approx(0.2)
    assert ks.achievable_segmentation_accuracy(labels, truth) == pytest.approx(0.9)
    # a superpixel straddling two truth segments costs its smaller part twice
    labels2 = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])   # S1: 2 in G0, 6 in G1
    assert ks.undersegmentation_error(labels2, truth) == pytest.approx((2 + 2) / 10)
    assert ks.achievable_segmentation_accuracy(labels2, truth) == pytest.approx(0.8)
    # perfect, whatever the label values
    assert ks.undersegmentation_error(truth * 7 + 3, truth) == 0.0
    assert ks.achievable_segmentation_accuracy(truth * 7 + 3, truth) == 1.0


def test_metrics_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        ks.undersegmentation_error(np.zeros((3, 3), int), np.zeros((3, 4), int))
