"""Ingest round trips and bad input (DESIGN: nothing half-written left behind)."""

import os

import numpy as np
import pytest
import tifffile
import zarr

from porevox import InvalidVolumeError, VolumeNotFoundError, ingest, open_volume
from porevox.engine import open_source, source_to_dask

VS = (0.025, 0.0186, 0.0186)
DTYPES = ["uint8", "uint16", "float32"]


def make(shape, dtype, rng):
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def leftovers(folder, name):
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}")]


def check_roundtrip(tmp_path, src, data, **kw):
    out = tmp_path / "out.zarr"
    vol, did = ingest(src, out, VS, sample={"material": "copper", "temperature_c": 250}, **kw)
    assert did
    np.testing.assert_array_equal(vol.image[:], data)
    assert vol.image.dtype == data.dtype
    again = open_volume(out)
    assert again.voxel_size == VS and again.unit == "micrometer"
    assert again.sample == {"material": "copper", "temperature_c": 250}
    assert again.provenance["ingest"]["outputs"] == ["image"]
    assert leftovers(tmp_path, "out.zarr") == []
    return vol


@pytest.mark.parametrize("dtype", DTYPES)
def test_multipage_tiff(tmp_path, rng, dtype):
    data = make((13, 21, 34), dtype, rng)
    tifffile.imwrite(tmp_path / "s.tif", data)
    check_roundtrip(tmp_path, tmp_path / "s.tif", data, chunks=(5, 8, 13))


def test_multipage_tiff_compressed_pages(tmp_path, rng):
    """Compressed pages are not memory-mappable: read page by page."""
    data = make((9, 30, 20), "uint16", rng)
    with tifffile.TiffWriter(tmp_path / "s.tif") as tif:
        for plane in data:
            tif.write(plane, compression="zlib")
    assert not open_source(tmp_path / "s.tif").contiguous
    check_roundtrip(tmp_path, tmp_path / "s.tif", data, chunks=(4, 7, 9))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_folder_natural_order(tmp_path, rng, dtype):
    data = make((12, 17, 19), dtype, rng)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(data):          # slice_1 ... slice_12: 10 must follow 9
        tifffile.imwrite(folder / f"slice_{i + 1}.tif", plane)
    (folder / "notes.txt").write_text("ignored")
    check_roundtrip(tmp_path, folder, data, chunks=(5, 6, 19))


@pytest.mark.parametrize("dtype", DTYPES)
def test_npy(tmp_path, rng, dtype):
    data = make((10, 11, 12), dtype, rng)
    np.save(tmp_path / "s.npy", data)
    check_roundtrip(tmp_path, tmp_path / "s.npy", data)


def test_npy_fortran_order(tmp_path, rng):
    data = make((6, 7, 8), "uint16", rng)
    np.save(tmp_path / "s.npy", np.asfortranarray(data))
    assert not open_source(tmp_path / "s.npy").contiguous
    check_roundtrip(tmp_path, tmp_path / "s.npy", data, chunks=(4, 5, 6))


def test_npy_big_endian(tmp_path, rng):
    data = make((6, 7, 8), "uint16", rng)
    np.save(tmp_path / "s.npy", data.astype(">u2"))
    check_roundtrip(tmp_path, tmp_path / "s.npy", data)


@pytest.mark.parametrize("order", ["little", "big"])
def test_raw(tmp_path, rng, order):
    data = make((7, 9, 11), "uint16", rng)
    header = b"HDR!" * 4
    (tmp_path / "s.raw").write_bytes(header + data.astype("<u2" if order == "little" else ">u2").tobytes())
    check_roundtrip(tmp_path, tmp_path / "s.raw", data, shape=(7, 9, 11), dtype="uint16",
                    offset=len(header), byte_order=order, chunks=(3, 4, 5))


def test_zarr_array_source(tmp_path, rng):
    data = make((9, 10, 11), "uint8", rng)
    zarr.create_array(str(tmp_path / "src.zarr"), data=data, chunks=(4, 4, 4))
    check_roundtrip(tmp_path, tmp_path / "src.zarr", data, chunks=(5, 5, 5))


def test_source_reads_only_its_box(tmp_path, rng):
    data = make((10, 20, 30), "uint16", rng)
    tifffile.imwrite(tmp_path / "s.tif", data)
    src = open_source(tmp_path / "s.tif")
    assert src.contiguous                      # uncompressed: plain reads of the rows needed
    np.testing.assert_array_equal(src.read(3, 7, slice(5, 9), slice(10, 30)), data[3:7, 5:9, 10:30])
    lazy = source_to_dask(src, (4, 8, 16))
    assert lazy.chunksize == (4, 8, 16)
    np.testing.assert_array_equal(lazy[2:9, 1:19, 3:29].compute(), data[2:9, 1:19, 3:29])


def test_ingest_on_cluster(tmp_path, rng, client):
    data = make((17, 23, 64), "uint16", rng)
    tifffile.imwrite(tmp_path / "s.tif", data)
    check_roundtrip(tmp_path, tmp_path / "s.tif", data, chunks=(5, 7, 30))


def test_reingest_is_skipped_and_changes_rerun(tmp_path, rng):
    data = make((6, 8, 10), "uint8", rng)
    np.save(tmp_path / "s.npy", data)
    vol, did = ingest(tmp_path / "s.npy", tmp_path / "o.zarr", VS)
    record = vol.provenance["ingest"]
    vol2, did2 = ingest(tmp_path / "s.npy", tmp_path / "o.zarr", VS)
    assert did and not did2 and vol2.provenance["ingest"] == record
    with pytest.raises(InvalidVolumeError, match="--overwrite"):
        ingest(tmp_path / "s.npy", tmp_path / "o.zarr", (1, 1, 1))
    vol3, did3 = ingest(tmp_path / "s.npy", tmp_path / "o.zarr", (1, 1, 1), overwrite=True)
    assert did3 and vol3.voxel_size == (1, 1, 1)
    assert leftovers(tmp_path, "o.zarr") == []


# ------------------------------------------------------------------------ bad input
def bad(tmp_path, src, match, exc=InvalidVolumeError, **kw):
    out = tmp_path / "out.zarr"
    with pytest.raises(exc, match=match) as info:
        ingest(src, out, kw.pop("voxel_size", VS), **kw)
    assert "\n" not in str(info.value)
    assert not out.exists() and leftovers(tmp_path, "out.zarr") == []


def test_missing_path(tmp_path):
    bad(tmp_path, tmp_path / "none.tif", "no such file", VolumeNotFoundError)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    bad(tmp_path, tmp_path / "empty", "holds no .tif/.tiff slices")


def test_slices_of_different_shapes(tmp_path, rng):
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "a_1.tif", make((10, 10), "uint8", rng))
    tifffile.imwrite(folder / "a_2.tif", make((10, 11), "uint8", rng))
    bad(tmp_path, folder, "slices differ: a_1.tif is \\(10, 10\\).*a_2.tif is \\(10, 11\\)")


def test_slices_of_different_dtypes(tmp_path, rng):
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "a_1.tif", make((10, 10), "uint8", rng))
    tifffile.imwrite(folder / "a_2.tif", make((10, 10), "uint16", rng))
    bad(tmp_path, folder, "slices differ")


def test_truncated_tiff(tmp_path, rng):
    tifffile.imwrite(tmp_path / "s.tif", make((8, 64, 64), "uint16", rng))
    raw = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 2])
    bad(tmp_path, tmp_path / "t.tif", "truncated|cannot read TIFF")


def test_truncated_tiff_compressed(tmp_path, rng):
    with tifffile.TiffWriter(tmp_path / "s.tif") as tif:
        for plane in make((6, 64, 64), "uint16", rng):
            tif.write(plane, compression="zlib")
    raw = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: int(len(raw) * 0.7)])
    bad(tmp_path, tmp_path / "t.tif", "truncated|cannot read TIFF")


def test_unreadable_tiff(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"this is not a tiff at all" * 10)
    bad(tmp_path, tmp_path / "x.tif", "cannot read TIFF")


def test_truncated_slice_in_folder(tmp_path, rng):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"s{i}.tif", make((40, 40), "uint16", rng))
    raw = (folder / "s1.tif").read_bytes()
    (folder / "s1.tif").write_bytes(raw[:-500])
    bad(tmp_path, folder, "s1.tif")


def test_not_3d(tmp_path, rng):
    tifffile.imwrite(tmp_path / "one.tif", make((20, 20), "uint8", rng))
    bad(tmp_path, tmp_path / "one.tif", "not a 3-D stack")
    np.save(tmp_path / "two.npy", make((20, 20), "uint8", rng))
    bad(tmp_path, tmp_path / "two.npy", "must be 3-D")
    np.save(tmp_path / "four.npy", make((2, 3, 4, 5), "uint8", rng))
    bad(tmp_path, tmp_path / "four.npy", "must be 3-D")


def test_rgb_tiff(tmp_path, rng):
    tifffile.imwrite(tmp_path / "rgb.tif", make((4, 16, 16, 3), "uint8", rng), photometric="rgb")
    bad(tmp_path, tmp_path / "rgb.tif", "grayscale")


@pytest.mark.parametrize("voxel_size", [(0, 1, 1), (1, -2, 1), (1, 1)])
def test_bad_voxel_size(tmp_path, rng, voxel_size):
    np.save(tmp_path / "s.npy", make((4, 4, 4), "uint8", rng))
    bad(tmp_path, tmp_path / "s.npy", "voxel_size must be 3 positive numbers", voxel_size=voxel_size)


@pytest.mark.parametrize("dtype", ["int32", "int8", "bool", "complex64"])
def test_unsupported_dtype(tmp_path, dtype):
    np.save(tmp_path / "s.npy", np.zeros((4, 4, 4), dtype))
    bad(tmp_path, tmp_path / "s.npy", "unsupported dtype")


def test_raw_needs_layout_and_right_size(tmp_path):
    (tmp_path / "s.raw").write_bytes(bytes(100))
    bad(tmp_path, tmp_path / "s.raw", "needs its layout")
    bad(tmp_path, tmp_path / "s.raw", "truncated", shape=(5, 5, 5), dtype="uint8")
    bad(tmp_path, tmp_path / "s.raw", "larger than the layout", shape=(2, 5, 5), dtype="uint8")


def test_zarr_group_is_not_a_source_array(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    bad(tmp_path, tmp_path / "g.zarr", "not a Zarr array")


def test_unknown_format(tmp_path):
    (tmp_path / "s.png").write_bytes(b"x")
    bad(tmp_path, tmp_path / "s.png", "cannot tell the format")


def test_failure_midway_leaves_nothing(tmp_path, rng, monkeypatch):
    """A source that breaks while being read (e.g. a disk error) leaves no volume."""
    data = make((12, 10, 10), "uint8", rng)
    np.save(tmp_path / "s.npy", data)
    from porevox.engine.sources import Source

    real = Source.read

    def flaky(self, z0, z1, ys=slice(None), xs=slice(None)):
        if z0 >= 8:
            raise OSError("simulated read error")
        return real(self, z0, z1, ys, xs)

    monkeypatch.setattr(Source, "read", flaky)
    with pytest.raises(OSError, match="simulated"):
        ingest(tmp_path / "s.npy", tmp_path / "out.zarr", VS, chunks=(4, 10, 10))
    assert not (tmp_path / "out.zarr").exists() and leftovers(tmp_path, "out.zarr") == []
    assert os.listdir(tmp_path) == ["s.npy"]
