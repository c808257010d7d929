"""Volumes are OME-Zarr 0.5 by the specification: checked against ome-zarr-models'
validator, ome-zarr-py's reader, and plain NumPy references for the pyramids."""

import itertools
import json

import dask.array as da
import numpy as np
import pytest
import zarr

from porevox import open_volume
from porevox.engine import ome
from porevox.engine.blockwise import store
from porevox.engine.ingest import ingest, plan_label_ingest, run_label_ingest
from porevox.engine.storage import (
    create_volume,
    label_home,
    publish_array,
    remove_stale_tmp,
    tmp_array,
)
from porevox.kernels import pyramid


# --------------------------------------------------------------------------- references
def ref_mean(a: np.ndarray, f) -> np.ndarray:
    """Mean of each f-block (trailing partial blocks dropped), rounded half up."""
    n = [s // k for s, k in zip(a.shape, f)]
    a = a[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    blocks = a.reshape(n[0], f[0], n[1], f[1], n[2], f[2])
    if np.issubdtype(a.dtype, np.integer):
        return np.floor(blocks.mean(axis=(1, 3, 5)) + 0.5).astype(a.dtype)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(a.dtype)


def ref_mode(a: np.ndarray, f) -> np.ndarray:
    """Most frequent value of each f-block; a tie to the smaller value."""
    n = [s // k for s, k in zip(a.shape, f)]
    out = np.empty(n, a.dtype)
    for i, j, k in itertools.product(*map(range, n)):
        block = a[i * f[0]:(i + 1) * f[0], j * f[1]:(j + 1) * f[1], k * f[2]:(k + 1) * f[2]]
        values, counts = np.unique(block, return_counts=True)
        out[i, j, k] = values[np.argmax(counts)]
    return out


def ref_pyramid(a: np.ndarray, steps, pool) -> list[np.ndarray]:
    levels = [a]
    for step in steps:
        levels.append(pool(levels[-1], step))
    return levels


def blobs(shape, rng, values=(0, 1, 2), dtype="uint8") -> np.ndarray:
    """Label-like data: runs of equal values (so that modes are not all ties)."""
    values = np.asarray(values, dtype)
    coarse = rng.choice(values, size=tuple(-(-s // 3) for s in shape))
    full = coarse.repeat(3, 0).repeat(3, 1).repeat(3, 2)[tuple(slice(0, s) for s in shape)]
    noise = rng.random(shape) < 0.15
    return np.where(noise, rng.choice(values, size=shape), full)


# --------------------------------------------------------------------------- the validators
@pytest.fixture
def study_volume(tmp_path, rng):
    """An ingested image with two label images: `phases` (uint8, phase names) and
    `grains` (uint16)."""
    shape = (20, 33, 30)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    vol, _ = ingest(tmp_path / "image.npy", tmp_path / "s.zarr", (0.025, 0.0186, 0.0186), chunks=(8, 9, 10))
    phases = blobs(shape, rng, (0, 1, 2))
    grains = blobs(shape, rng, (0, 7, 300, 65535), "uint16")
    for name, data, names in (("phases", phases, "0=pore,1=copper,2=oxide"), ("grains", grains, None)):
        np.save(tmp_path / f"{name}.npy", data)
        run_label_ingest(plan_label_ingest(tmp_path / f"{name}.npy", vol.path, name, phase_names=names))
    return open_volume(vol.path), image, phases, grains


def test_ome_zarr_models_validate_the_volume(study_volume):
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    vol, image, phases, grains = study_volume
    root = zarr.open_group(str(vol.path), mode="r")
    model = Image.from_zarr(root)                    # validates labels/ too
    datasets = model.attributes.ome.multiscales[0].datasets
    assert [d.path for d in datasets] == ["image", "levels/1", "levels/2"]
    labels = Labels.from_zarr(root["labels"])
    assert labels.label_paths == ["grains", "phases"]
    for name, data in (("phases", phases), ("grains", grains)):
        label = ImageLabel.from_zarr(root[f"labels/{name}"])
        meta = label.attributes.ome
        assert [d.path for d in meta.multiscales[0].datasets] == ["0", "1", "2"]
        assert meta.image_label.source.image == "../../" and meta.image_label.version == "0.5"
        values, counts = np.unique(data, return_counts=True)
        dumped = json.loads(label.attributes.model_dump_json(by_alias=True))
        props = dumped["ome"]["image-label"]["properties"]
        assert [p["label-value"] for p in props] == values.tolist()
        assert [p["voxels"] for p in props] == counts.tolist()
        colors = [tuple(c.rgba) for c in meta.image_label.colors]
        assert len(set(colors)) == len(values) and colors[0] == (0, 0, 0, 0)
    props = root["labels/phases"].attrs["ome"]["image-label"]["properties"]
    assert [p["name"] for p in props] == ["pore", "copper", "oxide"]
    assert "name" not in root["labels/grains"].attrs["ome"]["image-label"]["properties"][0]
    # porevox's own record of the phases, where porevox reads it
    assert vol.array("labels/phases").attrs["phases"]["1"] == {"name": "copper",
                                                              "voxels": int((phases == 1).sum())}


def test_ome_zarr_py_reads_image_levels_and_labels(study_volume):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    vol, image, phases, grains = study_volume
    nodes = list(Reader(parse_url(str(vol.path)))())
    top = nodes[0]
    assert top.load(Multiscales) is not None and top.visible
    assert [d.shape for d in top.data] == [(20, 33, 30), (10, 16, 15), (5, 8, 7)]
    np.testing.assert_array_equal(top.data[0].compute(), image)
    found = {n.metadata["name"]: n for n in nodes if n.load(Label) is not None}
    assert sorted(found) == ["grains", "phases"]
    assert [d.shape for d in found["grains"].data] == [(20, 33, 30), (10, 16, 15), (5, 8, 7)]
    # reached through the image, ome-zarr-py lists label images switched off (napari's
    # layers start hidden); opened at their own path they are shown, with their colours
    for name in ("phases", "grains"):
        nodes = list(Reader(parse_url(str(vol.path / "labels" / name)))())
        label = next(n for n in nodes if n.load(Label) is not None and n.metadata["name"] == name)
        assert label.visible and len(label.data) == 3
        assert label.metadata["color"][0] == [0, 0, 0, 0]
    assert found["phases"].metadata["properties"][1]["name"] == "copper"


# --------------------------------------------------------------------------- the pyramids
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_gray_levels_equal_numpy(tmp_path, rng, dtype):
    shape, chunks = (23, 19, 29), (5, 7, 3)
    vol = create_volume(tmp_path / "s.zarr", shape, dtype, (1, 1, 1), chunks=chunks)
    data = (rng.random(shape) * 250).astype(dtype) if dtype == "float32" else \
        rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    vol.image[:] = data
    ome.write_image_pyramid(vol)
    steps = ome.plan_levels(shape, chunks, (1, 1, 1))
    got = [a[:] for a in ome.pyramid(open_volume(vol.path))]
    want = ref_pyramid(data, steps, ref_mean)
    assert len(got) == len(want) == 4      # (11, 9, 14), (5, 4, 7), (2, 2, 3): fits (5, 7, 3)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6) if dtype == "float32" else \
            np.testing.assert_array_equal(g, w)
    for level, arr in enumerate(ome.pyramid(vol)[1:], 1):
        assert arr.path == f"levels/{level}"
        assert arr.chunks == tuple(min(c, n) for c, n in zip(chunks, arr.shape))


@pytest.mark.parametrize("dtype,values", [("uint8", (0, 1, 2)), ("uint16", (0, 3, 1000, 65535))])
def test_label_levels_equal_numpy_mode(tmp_path, rng, dtype, values):
    shape, chunks = (21, 17, 26), (5, 3, 7)
    vol = create_volume(tmp_path / "s.zarr", shape, "uint8", (1, 1, 1), chunks=chunks)
    data = blobs(shape, rng, values, dtype)
    arr, tmp = tmp_array(vol, "labels/seg", shape, dtype, chunks)
    arr[:] = data
    publish_array(vol, tmp, "labels/seg")
    got = [a[:] for a in ome.pyramid(vol, "labels/seg")]
    want = ref_pyramid(data, ome.plan_levels(shape, chunks, (1, 1, 1)), ref_mode)
    assert len(got) == len(want) >= 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    values, counts = np.unique(data, return_counts=True)
    assert ome.label_counts(vol, "seg") == dict(zip(values.tolist(), counts.tolist()))


def test_mode_ties_go_to_the_smaller_value():
    block = np.array([5, 5, 2, 2, 9, 9, 7, 1], np.uint16).reshape(2, 2, 2)
    before = block.copy()
    assert pyramid.mode_pool(block, (2, 2, 2)).item() == 2
    assert pyramid.mode_pool(block, (2, 1, 1)).tolist() == [[[5, 5], [2, 1]]]    # pairs along z: ties
    np.testing.assert_array_equal(block, before)             # pure
    block = np.array([3, 3, 3, 1, 1, 1, 0, 0], np.uint8).reshape(2, 2, 2)
    assert pyramid.mode_pool(block, (2, 2, 2)).item() == 1
    assert pyramid.mean_pool(np.array([0, 1] * 4, np.uint8).reshape(2, 2, 2), (2, 2, 2)).item() == 1


def test_anisotropic_voxels_are_averaged_on_their_finest_axes(tmp_path, rng):
    """z three times coarser than y, x: levels halve y, x until the voxels are
    near-cubic, then all three; the scales say so."""
    vs = (0.06, 0.02, 0.02)
    vol = create_volume(tmp_path / "s.zarr", (24, 96, 80), "uint8", vs, chunks=(6, 12, 10))
    data = rng.integers(0, 256, (24, 96, 80), dtype=np.uint8)
    vol.image[:] = data
    ome.write_image_pyramid(vol)
    steps = ome.plan_levels((24, 96, 80), (6, 12, 10), vs)
    # voxels 0.06 x 0.02 -> 0.06 x 0.04 (z 1.5x y: still not halved) -> 0.06 x 0.08 -> 0.12 x 0.16
    assert steps == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    ms = zarr.open_group(str(vol.path), mode="r").attrs["ome"]["multiscales"][0]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [pytest.approx(s) for s in ([0.06, 0.02, 0.02], [0.06, 0.04, 0.04], [0.06, 0.08, 0.08],
                                                 [0.12, 0.16, 0.16], [0.24, 0.32, 0.32])]
    got = [a[:] for a in ome.pyramid(vol)]
    for g, w in zip(got, ref_pyramid(data, steps, ref_mean), strict=True):
        np.testing.assert_array_equal(g, w)
    assert [g.shape for g in got] == [(24, 96, 80), (24, 48, 40), (24, 24, 20), (12, 12, 10), (6, 6, 5)]


def test_a_volume_in_one_chunk_has_no_lower_level(tmp_path):
    vol = create_volume(tmp_path / "s.zarr", (4, 8, 8), "uint8", (1, 1, 1))
    vol.image[:] = 3
    assert ome.write_image_pyramid(vol) == []
    assert [d["path"] for d in vol.group.attrs["ome"]["multiscales"][0]["datasets"]] == ["image"]
    assert ome.plan_levels((1, 64, 64), (1, 8, 8), (1, 1, 1)) == []   # z cannot be halved


# --------------------------------------------------------------------------- writes
def test_replaced_label_updates_list_and_pyramid(tmp_path, rng):
    shape = (12, 16, 16)
    vol = create_volume(tmp_path / "s.zarr", shape, "uint8", (1, 1, 1), chunks=(4, 4, 4))
    first = blobs(shape, rng, (0, 1))
    store(vol, "labels/seg", da.from_array(first, chunks=(4, 4, 4)))
    _, pending = tmp_array(vol, "labels/late", shape, "uint8", (4, 4, 4))   # unpublished
    labels = zarr.open_group(str(vol.path / "labels"), mode="r")
    assert labels.attrs["ome"]["labels"] == ["seg"] and vol.labels == ["seg"]
    second = blobs(shape, rng, (0, 4, 5))
    store(vol, "labels/seg", da.from_array(second, chunks=(4, 4, 4)),
          params={"again": True})
    store(vol, "labels/other", da.from_array(first, chunks=(4, 4, 4)))
    labels = zarr.open_group(str(vol.path / "labels"), mode="r")
    assert labels.attrs["ome"]["labels"] == ["other", "seg"] == vol.labels
    got = [a[:] for a in ome.pyramid(vol, "labels/seg")]
    for g, w in zip(got, ref_pyramid(second, ome.plan_levels(shape, (4, 4, 4), (1, 1, 1)), ref_mode)):
        np.testing.assert_array_equal(g, w)
    assert sorted(ome.label_counts(vol, "seg")) == sorted(np.unique(second).tolist())
    assert [c["label-value"] for c in vol.group["labels/seg"].attrs["ome"]["image-label"]["colors"]] == \
        sorted(np.unique(second).tolist())
    # a killed write's temporary group is cleaned like a temporary array was
    assert remove_stale_tmp(vol, "labels/late") == [pending.rpartition("/")[2]]
    assert sorted(p.name for p in (vol.path / "labels").iterdir()) == ["other", "seg", "zarr.json"]


def test_label_arrays_are_read_as_before(tmp_path, rng):
    """``labels/<name>`` addresses level 0 everywhere a label image is read."""
    from porevox.engine import provenance

    vol = create_volume(tmp_path / "s.zarr", (8, 10, 12), "uint8", (1, 1, 1), chunks=(4, 5, 6))
    data = blobs((8, 10, 12), rng, (0, 1))
    arr, tmp = tmp_array(vol, "labels/seg", data.shape, "uint8", (4, 5, 6))
    arr[:] = data
    published = publish_array(vol, tmp, "labels/seg")
    assert published.path == "labels/seg/0"
    for read in (vol.array("labels/seg")[:], vol.reader("labels/seg")[:],
                 vol.to_dask("labels/seg").compute()):
        np.testing.assert_array_equal(read, data)
    assert provenance.fingerprint_array(vol, "labels/seg")
    home, name = label_home(vol.reader("labels/seg"))
    assert home.path == vol.path and name == "seg"
    assert label_home(vol.group["labels/seg/1"]) is None and label_home(vol.image) is None
    from porevox.pipelines.quantify import _volume_home  # where quantify keeps distance/<name>

    assert _volume_home(vol.reader("labels/seg"))[1] == "seg"
    assert vol.summary()["labels"] == {"seg": {"dtype": "uint8", "chunks": [4, 5, 6]}}


def test_old_layout_volume_opens_and_converts(tmp_path, rng):
    """A volume of an older porevox (labels/<name> a plain array, no labels list)
    opens and reads; the next write of that label makes it an OME-Zarr label image."""
    vol = create_volume(tmp_path / "s.zarr", (8, 8, 8), "uint8", (1, 1, 1), chunks=(4, 4, 4))
    old = zarr.open_group(str(vol.path / "labels"), mode="r+")
    del old.attrs["ome"]
    data = blobs((8, 8, 8), rng, (0, 1))
    old.create_array("seg", shape=data.shape, dtype="uint8", chunks=(4, 4, 4))[:] = data
    vol = open_volume(vol.path)
    assert vol.labels == ["seg"]
    np.testing.assert_array_equal(vol.array("labels/seg")[:], data)
    np.testing.assert_array_equal(vol.to_dask("labels/seg").compute(), data)
    assert [a.path for a in ome.pyramid(vol, "labels/seg")] == ["labels/seg"]
    assert label_home(vol.array("labels/seg"))[1] == "seg"
    store(vol, "labels/seg", da.from_array(1 - data, chunks=(4, 4, 4)))
    assert ome.is_label_group(vol.path / "labels" / "seg")
    np.testing.assert_array_equal(vol.array("labels/seg")[:], 1 - data)
    assert zarr.open_group(str(vol.path / "labels"), mode="r").attrs["ome"]["labels"] == ["seg"]


def test_other_arrays_under_labels_stay_plain(tmp_path):
    """Only uint8 / uint16 label images become OME-Zarr label images."""
    vol = create_volume(tmp_path / "s.zarr", (4, 4, 4), "uint8", (1, 1, 1))
    arr, tmp = tmp_array(vol, "labels/prob", (4, 4, 4), "float32", (2, 2, 2))
    arr[:] = 0.5
    publish_array(vol, tmp, "labels/prob")
    assert vol.array("labels/prob").path == "labels/prob" and vol.labels == ["prob"]
    assert zarr.open_group(str(vol.path / "labels"), mode="r").attrs["ome"]["labels"] == []


def test_label_colors_are_distinct():
    colors = ome.label_colors(range(0, 3000))
    assert len({tuple(c["rgba"]) for c in colors}) == 3000
    assert colors[0]["rgba"] == [0, 0, 0, 0] and colors[1]["rgba"][:3] == list(ome.PALETTE[0])


def test_a_volume_built_in_place_is_ome_zarr(tmp_path, rng):
    """The twin's way (porevox synth): label images written in place in a volume
    being built, completed together with the image's pyramid."""
    from ome_zarr_models.v05.image import Image

    from porevox.engine.storage import building

    data = blobs((10, 24, 24), rng, (0, 1))
    with building(tmp_path / "t.zarr") as tmp:
        vol = create_volume(tmp, data.shape, "uint8", (0.05, 0.0372, 0.0372), chunks=(5, 8, 8))
        vol.image[:] = data * 200
        ome.label_array(vol, "truth", shape=data.shape, dtype="uint8", chunks=(5, 8, 8))[:] = data
        ome.complete_volume(vol)
    vol = open_volume(tmp_path / "t.zarr")
    Image.from_zarr(zarr.open_group(str(vol.path), mode="r"))
    assert vol.labels == ["truth"] and len(ome.pyramid(vol, "labels/truth")) == len(ome.pyramid(vol)) == 3
    np.testing.assert_array_equal(vol.array("labels/truth")[:], data)


def test_a_label_image_or_volume_is_a_source(tmp_path, rng):
    """`porevox ingest` reads an OME-Zarr multiscale group at its full resolution."""
    from porevox.engine.sources import open_source

    vol = create_volume(tmp_path / "s.zarr", (4, 6, 6), "uint8", (1, 1, 1), chunks=(2, 3, 3))
    data = blobs((4, 6, 6), rng, (0, 1))
    arr, tmp = tmp_array(vol, "labels/seg", data.shape, "uint8", (2, 3, 3))
    arr[:] = data
    publish_array(vol, tmp, "labels/seg")
    source = open_source(vol.path / "labels" / "seg")
    assert source.path.endswith("seg/0") and source.shape == (4, 6, 6)
    assert open_source(vol.path).path.endswith("s.zarr/image")
