import json
import math

import numpy as np
import pytest
import zarr

from porevox import InvalidVolumeError, VolumeNotFoundError, open_volume
from porevox.engine.storage import (
    check_voxel_size,
    choose_chunks,
    create_volume,
    publish_array,
    remove_stale_tmp,
    tmp_array,
)


def test_create_and_open_metadata(tmp_path):
    vs = (0.025, 0.0186, 0.0186)
    vol = create_volume(tmp_path / "s.zarr", (30, 40, 50), "uint16", vs,
                        sample={"material": "copper", "temperature_c": 175})
    vol.image[:] = 7
    again = open_volume(tmp_path / "s.zarr")
    assert again.voxel_size == vs
    assert again.unit == "micrometer"
    assert again.sample == {"material": "copper", "temperature_c": 175}
    assert again.image.dtype == np.uint16 and again.image.shape == (30, 40, 50)
    # OME-Zarr 0.5 block as napari's reader expects it, straight from the file
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in ms["axes"])
    assert ms["datasets"][0]["path"] == "image"
    assert ms["datasets"][0]["coordinateTransformations"][0] == {"type": "scale", "scale": list(vs)}
    arr_meta = json.loads((tmp_path / "s.zarr" / "image" / "zarr.json").read_text())
    assert arr_meta["dimension_names"] == ["z", "y", "x"]


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, -1, 1), (1, 1), "abc", (1, 1, float("nan"))])
def test_bad_voxel_size(bad):
    with pytest.raises(InvalidVolumeError, match="voxel_size must be 3 positive numbers"):
        check_voxel_size(bad)


def test_unsupported_dtype(tmp_path):
    with pytest.raises(InvalidVolumeError, match="unsupported dtype int32"):
        create_volume(tmp_path / "s.zarr", (4, 4, 4), "int32", (1, 1, 1))
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 4, 5), (0, 4, 4)])
def test_bad_shape(tmp_path, shape):
    with pytest.raises(InvalidVolumeError):
        create_volume(tmp_path / "s.zarr", shape, "uint8", (1, 1, 1))


@pytest.mark.parametrize(
    "shape,dtype", [((450, 640, 1120), "uint8"), ((400, 538, 538), "uint16"),
                    ((2048, 2048, 2048), "uint16"), ((10, 10, 10), "float32"), ((1, 1, 5000), "uint8")]
)
def test_choose_chunks(shape, dtype):
    target = 64 * 2**20
    chunks = choose_chunks(shape, dtype, target)
    itemsize = np.dtype(dtype).itemsize
    assert all(1 <= c <= s for c, s in zip(chunks, shape))
    assert math.prod(chunks) * itemsize <= target
    # large: a split volume gets chunks of more than half the target
    if chunks != shape:
        assert math.prod(chunks) * itemsize > target / 2
    # close to cubic: no axis more than ~2x another unless bounded by the shape
    free = [c for c, s in zip(chunks, shape) if c < s]
    if free:
        assert max(free) <= 2 * min(free) + 1


def test_open_missing_and_not_a_volume(tmp_path):
    with pytest.raises(VolumeNotFoundError, match="porevox ingest"):
        open_volume(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("x", shape=(2, 2, 2), dtype="u1")
    with pytest.raises(InvalidVolumeError, match="not a porevox volume"):
        open_volume(tmp_path / "g.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidVolumeError, match="not a Zarr group"):
        open_volume(tmp_path / "plain")


def test_publish_is_atomic_and_replaces(tmp_path):
    vol = create_volume(tmp_path / "s.zarr", (8, 8, 8), "uint8", (1, 1, 1))
    arr, tmp = tmp_array(vol, "labels/seg", (8, 8, 8), "uint8", (4, 4, 4))
    arr[:] = 1
    assert vol.labels == []          # not visible before publishing
    publish_array(vol, tmp, "labels/seg")
    assert vol.labels == ["seg"]
    assert (vol.array("labels/seg")[:] == 1).all()
    arr2, tmp2 = tmp_array(vol, "labels/seg", (8, 8, 8), "uint8", (4, 4, 4))
    arr2[:] = 2
    publish_array(vol, tmp2, "labels/seg")
    assert (vol.array("labels/seg")[:] == 2).all()
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "labels").iterdir()) == ["seg", "zarr.json"]


def test_remove_stale_tmp(tmp_path):
    vol = create_volume(tmp_path / "s.zarr", (8, 8, 8), "uint8", (1, 1, 1))
    tmp_array(vol, "labels/seg", (8, 8, 8), "uint8", (4, 4, 4))
    _, keep = tmp_array(vol, "labels/other", (8, 8, 8), "uint8", (4, 4, 4))
    assert len(remove_stale_tmp(vol, "labels/seg")) == 1
    assert (tmp_path / "s.zarr" / keep).exists()


def test_array_errors(tmp_path):
    vol = create_volume(tmp_path / "s.zarr", (8, 8, 8), "uint8", (1, 1, 1))
    with pytest.raises(InvalidVolumeError, match="has no array 'labels/otsu'"):
        vol.array("labels/otsu")


def test_concurrent_stage_records_are_all_kept(tmp_path):
    """Steps of a run record their stages on one volume from several threads, each
    through a Volume it opened earlier: no record may overwrite another (a segment
    step once dropped the quantify step's record, and its features, that way)."""
    from concurrent.futures import ThreadPoolExecutor

    from porevox.engine import provenance

    create_volume(tmp_path / "v.zarr", (4, 4, 4), np.uint8, (1, 1, 1))
    opened = [open_volume(tmp_path / "v.zarr") for _ in range(4)]   # snapshots, before any record

    def record(k):
        for i in range(10):
            provenance.write_record(opened[k], f"stage-{k}-{i}", {"i": i}, {}, [], 0.0)
        opened[k].update_meta(**{f"extra-{k}": k})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(record, range(4)))
    meta = open_volume(tmp_path / "v.zarr").meta
    assert sorted(meta["provenance"]) == sorted(f"stage-{k}-{i}" for k in range(4) for i in range(10))
    assert all(meta[f"extra-{k}"] == k for k in range(4))
