import re
import textwrap

import pytest
import yaml

from porevox.errors import InvalidVolumeError, StudyFileError
from porevox.pipelines.studyfile import DEFAULT_STAGES, STAGES, load_study


def write(folder, text, volumes=("a.zarr", "b.zarr")):
    for name in volumes:
        (folder / name).mkdir()
    path = folder / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def raises(path, line, field, match=""):
    """Assert load_study fails at `line` on `field` with a one-line message."""
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: {field}: "), message
    assert re.search(match, message), message
    return message


TWO = """\
samples:
  - id: a
    path: a.zarr
  - id: b
    path: b.zarr
"""


def synth_manifest(n=3):
    """The shape of the study.yaml porevox synth writes (pipelines/synth.py, _manifest)."""
    samples = [{"id": f"HPA-{175 + 25 * i}C-voi0", "path": f"HPA-{175 + 25 * i}C-voi0.zarr",
                "paste": "HPA", "temperature_c": 175 + 25 * i, "voi": 0, "relative_density": 0.576,
                "relative_conductivity": 0.0 if i == 0 else 0.08,
                "tortuosity_factor": float("inf") if i == 0 else 7.03,
                "conductivity": 36.381, "held_out": i == n - 1} for i in range(n)]
    return {"name": "porevox digital twin (demo)", "preset": "demo", "seed": 0,
            "voxel_size": [0.05, 0.0372, 0.0372], "unit": "micrometer", "shape": [48, 128, 128],
            "conductivity_unit": "uS/cm", "conductivity_axis": "y", "sigma_scale": 450.0,
            "measurement_noise": 0.03, "fibsem": {"copper": 0.62, "blur": 0.015}, "samples": samples}


def test_synth_study_loads(tmp_path):
    manifest = synth_manifest()
    path = write(tmp_path, yaml.safe_dump(manifest, sort_keys=False),
                 [s["path"] for s in manifest["samples"]])
    study = load_study(path)
    assert study.name == "porevox digital twin (demo)"
    assert study.path == path.resolve() and study.folder == tmp_path.resolve()
    assert study.unit == "micrometer" and study.raw == manifest
    assert [s.id for s in study.samples] == [s["id"] for s in manifest["samples"]]
    first, last = study.samples[0], study.samples[-1]
    assert first.path == (tmp_path / "HPA-175C-voi0.zarr").resolve() and first.path.is_absolute()
    assert first.voxel_size == (0.05, 0.0372, 0.0372)   # the study's default
    assert first.source is None and first.box is None
    assert first.meta["tortuosity_factor"] == float("inf") and first.meta["conductivity"] == 36.381
    assert "held_out" not in first.meta and not first.held_out and last.held_out
    assert study.stages == DEFAULT_STAGES   # regress kept: 3 samples have a conductivity


def test_folder_argument_finds_study_yaml(tmp_path):
    write(tmp_path, TWO)
    study = load_study(tmp_path)
    assert study.name == tmp_path.name
    assert study.path == (tmp_path / "study.yaml").resolve()
    assert [s.id for s in study.samples] == ["a", "b"]
    assert study.samples[0].voxel_size is None


def test_defaults_filled(tmp_path):
    path = write(tmp_path, TWO + textwrap.dedent("""\
        stages:
          preprocess: false
          unet: {epochs: 50}
          generate: true
          report:
        """))
    stages = load_study(path).stages
    assert list(stages) == ["segment", "unet", "score", "quantify", "generate", "report"]
    assert stages["unet"] == {**DEFAULT_STAGES["unet"], "epochs": 50}
    assert stages["generate"] == {p: d for p, (_, d) in STAGES["generate"].items()}
    assert stages["generate"]["design"] == [50, 100, 200] and stages["generate"]["steps"] is None
    assert stages["report"] == {}
    assert "regress" not in stages   # on only by default; 2 samples lack a conductivity
    assert "generate" not in DEFAULT_STAGES and "preprocess" in DEFAULT_STAGES


def test_source_sample(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.npy").write_bytes(b"")
    path = write(tmp_path, """\
        voxel_size: [1, 2, 2]
        samples:
          - id: a
            path: out/a.zarr
            source: raw/a.npy
            box: [[0, 8], [2, 10], [0, 16]]
          - id: b
            path: b.zarr
            voxel_size: [0.5, 0.5, 0.5]
            meta: {operator: JD}
        """, volumes=("b.zarr",))
    a, b = load_study(path).samples
    assert a.source == (tmp_path / "raw" / "a.npy").resolve()
    assert a.path == (tmp_path / "out" / "a.zarr").resolve()
    assert a.voxel_size == (1.0, 2.0, 2.0) and a.box == ((0, 8), (2, 10), (0, 16))
    assert b.voxel_size == (0.5, 0.5, 0.5) and b.meta == {"operator": "JD"}


def test_error_is_invalid_volume_error():
    assert issubclass(StudyFileError, InvalidVolumeError) and issubclass(StudyFileError, ValueError)


def test_wrong_voxel_size(tmp_path):
    path = write(tmp_path, TWO + "    voxel_size: [0.1, 0.2]\n")
    msg = raises(path, 6, "samples[1].voxel_size")
    assert msg.endswith("samples[1].voxel_size: must be 3 positive numbers (z, y, x), got [0.1, 0.2]")


def test_wrong_top_level_voxel_size(tmp_path):
    raises(write(tmp_path, "name: x\nvoxel_size:\n  - 1\n  - 0\n  - 1\n" + TWO), 2, "voxel_size")


def test_missing_id(tmp_path):
    path = write(tmp_path, TWO.replace("  - id: b\n    path: b.zarr", "  - path: b.zarr"))
    raises(path, 4, r"samples[1].id", "missing")


def test_duplicate_id(tmp_path):
    path = write(tmp_path, TWO.replace("id: b", "id: a"))
    raises(path, 4, "samples[1].id", r"duplicate id 'a' \(also on line 2\)")


def test_bad_id(tmp_path):
    raises(write(tmp_path, TWO.replace("id: b", "id: b c")), 4, "samples[1].id", "letters, digits")


def test_unknown_sample_key_suggests(tmp_path):
    path = write(tmp_path, TWO + "    temprature_c: 175\n")
    raises(path, 6, "samples[1].temprature_c", "unknown field; did you mean temperature_c")


def test_unknown_top_level_key_suggests(tmp_path):
    path = write(tmp_path, TWO + "stage:\n  unet: false\n")
    raises(path, 6, "stage", "did you mean stages")


def test_duplicate_key(tmp_path):
    path = write(tmp_path, TWO + "    path: c.zarr\n")
    raises(path, 6, "samples[1].path", r"duplicate key \(first on line 5\)")


def test_sample_field_type(tmp_path):
    path = write(tmp_path, TWO + "    voi: -1\n")
    raises(path, 6, "samples[1].voi", r"must be an integer >= 0, got -1")


def test_bad_stage_parameter(tmp_path):
    stages = "stages:\n  segment: {methods: [otsu, hybrid]}\n  unet:\n    seed: 1\n    epochs: 0\n"
    raises(write(tmp_path, TWO + stages), 10, "stages.unet.epochs", "must be an integer >= 1, got 0")


def test_unknown_stage_parameter_suggests(tmp_path):
    path = write(tmp_path, TWO + "stages:\n  unet:\n    epoch: 5\n")
    raises(path, 8, "stages.unet.epoch", "did you mean epochs")


def test_unknown_stage_suggests(tmp_path):
    path = write(tmp_path, TWO + "stages:\n  segmnet: {}\n")
    raises(path, 7, "stages.segmnet", "did you mean segment")


def test_report_takes_no_parameters(tmp_path):
    raises(write(tmp_path, TWO + "stages:\n  report: {x: 1}\n"), 7, "stages.report.x", "no parameters")


def test_unet_needs_hybrid(tmp_path):
    path = write(tmp_path, TWO + "stages:\n  segment:\n    methods: [otsu]\n")
    raises(path, 8, "stages.segment.methods", "unet trains on hybrid")


def test_regress_asked_for_needs_three_samples(tmp_path):
    path = write(tmp_path, TWO + "stages:\n  regress: {target: conductivity}\n")
    raises(path, 7, "stages.regress.target", "needs 3 samples with a conductivity value; 0 have one")


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, TWO + "  - id: c\n   path: [c.zarr\n")
    message = raises(path, 7, "yaml", "fix the YAML syntax")
    assert message.count(":") >= 3


def test_missing_path(tmp_path):
    path = write(tmp_path, TWO.replace("b.zarr", "missing.zarr"))
    raises(path, 5, "samples[1].path", "no volume folder at .*missing.zarr; check the path")


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "c.zarr").write_text("")
    raises(write(tmp_path, TWO.replace("path: b.zarr", "path: c.zarr")), 5, "samples[1].path", "not a volume")


def test_source_without_voxel_size(tmp_path):
    (tmp_path / "b.tif").write_bytes(b"")
    path = write(tmp_path, TWO + "    source: b.tif\n")
    raises(path, 4, "samples[1].voxel_size", "missing; a source needs a voxel size")


def test_missing_source(tmp_path):
    path = write(tmp_path, "voxel_size: [1, 1, 1]\n" + TWO + "    source: nope.tif\n")
    raises(path, 7, "samples[1].source", "no such file or folder")


def test_box_needs_source(tmp_path):
    path = write(tmp_path, TWO + "    box: [[0, 1], [0, 1], [0, 1]]\n")
    raises(path, 6, "samples[1].box", "needs a source")


def test_python_tag_refused(tmp_path):
    marker = tmp_path / "constructed"
    path = write(tmp_path, TWO + f"    paste: !!python/object/apply:os.system ['touch {marker}']\n")
    raises(path, 6, "samples[1].paste", "tag tag:yaml.org,2002:python/object/apply:os.system is not allowed")
    assert not marker.exists()


def test_missing_file_and_no_samples(tmp_path):
    with pytest.raises(StudyFileError, match="no such study file"):
        load_study(tmp_path)
    raises(write(tmp_path, "name: x\n", volumes=()), 1, "samples", "missing")
    path = tmp_path / "study.yaml"
    path.write_text("")
    raises(path, 1, "study", "must be a mapping")
    path.write_text("name: x\nsamples: []\n")
    raises(path, 2, "samples", "non-empty list")
