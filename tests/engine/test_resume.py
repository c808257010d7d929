"""Provenance and resume: finished stages are skipped, killed stages never marked done."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from porevox import open_volume
from porevox.engine import provenance, run_by_block, write_blockwise
from porevox.engine.storage import create_volume
from porevox.kernels import gaussian, gaussian_depth

VS = (1.0, 1.0, 1.0)


def plus_one(block, *, step=1):
    return block + step


@pytest.fixture
def vol(tmp_path, rng):
    v = create_volume(tmp_path / "v.zarr", (24, 20, 20), "uint8", VS, chunks=(6, 10, 10))
    v.image[:] = rng.integers(0, 200, (24, 20, 20), dtype=np.uint8)
    return v


def test_record_contents(vol):
    res = run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8, step=2)
    rec = open_volume(vol.path).provenance["labels/p"]
    assert rec == res.record
    assert rec["params"]["step"] == 2 and rec["params"]["kernel"].endswith("plus_one")
    assert rec["inputs"] == {"image": provenance.fingerprint_array(vol, "image")}
    assert rec["outputs"] == ["labels/p"] and rec["porevox_version"]
    assert rec["fingerprint"] == provenance.stage_fingerprint("labels/p", rec["params"], rec["inputs"])


def test_rerun_is_skipped_and_says_so(vol, caplog):
    first = write_blockwise(vol, gaussian, "image", "labels/g", depth=gaussian_depth(1.0),
                            dtype=np.float32, sigma=1.0)
    mtime = (vol.path / "labels" / "g" / "zarr.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="porevox"):
        again = write_blockwise(vol, gaussian, "image", "labels/g", depth=gaussian_depth(1.0),
                                dtype=np.float32, sigma=1.0)
    assert again.skipped and not first.skipped and again.record == first.record
    assert "already done" in caplog.text and "nothing to do" in caplog.text
    assert (vol.path / "labels" / "g" / "zarr.json").stat().st_mtime_ns == mtime


def test_changed_params_or_inputs_rerun(vol):
    run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8)
    changed = run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8, step=3)
    assert not changed.skipped
    np.testing.assert_array_equal(vol.array("labels/p")[:], vol.image[:] + 3)
    # a downstream stage reruns when its input was rewritten with other parameters
    down = run_by_block(vol, plus_one, "labels/p", "labels/q", depth=0, dtype=np.uint8)
    run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8, step=4)
    again = run_by_block(vol, plus_one, "labels/p", "labels/q", depth=0, dtype=np.uint8)
    assert not down.skipped and not again.skipped
    np.testing.assert_array_equal(vol.array("labels/q")[:], vol.image[:] + 5)


def test_deleted_output_reruns(vol):
    import shutil

    run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8)
    shutil.rmtree(vol.path / "labels" / "p")
    assert not run_by_block(vol, plus_one, "image", "labels/p", depth=0, dtype=np.uint8).skipped


def failing(block):
    if block.mean() > -1:
        raise RuntimeError("kernel failed")
    return block


def test_failed_stage_not_marked_done(vol):
    with pytest.raises(RuntimeError, match="kernel failed"):
        run_by_block(vol, failing, "image", "labels/f", depth=0, dtype=np.uint8)
    fresh = open_volume(vol.path)
    assert "labels/f" not in fresh.provenance and fresh.labels == []
    assert [p.name for p in (vol.path / "labels").iterdir()] == ["zarr.json"]


KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np
    from porevox.engine import run_by_block

    def slow_copy(block):
        time.sleep(0.4)
        return block

    if __name__ == "__main__":
        run_by_block(sys.argv[1], slow_copy, "image", "labels/slow", depth=0, dtype=np.uint8)
''')


def wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_stage_is_not_done_and_reruns(vol, tmp_path):
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(vol.path)])
    labels = vol.path / "labels"

    def some_chunks_written():
        return any(f.is_file() for f in labels.glob(".tmp-slow-*/0/c/*/*/*"))   # level 0's chunks

    assert wait_for(some_chunks_written), "the stage never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fresh = open_volume(vol.path)
    assert "labels/slow" not in fresh.provenance
    assert fresh.labels == []                          # only a hidden temporary remains
    assert any(p.name.startswith(".tmp-slow-") for p in labels.iterdir())

    # the rerun cleans the leftover and completes
    res = run_by_block(vol, slow_copy, "image", "labels/slow", depth=0, dtype=np.uint8)
    assert not res.skipped
    np.testing.assert_array_equal(vol.array("labels/slow")[:], vol.image[:])
    assert sorted(p.name for p in labels.iterdir()) == ["slow", "zarr.json"]
    assert zarr.open_group(str(labels), mode="r").attrs["ome"]["labels"] == ["slow"]


def slow_copy(block):
    return block


INGEST_KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    from porevox.engine import ingest
    from porevox.engine.sources import Source

    read = Source.read
    def slow_read(self, *a, **k):
        time.sleep(0.4)
        return read(self, *a, **k)
    Source.read = slow_read

    if __name__ == "__main__":
        ingest(sys.argv[1], sys.argv[2], (1, 1, 1), chunks=(2, 20, 20))
''')


def test_killed_ingest_leaves_no_volume(tmp_path, rng):
    data = rng.integers(0, 255, (30, 20, 20), dtype=np.uint8)
    np.save(tmp_path / "s.npy", data)
    (tmp_path / "ingest_me.py").write_text(INGEST_KILL_SCRIPT)
    out = tmp_path / "o.zarr"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "ingest_me.py"),
                             str(tmp_path / "s.npy"), str(out)])
    assert wait_for(lambda: any(p.name.startswith(".o.zarr.tmp-") for p in tmp_path.iterdir()))
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    from porevox import ingest

    vol, did = ingest(tmp_path / "s.npy", out, (1, 1, 1), chunks=(2, 20, 20))
    assert did
    np.testing.assert_array_equal(vol.image[:], data)
    assert not any(p.name.startswith(".o.zarr") for p in tmp_path.iterdir())


def test_finite_makes_strict_json():
    import json
    import math

    finite = provenance.finite
    value = {"a": [1.0, math.nan, np.float64(np.inf), np.int64(3)], "b": (np.float32(2.5), "x"),
             "c": np.array(-math.inf)}
    assert finite(value) == {"a": [1.0, None, None, 3], "b": [2.5, "x"], "c": None}
    json.dumps(finite(value), allow_nan=False)


PUBLISH_KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from porevox.engine import provenance
    from porevox.pipelines.segment import segment_volume

    def killed(*args, **kwargs):       # the process dies right after the publish
        os.kill(os.getpid(), signal.SIGKILL)
    provenance.write_record = killed

    if __name__ == "__main__":
        segment_volume(sys.argv[1], "otsu")
''')


def test_killed_between_publish_and_record_reruns(vol, tmp_path):
    """A segmentation killed after its labels were published but before its stage was
    recorded: the labels are porevox's own (a pending claim), not done, so the rerun
    replaces them instead of refusing them as someone else's."""
    from skimage.filters import threshold_otsu

    from porevox.pipelines.segment import segment_volume

    script = tmp_path / "kill_at_record.py"
    script.write_text(PUBLISH_KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(vol.path)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    fresh = open_volume(vol.path)
    assert fresh.labels == ["otsu"] and fresh.provenance["segment:otsu"]["pending"] is True
    assert provenance.writers(fresh, "labels/otsu") == ["segment:otsu"]
    segment_volume(vol.path, "otsu")
    record = open_volume(vol.path).provenance["segment:otsu"]
    assert "pending" not in record and record["fingerprint"]
    again = open_volume(vol.path)
    np.testing.assert_array_equal(again.array("labels/otsu")[:], vol.image[:] > threshold_otsu(vol.image[:]))
