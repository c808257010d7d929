"""Volumes in object storage and sharded volumes: against a real S3-compatible server
(moto's server mode on 127.0.0.1, reached through s3fs by this process, the Dask
workers and the CLI), compared with the same work on local disk."""

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from porevox.engine import ome, open_volume
from porevox.engine.ingest import ingest
from porevox.engine.location import listing, location
from porevox.engine.storage import (
    ChunkError,
    plan_shards,
    remove_stale_tmp,
    shard_layout,
    tmp_array,
)
from porevox.errors import OutputError

from ..conftest import porous

pytestmark = pytest.mark.timeout(300)


def _objects(url: str) -> list[str]:
    path = location(url)
    path.fs.invalidate_cache()
    return sorted(f.removeprefix(path.path + "/") for f in path.fs.find(path.path))


@pytest.fixture
def stack(tmp_path, rng):
    """A uint16 gray stack of a porous solid (odd shape) saved as .npy, and its solid."""
    solid = porous((45, 70, 83), rng, porosity=0.55)
    image = (np.where(solid, 40000, 12000) + rng.normal(0, 2500, solid.shape)).clip(0, 65535)
    path = tmp_path / "stack.npy"
    np.save(path, image.astype(np.uint16))
    return path, image.astype(np.uint16)


# --------------------------------------------------------------------------- layout
def test_plan_shards_groups_small_chunks_only():
    # a 2048³ uint8 array in 64³ chunks: 32 768 files unsharded; 512³ shards of 64 MiB
    assert plan_shards((2048,) * 3, (64,) * 3, "uint8") == (512, 512, 256)
    assert plan_shards((2048,) * 3, (64,) * 3, "uint8", target_bytes=2**27) == (512,) * 3
    assert plan_shards((2048,) * 3, (256,) * 3, "uint8") is None       # 16 MiB chunks: files enough
    assert plan_shards((1024,) * 3, (64,) * 3, "uint8") is None         # 4096 chunks: files enough
    # a shard spanning an axis is rounded up to whole chunks
    assert plan_shards((300, 700, 830), (16,) * 3, "uint16") == (304, 256, 256)


def test_shard_layout_shards_only_whole_multiples():
    assert shard_layout((45, 70, 83), (32, 32, 48), (16, 16, 16)) == ((16, 16, 16), (32, 32, 48))
    # a block spanning its axis: one shard, rounded up to whole chunks
    assert shard_layout((45, 70, 83), (45, 64, 83), (16, 16, 16)) == ((16, 16, 16), (48, 64, 96))
    # a feature array's channel axis leads
    assert shard_layout((3, 45, 70, 83), (3, 32, 32, 48), (16, 16, 16)) == ((3, 16, 16, 16),
                                                                            (3, 32, 32, 48))
    # blocks that are not whole chunks (a kernel's own) are written unsharded
    assert shard_layout((45, 70, 83), (20, 32, 48), (16, 16, 16)) == ((20, 32, 48), None)
    assert shard_layout((45, 70, 83), (32, 32, 48), None) == ((32, 32, 48), None)


# --------------------------------------------------------------------------- object storage
def test_ingest_into_s3_sharded_equals_local(stack, tmp_path, bucket, s3_client):
    src, image = stack
    url = f"{bucket}/study/sample.zarr"
    remote, did = ingest(src, url, (0.5, 0.4, 0.4), chunks=(16, 16, 16), shards=(32, 32, 48))
    local, _ = ingest(src, tmp_path / "sample.zarr", (0.5, 0.4, 0.4), chunks=(16, 16, 16),
                      shards=(32, 32, 48))
    assert did and str(remote.path) == url
    assert remote.chunks == (32, 32, 48) and remote.read_chunks == (16, 16, 16)
    np.testing.assert_array_equal(remote.to_dask().compute(), image)
    # one object per shard, not per chunk: 2 x 3 x 2 shards of 2 x 2 x 3 chunks
    objects = _objects(url)
    shards = [o for o in objects if o.startswith("image/c/")]
    assert len(shards) == 12
    # the pyramid's levels, sharded alike, equal the local volume's
    levels = [o for o in objects if o.startswith("levels/") and o.count("/") == 2 and o.endswith("zarr.json")]
    assert levels and len(levels) == len(list((local.path / "levels").glob("*/zarr.json")))
    for path in levels:
        name = path.removesuffix("/zarr.json")
        np.testing.assert_array_equal(remote.group[name][:], local.group[name][:])
        assert remote.group[name].shards == local.group[name].shards
    # nothing of the build is left beside it
    assert listing(location(f"{bucket}/study")) == ["sample.zarr"]
    # the same ingest again is done already
    _, did = ingest(src, url, (0.5, 0.4, 0.4), chunks=(16, 16, 16), shards=(32, 32, 48))
    assert not did


def test_segment_quantify_on_s3_equal_local(stack, tmp_path, bucket, s3_client, monkeypatch):
    """Otsu, every scalar feature (struts' stored distance transform, tortuosity by
    blocks with its scratch in the bucket) and conductivity: the same numbers from a
    sharded volume in S3 as from the plain volume on disk."""
    import porevox as pv
    from porevox.pipelines.quantify import quantify_volume
    from porevox.pipelines.segment import segment_volume

    src, _ = stack
    url = f"{bucket}/s.zarr"
    ingest(src, url, (1, 1, 1), chunks=(16, 16, 16), shards=(32, 32, 48))
    plain, _ = ingest(src, tmp_path / "plain.zarr", (1, 1, 1), chunks=(24, 40, 50))
    for path in (url, plain.path):
        segment_volume(path, "otsu")
    remote = open_volume(url)
    assert remote.array("labels/otsu").shards == (32, 32, 48)
    np.testing.assert_array_equal(remote.to_dask("labels/otsu").compute(),
                                  plain.to_dask("labels/otsu").compute())
    # struts in blocks after the stored distance transform, as for a large volume
    monkeypatch.setattr("porevox.pipelines.quantify.STRUTS_SPLIT_VOXELS", 1000)
    opts = dict(labels="otsu", axis="x", features=["density", "surface", "struts", "tortuosity"],
                tortuosity_method="blocks")
    got = quantify_volume(url, **opts)
    want = quantify_volume(plain.path, **opts)
    for name in ("relative_density", "specific_surface_area", "euler_characteristic", "strut_diameter_mean",
                 "strut_skeleton_voxels", "tortuosity_reachable_fraction"):
        assert got[name] == pytest.approx(want[name], rel=1e-12), name
    # the block solver's visits run in the cluster's order: equal to its tolerance
    assert got["tortuosity"] == pytest.approx(want["tortuosity"], rel=1e-6)
    assert got["tortuosity_method"] == "blocks"
    # the stored distance transform is in the bucket; the tortuosity scratch is gone
    assert "distance/otsu/zarr.json" in _objects(url)
    assert not [o for o in _objects(url) if ".porevox-tortuosity-" in o]
    assert pv.conductivity(url, labels="otsu", axis="x")["relative_conductivity"] == pytest.approx(
        pv.conductivity(plain.path, labels="otsu", axis="x")["relative_conductivity"], rel=1e-9)


@pytest.fixture(scope="module")
def s3_volume(s3_server):
    """A sharded volume in a bucket of its own, ingested once for the tests below (each
    writes label images of its own name): (its URL, its image)."""
    import tempfile
    import uuid

    import s3fs

    bucket = f"porevox-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    solid = porous((45, 70, 83), np.random.default_rng(4321), porosity=0.55)
    image = (np.where(solid, 40000, 12000) + np.random.default_rng(5).normal(0, 2500, solid.shape))
    image = image.clip(0, 65535).astype(np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        np.save(f"{folder}/stack.npy", image)
        url = f"s3://{bucket}/v.zarr"
        ingest(f"{folder}/stack.npy", url, (1, 1, 1), chunks=(16, 16, 16), shards=(32, 32, 48))
    return url, image


def test_publish_in_s3_replaces_whole_and_resumes(s3_volume, s3_client):
    from porevox.pipelines.segment import segment_volume

    url, image = s3_volume
    assert not segment_volume(url, "otsu")["skipped"]
    assert segment_volume(url, "otsu")["skipped"]          # resumed from the record in the bucket
    first = open_volume(url).to_dask("labels/otsu").compute()
    # written again over the published one: replaced whole
    assert not segment_volume(url, "threshold", name="otsu", threshold=30000, force=True)["skipped"]
    volume = open_volume(url)
    assert volume.labels.count("otsu") == 1
    np.testing.assert_array_equal(volume.to_dask("labels/otsu").compute(), (image >= 30000).astype(np.uint8))
    assert not np.array_equal(first, (image >= 30000))
    # nothing temporary is left, and the image-label metadata is the new one's
    assert not [o for o in _objects(url) if ".tmp-" in o]
    meta = json.loads((location(url) / "labels" / "otsu" / "zarr.json").read_text())
    assert meta["attributes"]["ome"]["image-label"]


def test_killed_write_in_s3_is_never_published(s3_volume, s3_client):
    url, _ = s3_volume
    volume = open_volume(url)
    arr, tmp = tmp_array(volume, "labels/mine", volume.shape, "uint8", volume.chunks)
    arr[:32, :32, :48] = 1                                     # a task's shard, then the kill
    volume = open_volume(url)
    assert "mine" not in volume.labels
    with pytest.raises(Exception, match="no array 'labels/mine'"):
        volume.array("labels/mine")
    assert remove_stale_tmp(volume, "labels/mine") == [tmp.rpartition("/")[2]]
    assert not [o for o in _objects(url) if o.startswith("labels/.tmp-")]


def test_missing_shard_in_s3_is_named(s3_volume, s3_client):
    from porevox.engine import store

    url, image = s3_volume
    volume = open_volume(url)
    store(volume, "labels/broken", (volume.to_dask() > 30000).astype(np.uint8))
    location(f"{url}/labels/broken/0/c/1/0/1").unlink()
    with pytest.raises(ChunkError, match=r"labels/broken: chunk \(1, 0, 1\) is missing "
                                         r"\(s3://.*/labels/broken/0/c/1/0/1\)"):
        open_volume(url).to_dask("labels/broken").compute()


def test_cli_ingest_into_s3_and_bad_bucket(stack, bucket, s3_server, local_cluster):
    src, image = stack
    # the session's cluster (its workers reach the server too), as with --scheduler on a real one
    porevox = [sys.executable, "-m", "porevox.cli", "--scheduler", local_cluster.scheduler_address]
    url = f"{bucket}/cli.zarr"
    r = subprocess.run([*porevox, "ingest", str(src), url, "--voxel-size", "1", "1", "1",
                        "--chunks", "16", "16", "16", "--shards", "32", "32", "48"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    volume = open_volume(url)
    assert volume.chunks == (32, 32, 48)
    assert np.array_equal(zarr.open_array(f"{url}/image")[:], image)
    r = subprocess.run([*porevox, "info", url, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["path"] == url and info["chunks"] == [16, 16, 16] and info["shards"] == [32, 32, 48]
    # a user's segmentation joins it, sharded like its image
    seg = (image > 25000).astype(np.uint8)
    np.save(src.with_name("seg.npy"), seg)
    r = subprocess.run([*porevox, "ingest", str(src.with_name("seg.npy")), "--labels", "mine", "--into",
                        url, "--phase-names", "0=pore,1=solid", "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["phases"]["1"] == {"name": "solid", "voxels": int(seg.sum())}
    volume = open_volume(url)
    assert volume.labels == ["mine"] and volume.array("labels/mine").shards == (32, 32, 48)
    np.testing.assert_array_equal(volume.array("labels/mine")[:], seg)
    r = subprocess.run([*porevox, "ingest", str(src), "s3://porevox-no-such-bucket/x.zarr",
                        "--voxel-size", "1", "1", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bucket porevox-no-such-bucket does not exist" in lines[0]


def test_ingest_refuses_what_it_did_not_write_in_s3(stack, bucket, s3_server):
    src, _ = stack
    location(f"{bucket}/theirs.zarr/notes.txt").write_text("a user's")
    with pytest.raises(OutputError, match="not porevox's own output"):
        ingest(src, f"{bucket}/theirs.zarr", (1, 1, 1))
    assert _objects(f"{bucket}/theirs.zarr") == ["notes.txt"]


def test_study_with_its_volumes_in_s3(tmp_path, bucket, s3_client):
    """A study whose samples' volumes are in a bucket (the study file, tables, figures
    and report beside it on disk): ingested there in shards, segmented, quantified
    into features.csv equal to the features of the arrays, and resumed."""
    import pandas as pd
    import yaml
    from skimage.filters import threshold_otsu

    import porevox as pv
    from porevox.pipelines.run import run_study

    rng = np.random.default_rng(7)
    stacks = {}
    for i in range(2):
        solid = porous((30, 72, 80), rng, porosity=0.5)
        gray = np.where(solid, 170, 60) + rng.normal(0, 12, solid.shape)
        stacks[f"s{i}"] = gray.clip(0, 255).astype(np.uint8)
        np.save(tmp_path / f"s{i}.npy", stacks[f"s{i}"])
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "in a bucket", "voxel_size": [0.5, 0.4, 0.4],
        "samples": [{"id": k, "path": f"{bucket}/study/{k}.zarr", "source": f"{k}.npy"} for k in stacks],
        "stages": {"preprocess": False, "segment": {"methods": ["otsu"]}, "unet": False,
                   "quantify": {"labels": ["otsu"]}, "regress": False}}))
    record = run_study(tmp_path / "study.yaml")
    assert sorted(s["step"] for s in record["steps"]).count("ingest") == 2
    table = pd.read_csv(tmp_path / "features.csv")
    for _, row in table.iterrows():
        image = stacks[row["id"]]
        vol = open_volume(f"{bucket}/study/{row['id']}.zarr", mode="r")
        np.testing.assert_array_equal(vol.image[:], image)
        solid = (image > threshold_otsu(image)).astype(np.uint8)
        np.testing.assert_array_equal(vol.array("labels/otsu")[:], solid)
        ref = pv.quantify(solid, voxel_size=(0.5, 0.4, 0.4))
        for key in ("relative_density", "specific_surface_area", "strut_diameter_mean", "tortuosity"):
            assert row[key] == pytest.approx(ref[key], rel=1e-9), key
    assert (tmp_path / "report.html").is_file()
    assert not (tmp_path / "s0.zarr").exists()                   # nothing of the volumes on disk
    assert run_study(tmp_path / "study.yaml")["ran"] == 0


def test_stages_write_whole_shards_of_a_sharded_volume(tmp_path, rng, client):
    """A sharded volume's blocks are its shards: what a stage writes in them is
    sharded alike (one task, one shard), what a kernel writes in blocks that are not
    whole chunks is not sharded; both hold what the plain call on the whole gives."""
    import dask.array as da
    from scipy import ndimage as ndi

    from porevox.engine import run_by_block, store
    from porevox.engine.storage import create_volume

    solid = porous((45, 70, 83), rng).astype(np.uint8)
    vol = create_volume(tmp_path / "s.zarr", solid.shape, "uint8", (1, 1, 1), chunks=(16, 16, 16),
                        shards=(32, 32, 48))
    vol.image[:] = solid
    assert vol.chunks == (32, 32, 48) and vol.to_dask().chunks[0] == (32, 13)
    store(vol, "labels/a", vol.to_dask() * 1)
    assert vol.array("labels/a").shards == (32, 32, 48) and vol.array("labels/a").chunks == (16, 16, 16)
    store(vol, "labels/b", da.from_array(solid, chunks=(20, 30, 40)))
    assert vol.array("labels/b").shards is None and vol.array("labels/b").chunks == (20, 30, 40)
    for name in ("a", "b"):
        np.testing.assert_array_equal(vol.array(f"labels/{name}")[:], solid)
    run_by_block(vol, _erode, "image", "eroded", depth=1, dtype="uint8")
    assert vol.array("eroded").shards == (32, 32, 48)
    np.testing.assert_array_equal(vol.array("eroded")[:], ndi.binary_erosion(solid).astype(np.uint8))
    assert ome.pyramid(open_volume(vol.path), "labels/a")[0].shards == (32, 32, 48)


def _erode(block):
    from scipy import ndimage as ndi

    return ndi.binary_erosion(block).astype(np.uint8)
