"""`porevox run` as a user runs it: a real process on a real LocalCluster over a small
twin study — every stage, the report, a rerun that redoes nothing, a run killed
midway and resumed with byte-identical outputs, a worker killed mid-stage, a
corrupt and a missing chunk, and a malformed study file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from skimage.filters import threshold_otsu

from porevox.engine import open_volume
from porevox.engine.storage import LABELS, dense_array

PV = [str(Path(sys.executable).parent / "porevox")]
# 2 GB: room for the U-Net CTA to train on a worker (engine.cluster.TRAINING_MEMORY)
CLUSTER = ["--workers", "2", "--threads-per-worker", "1", "--memory-limit", "2GB"]
SHAPE, CHUNKS = (16, 48, 48), (8, 32, 40)      # odd chunks: partial blocks on y and x
SAMPLES = (("HPA", 175, False), ("NPC", 400, False), ("HPA", 400, True))
STAGES = {"unet": {"epochs": 1, "every": 4}, "regress": False}


def make_study(folder: Path, stages=STAGES) -> Path:
    """Three 16 × 48 × 48 twin samples with truth (the last held out) and a study.yaml."""
    from porevox.engine.storage import create_volume
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    folder.mkdir(parents=True, exist_ok=True)
    model, rows = FibSemModel(), []
    for k, (paste, t, held) in enumerate(SAMPLES):
        ms, threshold = prepare(SampleSpec(paste, t, 0, "demo", 0), model, shape=SHAPE)
        truth, _, image = render_box(ms, model, k, tuple(slice(0, n) for n in SHAPE), threshold, "uint8")
        sid = f"{paste}-{t}C"
        vol = create_volume(folder / f"{sid}.zarr", SHAPE, "uint8", ms.voxel_size, chunks=CHUNKS)
        vol.image[:] = image
        dense_array(vol.group, f"{LABELS}/truth", shape=SHAPE, dtype="uint8", chunks=CHUNKS)[:] = truth
        rows.append({"id": sid, "path": f"{sid}.zarr", "paste": paste, "temperature_c": t, "voi": 0,
                     "held_out": held, "conductivity": 10.0 + 40 * k})
    (folder / "study.yaml").write_text(yaml.safe_dump({"name": "tiny twin", "samples": rows,
                                                       "stages": stages}, sort_keys=False))
    return folder


def porevox(*args, **kw):
    """The CLI in a process of its own; one that hangs fails with what it printed."""
    try:
        return subprocess.run([*PV, *map(str, args)], capture_output=True, text=True, timeout=400, **kw)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-6000:]
        pytest.fail(f"porevox {' '.join(map(str, args))} ran past {err.timeout} s; its stderr ended:\n"
                    f"{tail.decode(errors='replace') if isinstance(tail, bytes) else tail}")


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output a run writes, by path: the chunks and array metadata of each
    volume's labels and features, the tables, and the models' networks and weights.
    (Group attributes and the models' metadata are left out: they record when each
    stage ran, how long it took and where its inputs were.)"""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or "/." in f"/{rel}" or rel.startswith("run/"):
            continue
        in_array = any(f".zarr/{part}/" in rel for part in ("labels", "features", "preprocessed"))
        if (in_array and not rel.endswith(".zarr/labels/zarr.json")) or path.suffix == ".csv":
            files[rel] = path.read_bytes()
        elif path.suffix == ".pt":    # the weights and the network; its metadata holds times and paths
            import torch

            blob = torch.load(path, map_location="cpu", weights_only=True)
            files[rel] = blob["config"].encode() + b"".join(
                t.numpy().tobytes() for t in blob["state_dict"].values())
    return files


def values(folder: Path) -> dict[str, bytes]:
    """Like :func:`outputs`, but each array by its values rather than its chunk files."""
    import zarr

    files = {k: v for k, v in outputs(folder).items() if ".zarr/" not in k}
    for vol in sorted(folder.glob("*.zarr")):
        group = zarr.open_group(str(vol), mode="r")
        for name, arr in group.arrays():
            files[f"{vol.name}/{name}"] = arr[...].tobytes()
        for sub in ("labels", "features"):
            for name, arr in (group[sub].arrays() if sub in group else ()):
                files[f"{vol.name}/{sub}/{name}"] = arr[...].tobytes()
            for name, g in (group[sub].groups() if sub in group else ()):
                for key, arr in g.arrays():
                    files[f"{vol.name}/{sub}/{name}/{key}"] = arr[...].tobytes()
    return files


def same_outputs(got: dict, want: dict, folder: Path, reference: Path) -> None:
    """Assert that a run's outputs equal the reference run's; where they do not, the
    message names them and, for a network that differs, what its training recorded
    differently (its inputs' gray-value span, losses, thread count)."""
    differ = sorted(set(got) ^ set(want)) + [k for k in want if k in got and got[k] != want[k]]
    notes = []
    for name in sorted({Path(k).stem for k in differ if k.endswith(".pt")}):
        a, b = (json.loads((f / "models" / f"{name}.json").read_text())["metadata"]
                for f in (folder, reference))
        seen = {key: (a["history"].get(key), b["history"].get(key))
                for key in ("threads", "train_loss", "val_loss")}
        seen["input spans"] = tuple([(v["lo"], v["hi"]) for v in m["volumes"]] for m in (a, b))
        notes += [f"{name} {key}: {here} here, {there} in the reference"
                  for key, (here, there) in seen.items() if here != there] or [
            f"{name}: the same inputs, losses and thread count, other weights"]
    assert not differ, f"outputs differ from the reference run: {differ}\n" + "\n".join(notes)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The reference: one uninterrupted `porevox run` of the tiny study."""
    folder = make_study(tmp_path_factory.mktemp("run") / "study")
    pristine = tmp_path_factory.mktemp("pristine") / "study"
    shutil.copytree(folder, pristine)
    r = porevox(*CLUSTER, "run", folder / "study.yaml", "--json")
    assert r.returncode == 0, r.stderr
    return folder, json.loads(r.stdout), pristine


def test_run_makes_every_stage(clean_run):
    folder, record, _ = clean_run
    stages = {s["step"] for s in record["steps"]}
    assert stages == {"preprocess", "segment-otsu", "segment-hybrid", "train-unet-hybrid", "train-unet-cta",
                      "segment-unet", "segment-unet_cta", "score", "table1", "quantify-unet",
                      "quantify-truth", "features"}
    assert record["ran"] == len(record["steps"]) == 3 * 8 + 4 and record["skipped"] == 0
    # steps of different tomograms overlapped in time (they share the cluster)
    assert record["parallel"] == 4
    for sid in ("HPA-175C", "NPC-400C", "HPA-400C"):
        vol = open_volume(folder / f"{sid}.zarr", mode="r")
        assert {"otsu", "hybrid", "hybrid_annotation", "unet", "unet_cta", "truth"} <= set(vol.labels)
        image = vol.array("preprocessed")[:]       # Otsu against the plain library call
        np.testing.assert_array_equal(vol.array("labels/otsu")[:], image > threshold_otsu(image))
        feats = vol.meta["features"]
        truth = vol.array("labels/truth")[:]
        assert feats["truth"]["relative_density"] == pytest.approx(truth.mean(), abs=1e-12)
    table1 = json.loads((folder / "table1.json").read_text())
    assert [s["id"] for s in table1["samples"]] == ["HPA-175C", "NPC-400C", "HPA-400C"]
    assert set(table1["table"]) == {"CTA", "Hybrid", "U-Net CTA", "U-Net Hybrid"}
    import pandas as pd

    table = pd.read_csv(folder / "features.csv")
    assert sorted(zip(table["id"], table["labels"])) == sorted(
        (s, lab) for s in ("HPA-175C", "NPC-400C", "HPA-400C") for lab in ("unet", "truth"))
    run_json = json.loads((folder / "run" / "run.json").read_text())
    assert run_json["steps"] == record["steps"]
    assert run_json["cluster"]["workers"] == 2 and run_json["versions"]["dask"]
    [perf] = record["performance_reports"]
    assert (folder / perf).read_text().lower().count("<html") >= 1   # Dask's performance report
    report = Path(record["report"])
    assert report == folder / "report.html" and perf in report.read_text()
    # the dashboard and the cluster were on the loopback interface only
    assert record["cluster"]["scheduler"].startswith("tcp://127.0.0.1:")
    assert record["cluster"]["dashboard"].startswith("http://127.0.0.1:")


def test_rerun_redoes_nothing(clean_run):
    folder, _, _ = clean_run
    before = outputs(folder)
    r = porevox(*CLUSTER, "run", folder, "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["ran"] == 0 and record["skipped"] == len(record["steps"])
    assert outputs(folder) == before
    assert len(record["performance_reports"]) == 2        # one per run


def test_report_renders_in_chromium(clean_run, tmp_path):
    from tests.pipelines.chromium import CHROMIUM, render

    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    folder, record, _ = clean_run
    shot = tmp_path / "report.png"
    seen = render(folder / "report.html", shot)
    assert seen["images"] >= 8 and seen["loaded"] == seen["images"] and not seen["broken"]
    assert not seen["requests"]                          # self-contained: nothing fetched
    assert shot.stat().st_size > 10_000


def test_killed_run_resumes_with_identical_outputs(clean_run, tmp_path):
    """Kill the whole `porevox run` process group midway (after some steps finished,
    while others run), run again: it finishes without redoing finished steps and
    every output is byte for byte that of the uninterrupted run."""
    reference, record, pristine = clean_run
    folder = tmp_path / "study"
    shutil.copytree(pristine, folder)
    total = len(record["steps"])
    proc = subprocess.Popen([*PV, *CLUSTER, "run", str(folder / "study.yaml")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = folder / "run" / "done"
    kill_after = int(np.random.default_rng(22).integers(8, 13))    # a seeded random point: 11
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if done.is_dir() and len(list(done.glob("*.json"))) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(done.glob("*.json")))
    assert kill_after <= finished < total
    r = porevox(*CLUSTER, "run", folder, "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["skipped"] >= finished and again["ran"] == total - again["skipped"] > 0
    same_outputs(outputs(folder), outputs(reference), folder, reference)


def test_worker_killed_mid_stage_changes_nothing(clean_run, tmp_path):
    """`porevox run` on a named scheduler, one of whose workers is killed while the
    run's steps are running: its tasks are retried elsewhere, the run succeeds, and
    every output holds the clean run's values."""
    import psutil

    from porevox.engine.cluster import cluster

    reference, _, pristine = clean_run
    folder = tmp_path / "study"
    shutil.copytree(pristine, folder)
    done = folder / "run" / "done"
    environ = dict(os.environ)   # the restarting nanny writes the workers' limits into ours
    with cluster(n_workers=2, threads_per_worker=1, memory_limit="2GB",
                 dashboard_address="127.0.0.1:0") as client:
        pids = client.run(os.getpid)
        log = (tmp_path / "stderr.txt").open("w")    # a file: nothing read while it runs
        proc = subprocess.Popen([*PV, "--scheduler", client.scheduler.address, "run",
                                 str(folder / "study.yaml"), "--json"],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.time() + 300
        while (proc.poll() is None and time.time() < deadline
               and not (done.is_dir() and any(done.glob("segment-hybrid--*.json")))):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before a worker could be killed"
        killed = sorted(pids.values())[0]
        psutil.Process(killed).kill()
        try:
            stdout = proc.communicate(timeout=400)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        stderr = (tmp_path / "stderr.txt").read_text()[-6000:]
        assert proc.returncode == 0, f"the run failed or ran past 400 s; its stderr ended:\n{stderr}"
        client.wait_for_workers(2, timeout=60)                 # the nanny restarted it
        now = client.run(os.getpid).values()
        assert len(now) == 2 and killed not in now
    os.environ.clear()
    os.environ.update(environ)
    record = json.loads(stdout)
    assert record["ran"] == len(record["steps"])
    # the same values; not always the same chunk files, as a stage sizes its blocks
    # for the threads of the cluster as it finds it (one worker short, here)
    same_outputs(values(folder), values(reference), folder, reference)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_chunk_names_tomogram_array_and_chunk(clean_run, tmp_path, damage):
    _, _, pristine = clean_run
    folder = tmp_path / "study"
    shutil.copytree(pristine, folder)
    doc = yaml.safe_load((folder / "study.yaml").read_text())
    doc["stages"].update(unet=False, quantify={"labels": ["truth"]})
    (folder / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    chunk = folder / "NPC-400C.zarr" / "image" / "c" / "1" / "0" / "1"
    assert chunk.is_file()
    if damage == "corrupt":
        chunk.write_bytes(b"not a zstd frame")
    else:
        chunk.unlink()
    r = porevox(*CLUSTER, "run", folder)
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()[-1:]
    assert "tomogram NPC-400C: array image: chunk (1, 0, 1)" in line
    assert ("cannot be read" if damage == "corrupt" else "is missing") in line
    assert "restore" in line
    # nothing of the damaged tomogram was marked done, nor published
    done = folder / "run" / "done"
    assert not list(done.glob("*--NPC-400C.json"))
    assert "preprocessed" not in [p.name for p in (folder / "NPC-400C.zarr").iterdir()]


def test_malformed_study_file_exit_2(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "study.yaml").write_text(
        "name: broken\nsamples:\n  - id: a\n    path: a.zarr\n    voxel_size: [0.1, 0.2]\n")
    r = porevox(*CLUSTER, "run", tmp_path / "study.yaml")
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert "study.yaml:5: samples[0].voxel_size" in line
    assert not (tmp_path / "run").exists()      # refused before anything ran


def test_run_ingests_a_source_with_its_box(client, tmp_path):
    """A user's stack named as `source` with a `box`: the run ingests the VOI into the
    sample's path (voxel size from the study) and carries on from there."""
    import tifffile

    from porevox.pipelines.run import run_study

    stack = np.random.default_rng(3).integers(0, 65535, (20, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "scan.tif", stack)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "user data", "voxel_size": [0.025, 0.0186, 0.0186],
        "samples": [{"id": "scan", "path": "scan.zarr", "source": "scan.tif",
                     "box": [[2, 18], [5, 40], [0, 33]], "paste": "HPA", "temperature_c": 250}],
        "stages": {"preprocess": False, "segment": {"methods": ["otsu"]}, "unet": False,
                   "quantify": {"labels": ["otsu"]}, "report": False}}))
    record = run_study(tmp_path / "study.yaml")
    assert [s["step"] for s in record["steps"]] == ["ingest", "segment-otsu", "quantify-otsu", "features"]
    vol = open_volume(tmp_path / "scan.zarr", mode="r")
    np.testing.assert_array_equal(vol.image[:], stack[2:18, 5:40, 0:33])
    assert vol.voxel_size == (0.025, 0.0186, 0.0186) and vol.sample["temperature_c"] == 250
    np.testing.assert_array_equal(vol.array("labels/otsu")[:], vol.image[:] > threshold_otsu(vol.image[:]))
    again = run_study(tmp_path / "study.yaml")
    assert again["ran"] == 0


def test_run_ingests_a_users_segmentation_and_quantifies_its_phases(client, tmp_path):
    """A sample naming its stack and the lab's own three-phase segmentation (with phase
    names and the stack's `box`), and a sample of a segmentation alone (a volume of
    label images only): the run ingests them, quantifies two phases by name into
    their own rows of features.csv, equal to the features of the binary images of
    those phases, and writes the report; a label name a stage of the study writes is
    refused up front."""
    import pandas as pd

    import porevox as pv
    from porevox.pipelines.run import run_study
    from porevox.pipelines.studyfile import load_study
    from tests.pipelines.test_phases import three_phases

    labels = three_phases((20, 40, 44))
    np.save(tmp_path / "scan.npy", (labels * 70 + 20).astype(np.uint8))
    np.save(tmp_path / "seg.npy", labels)
    alone = three_phases((18, 30, 32), seed=5)
    np.save(tmp_path / "alone.npy", alone)
    box = [[2, 18], [3, 40], [0, 41]]
    avizo = {"source": "seg.npy", "phase_names": "0=pore,1=LSM,2=YSZ"}
    doc = {"voxel_size": [0.5, 0.4, 0.4],
           "samples": [{"id": "cathode", "path": "cathode.zarr", "source": "scan.npy", "box": box,
                        "labels": {"avizo": avizo}},
                       {"id": "alone", "path": "alone.zarr",
                        "labels": {"avizo": {**avizo, "source": "alone.npy"}}}],
           "stages": {"preprocess": False, "segment": False, "unet": False, "score": False,
                      "quantify": {"labels": ["avizo"], "phase": ["pore", "LSM+YSZ"], "conductivity": True},
                      "regress": False}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    record = run_study(tmp_path / "study.yaml")
    assert sorted(s["step"] for s in record["steps"]) == sorted(
        ["ingest", "labels-avizo", "labels-avizo", "quantify-avizo", "quantify-avizo", "features"])
    crop = labels[2:18, 3:40, 0:41]
    vol = open_volume(tmp_path / "cathode.zarr", mode="r")
    np.testing.assert_array_equal(vol.array("labels/avizo")[:], crop)
    only = open_volume(tmp_path / "alone.zarr", mode="r")
    assert not only.has_image and only.voxel_size == (0.5, 0.4, 0.4) and only.sample["id"] == "alone"
    table = pd.read_csv(tmp_path / "features.csv")
    assert list(zip(table["id"], table["phase"])) == [("cathode", "pore"), ("alone", "pore"),
                                                      ("cathode", "LSM+YSZ"), ("alone", "LSM+YSZ")]
    for (_, row), (image, values) in zip(table.iterrows(), ((crop, (0,)), (alone, (0,)), (crop, (1, 2)),
                                                            (alone, (1, 2)))):
        ref = pv.quantify(np.isin(image, values).astype(np.uint8), voxel_size=(0.5, 0.4, 0.4))
        for key in ("relative_density", "specific_surface_area", "strut_diameter_mean", "tortuosity"):
            assert row[key] == pytest.approx(ref[key], rel=1e-9), key
    assert (tmp_path / "report.html").is_file()
    cond = pd.read_csv(tmp_path / "conductivity.csv")
    assert sorted(zip(cond["id"], cond["phase"])) == sorted(zip(table["id"], table["phase"]))
    row = cond[(cond["id"] == "alone") & (cond["phase"] == "pore")].iloc[0]
    ref = pv.conductivity((alone == 0).astype(np.uint8), voxel_size=(0.5, 0.4, 0.4), axis="y")
    assert row["relative_conductivity"] == pytest.approx(ref["relative_conductivity"], rel=1e-12)
    assert run_study(tmp_path / "study.yaml")["ran"] == 0
    doc["stages"]["segment"] = {"methods": ["otsu"]}
    doc["samples"][0]["labels"] = {"otsu": "seg.npy"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception, match=r"samples\[0\]\.labels\.otsu: labels/otsu is what a porevox stage"):
        load_study(tmp_path / "study.yaml")
