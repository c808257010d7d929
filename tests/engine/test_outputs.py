"""Which outputs porevox may replace: only those it can prove it wrote."""

import numpy as np
import pytest

from porevox.engine.outputs import MARKER, check_output, claim, listed, own, record
from porevox.engine.storage import building, create_volume
from porevox.errors import OutputError


def test_a_volume_and_what_is_inside_it_are_its_own(tmp_path):
    create_volume(tmp_path / "v.zarr", (2, 3, 4), "uint8", (1, 1, 1))
    assert own(tmp_path / "v.zarr") and own(tmp_path / "v.zarr" / "image")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text('{"attributes": {}}')   # a Zarr group, not porevox's
    assert not own(tmp_path / "plain") and not own(tmp_path / "missing")


def test_recorded_names_and_what_lies_under_them_are_its_own(tmp_path):
    (tmp_path / "report.html").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "run" / "done").mkdir(parents=True)
    record(tmp_path, ["report.html", "run"])
    assert listed(tmp_path) == {"report.html", "run"}
    assert own(tmp_path / "report.html") and own(tmp_path / "run" / "done")
    assert not own(tmp_path / "notes.txt")
    record(tmp_path, ["table1.md"])                  # names add up
    assert listed(tmp_path) == {"report.html", "run", "table1.md"}


def test_a_folder_is_its_own_only_while_it_holds_nothing_else(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "table2.md").write_text("t")
    record(out, ["table2.md"])
    assert own(out)
    (out / "notes.txt").write_text("the user's")
    assert not own(out)
    with pytest.raises(OutputError, match="r exists and is not porevox's own output"):
        check_output(out)


def test_check_output_refuses_inputs_and_what_is_not_its_own(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stack.npy").write_bytes(b"x")
    with pytest.raises(OutputError, match="is, or holds, the input"):
        check_output(tmp_path / "d", inputs=[tmp_path / "d" / "stack.npy"])
    with pytest.raises(OutputError, match="is, or holds, the input"):   # a TIFF folder's output in it
        check_output(tmp_path / "d" / "out.zarr", inputs=[tmp_path / "d"])
    with pytest.raises(OutputError, match="stack.npy exists and is not porevox's own"):
        check_output(tmp_path / "d" / "stack.npy")
    with pytest.raises(OutputError, match="stack.npy is a file, not a folder"):
        check_output(tmp_path / "d" / "stack.npy" / "out.zarr")
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty") == tmp_path / "empty"   # nothing in it to lose
    assert check_output(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_claim_records_nothing_when_one_name_is_refused(tmp_path):
    (tmp_path / "features.csv").write_text("the user's")
    with pytest.raises(OutputError, match="features.csv exists"):
        claim(tmp_path, ["report.html", "features.csv"])
    assert not (tmp_path / MARKER).exists()
    claim(tmp_path, ["report.html"])
    assert listed(tmp_path) == {"report.html"}


def test_building_never_replaces_what_is_not_a_volume(tmp_path):
    (tmp_path / "v.zarr").mkdir()
    (tmp_path / "v.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not a porevox volume"):
        with building(tmp_path / "v.zarr"):
            pass
    assert (tmp_path / "v.zarr" / "notes.txt").read_text() == "mine"
    create_volume(tmp_path / "w.zarr", (2, 3, 4), "uint8", (1, 1, 1))
    with building(tmp_path / "w.zarr") as tmp:
        vol = create_volume(tmp, (1, 1, 1), "uint8", (1, 1, 1))
        vol.image[:] = np.ones((1, 1, 1), np.uint8)
    assert (tmp_path / "w.zarr" / "image").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr", "w.zarr"]


def test_a_killed_writer_s_half_written_files_are_removed(tmp_path):
    from porevox.engine.storage import remove_partial_writes

    vol = create_volume(tmp_path / "v.zarr", (2, 3, 4), "uint8", (1, 1, 1))
    vol.image[:] = np.ones((2, 3, 4), np.uint8)
    left = [tmp_path / "v.zarr" / "zarr.0123456789abcdef0123456789abcdef.partial",
            tmp_path / "v.zarr" / "image" / "c" / "0" / "0" / "0.fedcba9876543210fedcba9876543210.partial"]
    for path in left:
        path.write_bytes(b"half")
    scratch = tmp_path / "v.zarr" / ".porevox-tortuosity-0123456789ab"     # a killed block solve's
    scratch.mkdir()
    (scratch / "b-0-0-0.npy").write_bytes(b"blocks")
    kept = sorted(p for p in (tmp_path / "v.zarr").rglob("*") if p.is_file() and p not in left
                  and scratch not in p.parents)
    assert sorted(remove_partial_writes(tmp_path / "v.zarr")) == sorted(
        [str(p.relative_to(tmp_path / "v.zarr")) for p in left] + [scratch.name])
    assert not scratch.exists()
    assert sorted(p for p in (tmp_path / "v.zarr").rglob("*") if p.is_file()) == kept
