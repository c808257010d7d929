"""The command line, run as a user runs it (a real `porevox` process)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

PV = [str(Path(sys.executable).parent / "porevox")]
FAST = ["--workers", "1", "--threads-per-worker", "1", "--memory-limit", "1GB"]
FAST2 = ["--workers", "2", "--threads-per-worker", "1", "--memory-limit", "1GB"]


def run(*args, cwd=None, timeout=300):
    return subprocess.run([*PV, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    data = np.random.default_rng(5).integers(0, 65535, (12, 30, 40), dtype=np.uint16)
    tifffile.imwrite(folder / "s.tif", data)
    return folder, data


def test_ingest_json_and_info(stack):
    folder, data = stack
    out = folder / "v.zarr"
    r = run(*FAST, "ingest", folder / "s.tif", out, "--voxel-size", "0.025", "0.0186", "0.0186",
            "--meta", "material=copper", "--meta", "temperature_c=175", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)                 # exactly one JSON object on stdout
    assert result["ingested"] is True and result["shape"] == [12, 30, 40]
    assert result["sample"] == {"material": "copper", "temperature_c": 175}
    assert result["voxel_size"] == [0.025, 0.0186, 0.0186] and result["dtype"] == "uint16"
    info = run("info", out, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["provenance"]["ingest"]["outputs"] == ["image"]
    human = run("info", out)
    assert "voxel size (0.025, 0.0186, 0.0186) micrometer" in human.stdout
    again = run(*FAST, "ingest", folder / "s.tif", out, "--voxel-size", "0.025", "0.0186", "0.0186",
                "--meta", "material=copper", "--meta", "temperature_c=175", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ingested"] is False
    assert "nothing to do" in again.stderr


def test_ingest_on_external_scheduler(stack, external_scheduler):
    folder, data = stack
    r = run("--scheduler", external_scheduler, "ingest", folder / "s.tif", folder / "ext.zarr",
            "--voxel-size", "1", "1", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert f"attached to Dask scheduler {external_scheduler}" in " ".join(r.stderr.split())
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(folder / "ext.zarr" / "image"))[:], data)


@pytest.mark.parametrize(
    "args,message",
    [
        (["ingest", "{f}/missing.tif", "{f}/o.zarr", "--voxel-size", "1", "1", "1"],
         "no such file"),
        (["ingest", "{f}/s.tif", "{f}/o.zarr", "--voxel-size", "0", "1", "1"],
         "voxel_size must be 3 positive"),
        (["ingest", "{f}/s.tif", "{f}/o.zarr", "--voxel-size", "1", "1", "1", "--meta", "oops"],
         "--meta takes key=value"),
        (["info", "{f}/s.tif"], "not a Zarr group"),
        (["info", "{f}/nothing.zarr"], "no volume at"),
    ],
)
def test_bad_input_exit_2_one_line(stack, args, message):
    folder, _ = stack
    r = run(*[a.format(f=folder) for a in args])
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("porevox: error:") and message in lines[0], r.stderr
    assert not (folder / "o.zarr").exists()


def test_usage_error_exit_2(stack):
    r = run("ingest", "only-one-arg")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["porevox: error: porevox ingest needs OUT (the new volume) and --voxel-size Z Y X to "
                     "ingest an image, or --labels NAME --into VOLUME for a segmentation; see porevox ingest "
                     "--help"], \
        r.stderr


def test_version():
    import porevox

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == porevox.__version__, r.stderr


@pytest.mark.timeout(1200)
def test_demo(tmp_path, demo_twin):
    """`porevox demo` end to end. It starts from a copy of the session's demo twin (the
    same preset and seed, synthesized once for test_synth), so its synth step finds
    every sample done and renders none again."""
    import pandas as pd

    shutil.copytree(demo_twin[0], tmp_path / "d" / "study")
    # 21 tomograms on two workers: 229 s alone here (2026-12-07), 266 s on one
    r = run(*FAST2, "demo", "--out", tmp_path / "d", "--epochs", "1", "--generate-steps", "3",
            "--generate-n", "2", "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    study = tmp_path / "d" / "study"
    samples = result["study"]["samples"]
    assert len(samples) == 21 and sum(s["voi"] == 0 for s in samples) == 18    # + 3 test VOIs
    # porevox run did every stage: 21 tomograms x 8 steps + 2 U-Nets, Table 1, the
    # feature table, 2 regressions and generation
    record = result["run"]
    assert record["tomograms"] == 21 and record["ran"] == len(record["steps"]) == 21 * 8 + 7
    assert record["cluster"]["dashboard"].startswith("http://127.0.0.1:")
    assert Path(record["report"]) == study / "report.html"
    assert (study / record["performance_reports"][0]).is_file()
    table = json.loads((study / "table1.json").read_text())["table"]
    assert set(table) == {"CTA", "Hybrid", "U-Net CTA", "U-Net Hybrid"}
    assert table["Hybrid"]["recall_pore"]["mean"] > table["CTA"]["recall_pore"]["mean"]
    assert (study / "study.yaml").exists() and (study / "contact_sheet.png").exists()
    assert result["ingested"]["shape"] == [48, 128, 128]
    first = samples[0]
    q = run(*FAST, "quantify", study / first["path"], "--labels", "truth",
            "--axis", "y", "--conductivity", "--json")
    assert q.returncode == 0, q.stderr
    feats = json.loads(q.stdout)
    assert feats["relative_density"] == pytest.approx(first["relative_density"], abs=1e-6)
    assert feats["relative_conductivity"] == pytest.approx(first["relative_conductivity"], rel=1e-4)
    assert feats["specific_surface_area"] > 0 and feats["tortuosity"] >= 1
    # the run quantified every sample on the U-Net's labels and the truth
    rows = pd.read_csv(study / "features.csv")
    assert set(rows["labels"]) == {"unet", "truth"} and len(rows) == 42
    truth = rows[rows["labels"] == "truth"]
    assert list(truth["relative_density"]) == pytest.approx(
        [s["relative_density"] for s in samples], abs=1e-6)
    from porevox.pipelines.feature_study import trend_summary

    for paste, trends in trend_summary(truth).items():      # the paper's trends, per paste
        assert trends["relative_density"]["spearman"] > 0.9, paste
        assert trends["strut_diameter_mean"]["spearman"] > 0.7, paste
    assert (study / "features.parquet").exists()
    # and fitted the structure–property models on both, the three test VOIs held out;
    # on the truth, the non-percolating HPB 350 °C is left out (a 1-epoch U-Net's
    # labels may percolate elsewhere)
    reg = {name: json.loads((study / "regression" / name / "table2.json").read_text())
           for name in ("unet", "truth")}
    assert len(reg["truth"]["train_ids"]) == 17 and reg["truth"]["dropped"] == [
        "HPB-350C-voi0 (tortuosity, bruggeman_alpha)"]
    for name in ("unet", "truth"):
        assert reg[name]["test_ids"] == ["HPA-225C-voi1", "HPB-400C-voi1", "NPC-350C-voi1"]
        assert set(reg[name]["paper_models"]) == set("ACIJNQR") and reg[name]["subsets"] == 247
        assert Path(reg[name]["files"]["table2_md"]).is_file()
    # and trained both generative models on the U-Net's crops of the 18 training
    # samples, judged them (Table 3) and designed for three conductivities
    gen = record["results"]["generate"]
    for kind in ("ddpm", "cgan"):
        assert gen["training"][kind]["steps"] == 3
        assert json.loads((study / "models" / kind / "model.json").read_text())["crops"] > 0
        assert (study / "models" / kind / "checkpoint.pt").is_file()
    table3 = json.loads((study / "generation" / "table3.json").read_text())["table3"]
    assert set(table3) == {"DDPM", "cGAN"} and all(set(t) == {"HPA", "HPB", "NPC"} for t in table3.values())
    assert [t["target"] for t in gen["design"]] == [50.0, 100.0, 200.0]
    html = (study / "report.html").read_text()
    assert all(h in html for h in ("Table 1", "Table 2", "Table 3"))
    assert "report:" not in r.stdout     # --json: JSON only


def test_synth_and_quantify(tmp_path):
    """A single-sample check of the two twin commands (the demo covers the study)."""
    r = run(*FAST, "quantify", tmp_path / "nothing.zarr", "--conductivity")
    assert r.returncode == 2 and "no volume at" in r.stderr
    r = run("synth", tmp_path / "s", "--preset", "huge")
    assert r.returncode == 2 and "--preset must be demo or paper" in r.stderr


def test_segment_train_score(tmp_path, twin_arrays, local_cluster):
    """preprocess → segment otsu and hybrid → train-unet → segment unet → score, as a
    user with a running cluster runs them (attached to the session's); and their bad
    input."""
    from tests.conftest import twin_volume

    attach = ["--scheduler", local_cluster.scheduler_address]
    vol = twin_volume(tmp_path / "v.zarr", twin_arrays, (8, 64, 80)).path
    r = run(*attach, "preprocess", vol, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"volume": str(vol), "written": "preprocessed", "skipped": False}
    for method in ("otsu", "hybrid"):
        r = run(*attach, "segment", vol, "--method", method, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["source"] == "preprocessed"
    scores = {}
    for labels in ("otsu", "hybrid"):
        r = run(*attach, "score", vol, "--labels", labels, "--json")
        assert r.returncode == 0, r.stderr
        scores[labels] = json.loads(r.stdout)
    assert scores["hybrid"]["recall_pore"] > scores["otsu"]["recall_pore"]
    assert 0.8 < scores["otsu"]["accuracy"] < 1
    model = tmp_path / "m.pt"
    r = run(*attach, "train-unet", vol, "--out", model, "--epochs", "2", "--every", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["slices"] == 4 and model.with_suffix(".json").exists()
    r = run(*attach, "segment", vol, "--method", "unet", "--model", model, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == ["labels/unet"]

    bad = tmp_path / "bad.pt"
    bad.write_bytes(__import__("pickle").dumps({"state_dict": Path("x")}))
    for args, message in [
        (["segment", vol, "--method", "unet"], "needs --model"),
        (["segment", vol, "--method", "unet", "--model", bad], "refuse"),
        (["segment", vol, "--method", "magic"], "method must be one of"),
        (["score", vol, "--labels", "nope"], "no label image 'nope'"),
        (["train-unet", vol, "--out", tmp_path / "m2.pt", "--labels", "nope"], "no label image"),
        (["train-unet", vol, "--out", tmp_path / "m2.txt"], "must end in .pt"),
        (["preprocess", vol, "--no-destripe", "--no-shading"], "nothing"),
    ]:
        r = run(*attach, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and r.stdout == "", (args, r.stderr)
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)
    assert not (tmp_path / "m2.pt").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two small volumes with labels/truth and a study.yaml naming them."""
    import yaml

    from porevox.engine import create_volume
    from tests.conftest import porous

    folder = tmp_path_factory.mktemp("study")
    samples = []
    for k, porosity in enumerate((0.5, 0.35)):
        solid = porous((40, 44, 44), np.random.default_rng(k), porosity=porosity, sigma=2.5)
        vol = create_volume(folder / f"s{k}.zarr", solid.shape, "uint8", (0.05, 0.04, 0.04))
        vol.group.create_array("labels/truth", data=solid.astype(np.uint8), chunks=(20, 44, 44))
        samples.append({"id": f"s{k}", "path": f"s{k}.zarr", "paste": "NPC",
                        "temperature_c": 175 + 225 * k, "voi": 0, "conductivity": 5.0 + k})
    (folder / "study.yaml").write_text(yaml.safe_dump({"name": "cli", "samples": samples}))
    return folder


def test_quantify_volume_and_study(study):
    import porevox as pv

    r = run(*FAST, "quantify", study / "s0.zarr", "--labels", "truth", "--directions", "paper", "--json")
    assert r.returncode == 0, r.stderr
    feats = json.loads(r.stdout)
    stored = pv.open_volume(study / "s0.zarr").meta["features"]["truth"]
    for key in ("relative_density", "specific_surface_area", "strut_diameter_mean", "tortuosity",
                "mean_curvature_mean", "gaussian_curvature_mean", "bruggeman_alpha", "beta",
                "specific_perimeter_2d", "shape_index_mean"):
        assert isinstance(feats[key], float) and feats[key] == stored[key], key
    assert sorted(feats["tortuosity_by_axis"]) == sorted(["+y", "-y", "+x", "-x", "+z"])
    human = run(*FAST, "quantify", study / "s0.zarr", "--labels", "truth", "--directions", "paper")
    assert human.returncode == 0 and "nothing to do" in " ".join(human.stderr.split())
    assert "specific_surface_area" in human.stdout
    s = run(*FAST, "quantify", study / "study.yaml", "--json")
    assert s.returncode == 0, s.stderr
    out = json.loads(s.stdout)
    assert [row["id"] for row in out["rows"]] == ["s0", "s1"]
    assert (study / "features.csv").exists() and (study / "features.parquet").exists()
    assert all(Path(p).exists() for p in out["figures"]["truth"].values())


@pytest.mark.parametrize("args,message", [
    (["{f}/s0.zarr", "--labels", "unet"], "no label image 'unet'"),
    (["{f}/s0.zarr", "--directions", "up"], "directions must be"),
    (["{f}/s0.zarr", "--order", "3"], "order must be 1 or 2"),
    (["{f}/s0.zarr", "--tortuosity-method", "fast"], "tortuosity_method must be"),
    (["{f}/none.yaml"], "no such study file"),
])
def test_quantify_bad_input_exit_2(study, args, message):
    r = run(*FAST, "quantify", *[a.format(f=study) for a in args])
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_regress(tmp_path):
    from tests.pipelines.test_regress import feature_table

    table = feature_table()
    table.to_csv(tmp_path / "features.csv", index=False)
    r = run("regress", tmp_path / "features.csv", "--features", "D,SA", "--features", "alpha",
            "--features", "beta", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["subsets"] == 11 and set(result["paper_models"]) == {"J", "Q"}
    assert result["test_ids"] == ["HPA-225C-voi1", "HPB-400C-voi1", "NPC-350C-voi1"]
    out = tmp_path / "regression" / "truth"                     # beside the table, per labels
    assert result["files"]["table2_md"] == str(out / "table2.md") and (out / "figures").is_dir()
    human = run("regress", tmp_path / "features.csv", "--test-samples", "NPC-400C-voi0",
                "--max-features", "3", "--no-figures", "--out", tmp_path / "o")
    assert human.returncode == 0, human.stderr
    assert "| Q |" in human.stdout and "paper (model Q): α > SA > β" in human.stdout
    assert "NPC-400C-voi0" in human.stdout and not (tmp_path / "o" / "figures").exists()


@pytest.mark.parametrize("args,message", [
    (["--target", "sigma"], "no target column 'sigma'"),
    (["--features", "D,nope"], "no column 'nope'"),
    (["--max-features", "20"], "7 training samples are too few for models of 8 features"),
])
def test_regress_bad_input_exit_2(tmp_path, args, message):
    from tests.pipelines.test_regress import feature_table

    table = feature_table().head(8)
    table.to_csv(tmp_path / "f.csv", index=False)
    r = run("regress", tmp_path / "f.csv", *args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "regression").exists()


def test_generate_commands(tmp_path):
    """train, sample, evaluate and design as a user runs them, on a small study."""
    import pandas as pd
    import yaml

    from porevox.engine.storage import create_volume

    rng = np.random.default_rng(0)
    rows = []
    for k, (paste, t) in enumerate((("HPA", 175), ("HPA", 400), ("NPC", 175), ("NPC", 400))):
        labels = (rng.random((3, 16, 32)) < 0.3 + 0.1 * k).astype(np.uint8)
        vol = create_volume(tmp_path / f"s{k}.zarr", labels.shape, "uint8", (0.05, 0.04, 0.04))
        vol.group.create_array("labels/unet", data=labels)
        rows.append({"id": f"s{k}", "path": f"s{k}.zarr", "paste": paste, "temperature_c": t, "voi": 0,
                     "conductivity": 20.0 + 40 * k})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "t", "samples": rows}))
    pd.DataFrame([{"id": f"x{i}", "labels": "unet", "relative_density": 0.3 + 0.04 * i,
                   "specific_perimeter_2d": 5 + np.sin(i), "shape_index_mean": 0.01 * np.cos(i),
                   "conductivity": 400 * (0.3 + 0.04 * i) + np.sin(3 * i)} for i in range(10)]).to_csv(
        tmp_path / "features.csv", index=False)
    for model in ("ddpm", "cgan"):
        r = run("generate", "train", tmp_path, "--model", model, "--size", "16", "--steps", "3", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["steps"] == 3
    r = run("generate", "sample", tmp_path / "models" / "ddpm", "--paste", "NPC", "--temperature", "400",
            "--conductivity", "150", "-n", "3", "--steps", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    import zarr

    assert zarr.open_array(out["zarr"]).shape == (3, 16, 16) and out["pngs"] == 3
    r = run("generate", "evaluate", tmp_path, "-n", "2", "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert "| DDPM | HPA |" in r.stdout and "| cGAN | NPC |" in r.stdout
    r = run("generate", "design", tmp_path, "--conductivity", "100,200", "-n", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert [t["target"] for t in json.loads(r.stdout)["targets"]] == [100.0, 200.0]
    for args, message in ((["train", tmp_path, "--model", "vae"], "--model must be one of ddpm, cgan"),
                          (["sample", tmp_path / "nope"], "no trained model in"),
                          (["sample", tmp_path / "models" / "cgan", "--conductivity", "5"],
                           "conditioned on the class only"),
                          (["design", tmp_path, "--conductivity", "abc"], "--conductivity takes numbers")):
        r = run("generate", *args)
        assert r.returncode == 2 and r.stdout == "" and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def fiberform(tmp_path_factory):
    """PuMA's FiberForm CT ingested from its TIFF and its segmentation joined to it as
    labels/puma with phase names, as a user would, once for the tests below (each
    writes labels of its own name): (the data folder, the volume, the label ingest's
    JSON)."""
    from tests.conftest import real_data

    folder = real_data("fiberform")
    vol = tmp_path_factory.mktemp("fiberform") / "fiberform.zarr"
    r = run(*FAST, "ingest", folder / "100_fiberform.tif", vol, "--voxel-size", "1.3", "1.3", "1.3")
    assert r.returncode == 0, r.stderr
    r = run(*FAST, "ingest", folder / "fiberform_solid_ge90.npy", "--labels", "puma", "--into", vol,
            "--phase-names", "0=pore,1=fibre", "--voxel-size", "1.3", "1.3", "1.3", "--json")
    assert r.returncode == 0, r.stderr
    return folder, vol, json.loads(r.stdout)


def test_fiberform_threshold_as_a_user_would(fiberform):
    """A real X-ray CT (PuMA's FiberForm, 100³, 1.3 µm): ingest the TIFF, segment by a
    fixed threshold at gray 90 — solid fraction 0.16714, PuMA's published value on this
    file, and the same voxels as gray >= 90. A threshold without its value, or with
    another method, is a one-line error, exit 2."""
    folder, vol, _ = fiberform
    r = run(*FAST, "segment", vol, "--method", "threshold", "--threshold", "90", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["written"] == ["labels/threshold"] and out["thresholds"]["fixed"] == 90
    import zarr

    labels = zarr.open_array(str(vol / "labels" / "threshold" / "0"))[:]    # level 0 of the label image
    assert labels.mean() == pytest.approx(0.16714, abs=5e-6)
    np.testing.assert_array_equal(labels, np.load(folder / "fiberform_solid_ge90.npy"))
    for args, message in ((["--method", "threshold"], "needs --threshold"),
                          (["--threshold", "90"], "goes with --method threshold")):
        r = run("segment", vol, *args, "--name", "bad")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (vol / "labels" / "bad").exists()


def test_a_users_segmentation_joins_the_volume(fiberform, tmp_path):
    """PuMA's own segmentation of FiberForm (a .npy of 0 = pore, 1 = fibre) ingested
    into the volume of its CT as labels/puma with phase names: equal to the file,
    its phases counted and named; a rerun does nothing. A segmentation of another
    shape, of floats, under a name porevox did not write, or without --into is a
    one-line error, exit 2, nothing written."""
    folder, vol, out = fiberform
    seg = folder / "fiberform_solid_ge90.npy"
    assert out["ingested"] is True and out["phases"] == {"0": {"name": "pore", "voxels": 832860},
                                                         "1": {"name": "fibre", "voxels": 167140}}
    import zarr

    arr = zarr.open_array(str(vol / "labels" / "puma" / "0"))     # level 0 of the label image
    np.testing.assert_array_equal(arr[:], np.load(seg))
    assert arr.attrs["phases"]["1"]["name"] == "fibre"
    props = zarr.open_group(str(vol / "labels" / "puma")).attrs["ome"]["image-label"]["properties"]
    assert props == [{"label-value": 0, "name": "pore", "voxels": 832860},
                     {"label-value": 1, "name": "fibre", "voxels": 167140}]
    info = json.loads(run("info", vol, "--json").stdout)
    assert "puma" in info["labels"] and "ingest:labels/puma" in info["provenance"]
    again = run(*FAST, "ingest", seg, "--labels", "puma", "--into", vol, "--phase-names", "0=pore,1=fibre",
                "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ingested"] is False
    np.save(tmp_path / "small.npy", np.load(seg)[:50])
    np.save(tmp_path / "float.npy", np.load(seg).astype(np.float32))
    assert run(*FAST, "segment", vol, "--method", "otsu").returncode == 0
    for args, message in (
            ([tmp_path / "small.npy", "--labels", "x", "--into", vol], "must match its volume"),
            ([tmp_path / "float.npy", "--labels", "x", "--into", vol], "uint8 or uint16 label values"),
            ([seg, "--labels", "otsu", "--into", vol], "porevox replaces only what it wrote itself"),
            ([seg, "--labels", "x", "--into", vol, "--voxel-size", "1", "1", "1"], "differs from"),
            ([seg, "--labels", "x", "--into", vol, "--phase-names", "0=pore,0=again"], "each value once"),
            ([seg, "--labels", "x"], "--into VOLUME) or into a new volume of label images only")):
        r = run("ingest", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
    assert not (vol / "labels" / "x").exists()


def test_fiberform_pore_phase_beside_pumas_published_values(fiberform):
    """PuMA's FiberForm CT and its segmentation, as a user would: both phases
    quantified by name in one command, conductivity along x (numpy axis 2). The pore
    phase's D_eff/D_0 and tortuosity factor against PuMA's published finite-volume
    values on this file (0.6341499 and 1.3133487, symmetric side walls; porevox's
    side faces are insulating, the same condition); the fibres do not span x. A
    phase the labels do not hold is a one-line error, exit 2."""
    _, vol, _ = fiberform
    r = run(*FAST, "quantify", vol, "--labels", "puma", "--phase", "pore", "--phase", "fibre",
            "--conductivity", "--axis", "x", "--json")
    assert r.returncode == 0, r.stderr
    pore, fibre = json.loads(r.stdout)["phases"]
    assert (pore["phase"], fibre["phase"]) == ("pore", "fibre")
    assert pore["relative_density"] == pytest.approx(0.83286, abs=1e-12)
    assert fibre["relative_density"] == pytest.approx(0.16714, abs=1e-12)
    assert pore["relative_conductivity"] == pytest.approx(0.6341499, rel=5e-4)    # measured +0.035 %
    assert pore["tortuosity_factor"] == pytest.approx(1.3133487, rel=5e-4)        # measured −0.035 %
    assert fibre["relative_conductivity"] == 0 and fibre["tortuosity_factor"] is None   # inf in JSON
    r = run("quantify", vol, "--labels", "puma", "--phase", "binder")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "0 = pore, 1 = fibre" in lines[0], r.stderr


def test_a_segmentation_alone_is_a_volume(tmp_path):
    """PuMA's FiberForm segmentation without its CT: a new volume of label images only,
    whose pore phase gives the same D_eff/D_0 as with the image beside it; its label
    image is an OME-Zarr label image (validated); a stage that needs the gray image is
    a one-line error, exit 2; a rerun does nothing."""
    import zarr
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    from tests.conftest import real_data

    seg = real_data("fiberform") / "fiberform_solid_ge90.npy"
    vol = tmp_path / "seg.zarr"
    r = run(*FAST, "ingest", seg, vol, "--labels", "puma", "--voxel-size", "1.3", "1.3", "1.3",
            "--phase-names", "0=pore,1=fibre", "--chunks", "40", "64", "50", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["phases"]["0"] == {"name": "pore", "voxels": 832860}
    info = json.loads(run("info", vol, "--json").stdout)
    assert info["image"] is False and info["shape"] == [100, 100, 100] and info["chunks"] == [40, 64, 50]
    root = zarr.open_group(str(vol), mode="r")
    assert Labels.from_zarr(root["labels"]).label_paths == ["puma"]
    label = ImageLabel.from_zarr(root["labels/puma"])
    assert label.attributes.ome.image_label.source is None      # no image to point at
    np.testing.assert_array_equal(root["labels/puma/0"][:], np.load(seg))
    r = run(*FAST, "quantify", vol, "--labels", "puma", "--phase", "pore", "--conductivity", "--axis", "x",
            "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["relative_density"] == pytest.approx(0.83286, abs=1e-12)
    assert out["relative_conductivity"] == pytest.approx(0.6341499, rel=5e-4)
    for args in (["segment", vol], ["preprocess", vol]):
        r = run(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "holds label images only (puma)" in lines[0]
    again = run(*FAST, "ingest", seg, vol, "--labels", "puma", "--voxel-size", "1.3", "1.3", "1.3",
                "--phase-names", "0=pore,1=fibre", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ingested"] is False
    r = run("ingest", seg, tmp_path / "new.zarr", "--labels", "puma")
    assert r.returncode == 2 and "give its --voxel-size Z Y X" in r.stderr
    assert not (tmp_path / "new.zarr").exists()
