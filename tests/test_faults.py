"""Fault injection: bad or hostile input to every command, as a new user would give it.

Each case runs the real ``porevox`` in a process of its own and asserts that it ends
with exit status 2, one line on stderr that names the problem, nothing on stdout, and
every file that was there before it unchanged (checksums before and after). Then
``kill -9`` at seeded random moments of ingest, segment and quantify, and a rerun
that must end with the outputs of an uninterrupted run, byte for byte.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from porevox.engine import provenance
from porevox.engine.storage import LABELS, create_volume, dense_array

PV = [str(Path(sys.executable).parent / "porevox")]
CLUSTER = ["--workers", "1", "--threads-per-worker", "1", "--memory-limit", "1GB"]
SHAPE, CHUNKS = (16, 40, 48), (8, 24, 32)
DATA = Path(__file__).parent / "data" / "demo_twin_features.csv"


def porevox(*args, cwd=None, timeout=300):
    env = {**os.environ, "POREVOX_LOG": str(Path(cwd or ".") / ".." / "porevox.log")}
    return subprocess.run([*PV, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def porevox_here(args, capfd, monkeypatch, log: Path) -> subprocess.CompletedProcess:
    """`porevox.cli.main`, the console script's entry point, in this process (for a
    case that fails before any cluster starts: no interpreter start-up and imports
    per case); its stdout and stderr are read at the file descriptors. The logging
    and Dask configuration it sets are put back after it."""
    import copy
    import logging

    import dask

    from porevox import cli

    names = ("", "porevox", "porevox.traceback", "distributed")
    saved = {n: (lg.level, lg.handlers[:], lg.propagate) for n in names for lg in [logging.getLogger(n)]}
    config = copy.deepcopy(dask.config.config)
    monkeypatch.setenv("POREVOX_LOG", str(log))
    monkeypatch.setattr(sys, "argv", ["porevox", *map(str, args)])
    capfd.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        for n, (level, handlers, propagate) in saved.items():
            logger = logging.getLogger(n)
            for h in logger.handlers:
                if h not in handlers:
                    h.close()
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        dask.config.config.clear()
        dask.config.config.update(config)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def checksums(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its SHA-256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_volume(path: Path, rng, *, truth_by="synth") -> None:
    """A porevox volume: a uint8 image of a porous structure, its truth (0/1) and truth
    annotation (0/1/2) as synth records them, a hybrid segmentation and annotation as
    segment records them, and a float label image."""
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
    solid = field > np.quantile(field, 0.4)
    image = np.clip(60 + 120 * solid + rng.normal(0, 15, SHAPE), 0, 255).astype(np.uint8)
    vol = create_volume(path, SHAPE, "uint8", (0.05, 0.04, 0.04), chunks=CHUNKS,
                        sample={"paste": "HPA", "temperature_c": 175})
    vol.image[:] = image
    annotation = np.where(solid, 0, 1).astype(np.uint8)
    annotation[:, :4] = np.where(solid[:, :4], 0, 2)
    arrays = {"truth": solid.astype(np.uint8), "truth_annotation": annotation,
              "hybrid": solid.astype(np.uint8), "hybrid_annotation": annotation}
    for name, data in arrays.items():
        dense_array(vol.group, f"{LABELS}/{name}", shape=SHAPE, dtype="uint8", chunks=CHUNKS)[:] = data
    dense_array(vol.group, f"{LABELS}/fuzzy", shape=SHAPE, dtype="float32", chunks=CHUNKS)[:] = solid
    started = time.time()
    provenance.write_record(vol, truth_by, {}, {}, [f"{LABELS}/truth", f"{LABELS}/truth_annotation"],
                            started)
    for name in ("hybrid", "hybrid_annotation"):
        provenance.write_record(vol, f"segment:{name}", {}, {}, [f"{LABELS}/{name}"], started)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + f"\nsamples: [*{chr(ord('a') + levels - 1)}]\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's folder: volumes, a study with its own notes, stacks, tables, models and
    hostile files; built once, checked before and after every case."""
    root = tmp_path_factory.mktemp("faults") / "user"
    root.mkdir()
    rng = np.random.default_rng(20)
    make_volume(root / "v.zarr", rng)
    shutil.copytree(root / "v.zarr", root / "corrupt.zarr")
    (root / "corrupt.zarr" / "image" / "c" / "1" / "0" / "1").write_bytes(b"not zstd at all")
    shutil.copytree(root / "v.zarr", root / "missing.zarr")
    (root / "missing.zarr" / "labels" / "truth" / "c" / "0" / "1" / "0").unlink()
    shutil.copytree(root / "v.zarr", root / "brokenmeta.zarr")
    (root / "brokenmeta.zarr" / "zarr.json").write_text("{not json")
    shutil.copytree(root / "v.zarr", root / "brokenarray.zarr")
    (root / "brokenarray.zarr" / "image" / "zarr.json").write_text("{not json")
    shutil.copytree(root / "v.zarr", root / "badvoxel.zarr")
    meta = json.loads((root / "badvoxel.zarr" / "zarr.json").read_text())
    meta["attributes"]["porevox"]["voxel_size"] = ["0.05 um", 0.04, 0.04]
    (root / "badvoxel.zarr" / "zarr.json").write_text(json.dumps(meta))
    # stacks
    stack = rng.integers(0, 255, (8, 20, 24), dtype=np.uint8)
    np.save(root / "stack.npy", stack)
    (root / "d").mkdir()
    np.save(root / "d" / "stack.npy", stack)
    floats = rng.random((8, 20, 24), dtype=np.float32)
    floats[3, 4, 5] = np.nan
    floats[6, 10, 11] = np.nan
    np.save(root / "nan.npy", floats)
    floats = rng.random((8, 20, 24), dtype=np.float32)
    floats[1, 2, 3] = np.inf
    np.save(root / "inf.npy", floats)
    (root / "notes").mkdir()
    (root / "notes" / "results.txt").write_text("my notes, by hand\n")
    (root / "a-file.zarr").write_text("not a folder\n")
    (root / "model.pt").write_bytes(b"my own model, not porevox's")
    # tables
    shutil.copy(DATA, root / "features.csv")
    (root / "empty.csv").write_bytes(b"")
    (root / "ragged.csv").write_text("id,relative_density,conductivity\nA,0.5,10\nB,0.6,20,7,8\n")
    # a study with the user's own files beside it
    study = root / "study"
    study.mkdir()
    shutil.copytree(root / "v.zarr", study / "s1.zarr")
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "mine", "samples": [
        {"id": "s1", "path": "s1.zarr", "paste": "HPA", "temperature_c": 175}]}))
    for name in ("report.html", "features.csv", "table1.md"):
        (study / name).write_text(f"the user's own {name}\n")
    # hostile and malformed study files
    (root / "bomb.yaml").write_text(billion_laughs())
    (root / "deep.yaml").write_text("samples: " + "[" * 200 + "]" * 200 + "\n")
    (root / "recursive.yaml").write_text("samples: &s [*s]\n")
    (root / "huge.yaml").write_text("# padding\n" * 500_000)
    (root / "tag.yaml").write_text("samples: !!python/object/apply:os.system ['echo pwned']\n")
    (root / "latin1.yaml").write_bytes("name: Kupfer gesintert bei 175 \xb0C\n".encode("latin-1"))
    (root / "syntax.yaml").write_text("samples:\n  - id: a\n    path: [unclosed\n")
    (root / "unknown.yaml").write_text("samples:\n  - id: s1\n    path: study/s1.zarr\n    colour: red\n")
    # generator model folders: a corrupt checkpoint, a foreign one, a corrupt model.json
    import torch

    meta = {"kind": "ddpm", "classes": [{"paste": "HPA", "temperature_c": 175}], "pixel_size": [1, 1],
            "value_scale": 1.0}
    for name in ("gen-corrupt", "gen-foreign", "gen-badjson"):
        (root / name).mkdir()
        (root / name / "model.json").write_text(json.dumps(meta))
    (root / "gen-corrupt" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"weights": torch.zeros(3)}, root / "gen-foreign" / "checkpoint.pt")
    torch.save({"weights": torch.zeros(3)}, root / "gen-badjson" / "checkpoint.pt")
    (root / "gen-badjson" / "model.json").write_text("{oops")
    (root / "unet-bad.pt").write_bytes(b"\x80\x04 not a torch archive")
    return root


REGRESS_TO = ["regress", "{w}/features.csv", "--labels", "truth", "--drop-nan", "--out"]
# (id, arguments with {w} for the user's folder, what the one line must say)
CASES = [
    # 1. user data: porevox replaces only what it wrote itself; an input is never an output
    ("ingest-into-folder-holding-input", ["ingest", "{w}/d/stack.npy", "{w}/d", "--voxel-size", "1", "1", "1",
                                          "--overwrite"], r"holds, the input .*stack\.npy"),
    ("ingest-over-user-folder", ["ingest", "{w}/stack.npy", "{w}/notes", "--voxel-size", "1", "1", "1",
                                 "--overwrite"], r"notes exists and is not porevox's own output"),
    ("ingest-over-user-file", ["ingest", "{w}/stack.npy", "{w}/a-file.zarr", "--voxel-size", "1", "1", "1",
                               "--overwrite"], r"a-file\.zarr exists and is not porevox's own"),
    ("ingest-volume-into-itself", ["ingest", "{w}/v.zarr/image", "{w}/v.zarr", "--voxel-size", "1", "1",
                                   "1", "--overwrite"], r"is, or holds, the input"),
    ("ingest-over-volume-without-overwrite", ["ingest", "{w}/stack.npy", "{w}/v.zarr", "--voxel-size", "1",
                                              "1", "1"], r"already exists .* --overwrite"),
    ("regress-out-user-folder", [*REGRESS_TO, "{w}/notes"],
     r"notes exists and is not porevox's own output"),
    ("regress-out-user-file", ["regress", "{w}/features.csv", "--labels", "truth", "--drop-nan", "--out",
                               "{w}/model.pt"], r"model\.pt exists and is not porevox's own"),
    ("regress-out-holds-table", [*REGRESS_TO, "{w}"],
     r"is, or holds, the input .*features\.csv"),
    ("train-over-user-model", ["train-unet", "{w}/v.zarr", "--out", "{w}/model.pt", "--epochs", "1"],
     r"model\.pt exists and is not porevox's own"),
    ("synth-over-user-study", ["synth", "{w}/study"], r"study\.yaml exists and is not porevox's own"),
    ("segment-over-synth-truth", ["segment", "{w}/v.zarr", "--method", "otsu", "--name", "truth"],
     r"labels/truth exists and was written by synth, not by segment"),
    ("segment-bad-name", ["segment", "{w}/v.zarr", "--method", "otsu", "--name", "../image"],
     r"--name must be letters"),
    ("run-over-user-tables", ["run", "{w}/study"], r"features\.csv exists and is not porevox's own"),
    ("quantify-study-over-user-table", ["quantify", "{w}/study", "--labels", "truth"],
     r"features\.csv exists and is not porevox's own"),
    ("segment-study-over-user-table", ["segment-study", "{w}/study"],
     r"table1\.md exists and is not porevox's own"),
    # 2. hostile study files fail fast, in bounded memory, through the one loader
    ("run-billion-laughs", ["run", "{w}/bomb.yaml"], r"bomb\.yaml:\d+: yaml: its aliases expand"),
    ("quantify-billion-laughs", ["quantify", "{w}/bomb.yaml"], r"bomb\.yaml:\d+: yaml: its aliases expand"),
    ("segment-study-billion-laughs", ["segment-study", "{w}/bomb.yaml"], r"yaml: its aliases expand"),
    ("run-deep-nesting", ["run", "{w}/deep.yaml"], r"deep\.yaml:1: yaml: nested deeper than 32"),
    ("run-recursive-alias", ["run", "{w}/recursive.yaml"], r"recursive\.yaml:1: yaml: a recursive alias"),
    ("run-huge-file", ["run", "{w}/huge.yaml"], r"huge\.yaml:1: study: the file is 4\.8 MiB"),
    ("quantify-python-tag", ["quantify", "{w}/tag.yaml"], r"tag\.yaml:1: .*python/object.* not allowed"),
    ("run-not-utf8", ["run", "{w}/latin1.yaml"], r"latin1\.yaml:1: study: not UTF-8"),
    ("segment-study-syntax", ["segment-study", "{w}/syntax.yaml"], r"syntax\.yaml:\d+: yaml: .*fix the YAML"),
    ("quantify-unknown-field", ["quantify", "{w}/unknown.yaml"], r"unknown\.yaml:4: samples\[0\]\.colour"),
    # 3. labels mean what they say; NaN is found at ingest
    ("quantify-annotation", ["quantify", "{w}/v.zarr", "--labels", "hybrid_annotation"],
     r"labels/hybrid_annotation holds the values 0, 1, 2, .* use labels/hybrid"),
    ("quantify-float-labels", ["quantify", "{w}/v.zarr", "--labels", "fuzzy"],
     r"labels/fuzzy is float32, not a label image"),
    ("score-annotation", ["score", "{w}/v.zarr", "--labels", "hybrid_annotation"],
     r"labels/hybrid_annotation holds the values 0, 1, 2.* score would misread"),
    ("score-annotation-truth", ["score", "{w}/v.zarr", "--labels", "hybrid", "--truth", "truth_annotation"],
     r"labels/truth_annotation holds the values 0, 1, 2.* use labels/truth"),
    ("ingest-nan", ["ingest", "{w}/nan.npy", "{w}/nan.zarr", "--voxel-size", "1", "1", "1"],
     r"nan\.npy: 2 voxels are NaN or ±inf .* --allow-nan"),
    ("ingest-inf", ["ingest", "{w}/inf.npy", "{w}/inf.zarr", "--voxel-size", "1", "1", "1", "--chunks",
                    "4", "10", "12"], r"inf\.npy: 1 voxel is NaN or ±inf \(in 1 of 8 chunks"),
    # 4. what cannot be written fails first, in one line; damaged models in one line
    ("ingest-under-a-file", ["ingest", "{w}/stack.npy", "{w}/model.pt/x.zarr", "--voxel-size", "1", "1",
                             "1"], r"model\.pt is a file, not a folder"),
    ("ingest-read-only", ["ingest", "{w}/stack.npy", "/proc/sys/x.zarr", "--voxel-size", "1", "1", "1"],
     r"/proc/sys is not writable"),
    ("train-read-only", ["train-unet", "{w}/v.zarr", "--out", "/proc/sys/m.pt"],
     r"/proc/sys is not writable"),
    ("train-under-a-file", ["train-unet", "{w}/v.zarr", "--out", "{w}/model.pt/m.pt"],
     r"model\.pt is a file, not a folder"),
    ("regress-read-only", [*REGRESS_TO, "/proc/sys/r"],
     r"/proc/sys is not writable"),
    ("sample-corrupt-checkpoint", ["generate", "sample", "{w}/gen-corrupt", "--paste", "HPA",
                                   "--temperature", "175", "-n", "2"],
     r"checkpoint\.pt is not a readable porevox checkpoint"),
    ("sample-foreign-checkpoint", ["generate", "sample", "{w}/gen-foreign", "--paste", "HPA",
                                   "--temperature", "175", "-n", "2"],
     r"checkpoint\.pt is not a porevox generator checkpoint or is damaged"),
    ("sample-corrupt-model-json", ["generate", "sample", "{w}/gen-badjson", "--paste", "HPA",
                                   "--temperature", "175"], r"model\.json cannot be read"),
    ("segment-corrupt-unet", ["segment", "{w}/v.zarr", "--method", "unet", "--model", "{w}/unet-bad.pt"],
     r"refused to load .*unet-bad\.pt"),
    # 5. a worker's failure is one line, without the workers' tracebacks
    ("segment-corrupt-chunk", ["segment", "{w}/corrupt.zarr", "--method", "otsu"],
     r"tomogram corrupt: array image: chunk \(1, 0, 1\) cannot be read"),
    ("quantify-missing-chunk", ["quantify", "{w}/missing.zarr", "--labels", "truth"],
     r"tomogram missing: array labels/truth: chunk \(0, 1, 0\) is missing"),
    ("score-missing-chunk", ["score", "{w}/missing.zarr", "--labels", "hybrid"],
     r"tomogram missing: array labels/truth: chunk \(0, 1, 0\) is missing"),
    # 6. messages that name the file and the fix
    ("regress-empty-csv", ["regress", "{w}/empty.csv"], r"empty\.csv is empty; give the features\.csv"),
    ("regress-ragged-csv", ["regress", "{w}/ragged.csv"], r"ragged\.csv is not a readable feature table"),
    ("info-broken-group-json", ["info", "{w}/brokenmeta.zarr"],
     r"brokenmeta\.zarr is not a Zarr group.*brokenmeta\.zarr/zarr\.json"),
    ("info-broken-array-json", ["info", "{w}/brokenarray.zarr"],
     r"brokenarray\.zarr/image/zarr\.json cannot"),
    ("info-bad-voxel-size", ["info", "{w}/badvoxel.zarr"],
     r"badvoxel\.zarr/zarr\.json: attributes\.porevox is damaged .*voxel_size"),
    ("ingest-missing-voxel-size", ["ingest", "{w}/stack.npy", "{w}/o.zarr"],
     r"porevox ingest needs --voxel-size Z Y X to ingest an image, or --labels NAME --into VOLUME"),
    ("ingest-bad-voxel-size", ["ingest", "{w}/stack.npy", "{w}/o.zarr", "--voxel-size", "1", "1", "a"],
     r"Invalid value for '--voxel-size'"),
    ("unknown-command", ["segmnet", "{w}/v.zarr"], r"No such command 'segmnet'"),
]
# the cases that reach the workers
WORKERS = {"segment-corrupt-chunk", "quantify-missing-chunk", "score-missing-chunk", "quantify-annotation",
           "quantify-float-labels", "score-annotation", "score-annotation-truth", "ingest-nan", "ingest-inf"}


def test_the_suite_covers_every_class():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case,args,message", CASES, ids=[c[0] for c in CASES])
def test_fault_is_one_line_and_touches_nothing(world, case, args, message, capfd, monkeypatch):
    """Cases that reach the workers run as processes of their own (their workers'
    output would reach the terminal); the others fail before any cluster starts."""
    before = checksums(world)
    started = time.time()
    args = ["-q", *[a.format(w=world) for a in args]]
    r = (porevox(*CLUSTER, *args, cwd=world) if case in WORKERS
         else porevox_here(args, capfd, monkeypatch, world.parent / "porevox.log"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("porevox: error: "), r.stderr
    assert re.search(message, lines[0]), lines[0]
    after = checksums(world)
    assert {k: v for k, v in after.items() if k in before} == before, "a user file changed"
    assert set(after) == set(before), f"new files: {sorted(set(after) - set(before))}"
    assert time.time() - started < 120


def test_allow_nan_keeps_and_masks(world, tmp_path):
    """--allow-nan keeps the NaN voxels (stored as they were) and every reader of the
    image sees the median gray value there; segmentation runs on it."""
    out = tmp_path / "nan.zarr"
    r = porevox("-q", *CLUSTER, "ingest", world / "nan.npy", out, "--voxel-size", "1", "1", "1",
                "--allow-nan", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    data = np.load(world / "nan.npy")
    assert summary["missing"]["count"] == 2 and summary["provenance"]["ingest"]["nonfinite"] == 2
    assert abs(summary["missing"]["fill"] - np.nanmedian(data)) < 2e-3
    from porevox import open_volume

    vol = open_volume(out, mode="r")
    np.testing.assert_array_equal(np.isnan(vol.image[:]), np.isnan(data))   # kept as they were
    seen = vol.to_dask().compute()
    assert np.isfinite(seen).all() and seen[3, 4, 5] == np.float32(summary["missing"]["fill"])
    s = porevox("-q", *CLUSTER, "segment", out, "--method", "otsu", "--json", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert np.isfinite(json.loads(s.stdout)["thresholds"]["otsu"])


def test_hostile_yaml_stays_small_and_fast(world):
    """A 9-level alias bomb (10⁸ values expanded) is refused in bounded time and memory:
    its peak memory above the interpreter's with porevox imported."""
    code = ("import resource, time, sys; from porevox.pipelines.studyfile import load_study\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t = time.time()\n"
            "try: load_study(sys.argv[1])\n"
            "except Exception as e: print(type(e).__name__, time.time() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak)\n")
    r = subprocess.run([sys.executable, "-c", code, str(world / "bomb.yaml")], capture_output=True,
                       text=True, timeout=120)
    name, seconds, kib = r.stdout.split()
    assert name == "StudyFileError" and float(seconds) < 5 and int(kib) < 50_000, r.stdout + r.stderr


def test_design_flags_what_is_not_a_result():
    from porevox.pipelines.generation_study import shown, validity

    x = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 5.0]])
    y = np.array([10.0, 20.0, 30.0])
    assert validity(20.0, [2.0, 3.0], x, y, ["D", "SP2D"]) is None
    assert "outside physics" in validity(-133.0, [2.0, 3.0], x, y, ["D", "SP2D"])
    assert validity(20.0, [4.0, 3.0], x, y, ["D", "SP2D"]).startswith("extrapolated: D 4 outside 1–3")
    assert "outside the fitted 10–30" in validity(45.0, [2.0, 3.0], x, y, ["D", "SP2D"])
    row = {"predicted": -133.0, "flag": validity(-133.0, [2.0, 3.0], x, y, ["D", "SP2D"])}
    assert shown(row).startswith("not a result (σ < 0") and "-133" not in shown(row).split("(")[0]
    assert shown({"predicted": 20.04, "flag": None}) == "20.0"


# --------------------------------------------------------------------------- kill -9
KILLS = {
    "ingest": lambda w, d: ["ingest", w / "stack.npy", d / "k.zarr", "--voxel-size", "1", "1", "1",
                            "--chunks", "2", "10", "12"],
    "segment": lambda w, d: ["segment", d / "v.zarr", "--method", "hybrid"],
    "quantify": lambda w, d: ["quantify", d / "v.zarr", "--labels", "truth", "--json"],
}


def stored(folder: Path) -> dict[str, bytes]:
    """The outputs to compare: every array's chunks and metadata, and the features
    each volume records (not the times it records)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and "/." not in f"/{rel}" and "/c/" in rel:
            out[rel] = path.read_bytes()
    for vol in folder.glob("*.zarr"):
        meta = json.loads((vol / "zarr.json").read_text())["attributes"]["porevox"]
        features = {labels: {k: v for k, v in f.items() if k != "seconds"}
                    for labels, f in (meta.get("features") or {}).items()}
        out[f"{vol.name}/features"] = json.dumps(features, sort_keys=True).encode()
        out[f"{vol.name}/stages"] = json.dumps(sorted(meta["provenance"])).encode()
    return out


@pytest.mark.parametrize("command", list(KILLS))
def test_kill_9_then_rerun_is_byte_identical(world, tmp_path, command):
    rng = np.random.default_rng(list(KILLS).index(command))
    folders = {}
    for name in ("clean", "killed"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        shutil.copytree(world / "v.zarr", folders[name] / "v.zarr")
    t0 = time.time()
    r = porevox(*CLUSTER, *KILLS[command](world, folders["clean"]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    clean_seconds = time.time() - t0
    args = [*PV, *CLUSTER, *map(str, KILLS[command](world, folders["killed"]))]
    for attempt in range(3):   # a kill that came after the end proves nothing: try earlier
        proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 0.9) * clean_seconds / (attempt + 1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        shutil.rmtree(folders["killed"])
        folders["killed"].mkdir()
        shutil.copytree(world / "v.zarr", folders["killed"] / "v.zarr")
    else:
        pytest.fail(f"porevox {command} always ended before it could be killed")
    again = porevox(*CLUSTER, *KILLS[command](world, folders["killed"]), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    left = [p for p in folders["killed"].rglob("*") if p.name.endswith(".partial")
            or p.name.startswith(".") and p.name != ".porevox-output"]
    assert not left, f"the rerun left what the killed run wrote under temporary names: {left}"
    got, want = stored(folders["killed"]), stored(folders["clean"])
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want), sorted(
        k for k in set(got) | set(want) if got.get(k) != want.get(k))
