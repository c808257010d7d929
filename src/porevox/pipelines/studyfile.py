"""The study file, ``study.yaml``: what ``porevox run`` reads, and its validation.

A study file is plain YAML (read with the safe loader within bounds on size, nesting
and aliases; tags such as ``!!python/...`` are refused). ``porevox synth`` writes
one; a hand-written one looks like::

    name: sintered copper, 2024 batch     # optional; default: the folder's name
    voxel_size: [0.05, 0.0372, 0.0372]    # optional default for samples (z, y, x)
    unit: micrometer                      # optional; one of porevox's space units
    samples:
      - id: HPA-175C-voi0                 # required, unique: letters, digits . _ -
        path: HPA-175C-voi0.zarr          # required: the volume's folder, relative to
                                          #   this file's folder (or absolute), or an
                                          #   object-storage URL (s3://bucket/HPA.zarr)
        source: raw/HPA-175C.tif          # optional: a stack to ingest into `path`
        box: [[0, 48], [0, 512], [0, 512]]  # optional crop at ingest (needs source)
        labels:                           # optional: segmentations to ingest as labels/<name>
          avizo: raw/HPA-175C-seg.tif     #   a stack (cropped to `box` too), or
          ilastik: {source: raw/ila.npy, phase_names: "0=pore,1=copper"}
        held_out: false                   # optional: no model trains on it
        paste: HPA                        # optional, as are temperature_c, voi,
        conductivity: 36.4                #   relative_density, relative_conductivity,
        meta: {operator: JD}              #   tortuosity_factor and free `meta` keys
    stages:                               # optional: default stages with defaults
      unet: {epochs: 50}                  # change a parameter
      regress: false                      # switch a stage off
      generate: {}                        # or on, with its defaults (also `true`)

Without ``source``, ``path`` must be an existing folder, or ``labels`` makes a volume of
label images only there; with a ``source``, it must exist (a TIFF, a folder of TIFF
slices, a ``.npy`` or a Zarr array). A source, or labels alone, needs a voxel size (on
the sample or at the top). Sample indices in messages count from 0.

Stages (default parameters in brackets) run in this order:

- ``preprocess``: destripe [true], shading [true]
- ``segment``: methods, a list from otsu, hybrid [both]
- ``unet``: epochs [30], patience [8], every [5], seed [0], cta [true] (also train a
  U-Net on Otsu labels, "U-Net CTA"); needs segment with hybrid (and otsu for cta)
- ``score``: truth, the label to score against [truth]; samples without it are skipped
- ``quantify``: labels [unet, truth], axis z|y|x [y], conductivity [false], phase, a
  list of phases, one row each [null: the solid, 1]
- ``regress``: target, a sample field [conductivity], labels [quantify's]; needs
  quantify and 3 samples with a target value
- ``generate`` (off by default): kinds, from ddpm, cgan [both], minutes [3.0] or
  null, steps [null], n [64], seed [0], design [50, 100, 200]
- ``report``: no parameters

Listed stages override the defaults; stages not listed keep their default state.
In :attr:`Study.stages` a switched-off stage is **absent** (test ``"unet" in
study.stages``). When ``regress`` is on only by default and fewer than 3 samples have
a target value, it is dropped quietly; asked for explicitly, that is an error.

Errors are :class:`~porevox.errors.StudyFileError` with one line,
``study.yaml:14: samples[2].voxel_size: problem; fix``, for the first problem found.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..engine.location import bucket_error, is_remote, location
from ..engine.outputs import claim
from ..engine.storage import UNITS, check_voxel_size
from ..errors import StudyFileError

logger = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_min(lo: int):
    return f"an integer >= {lo}", lambda v: _is_int(v) and v >= lo


def _or_null(check):
    return f"{check[0]} or null", lambda v: v is None or check[1](v)


def _subset(options: tuple):
    return (f"a non-empty list drawn from {', '.join(options)}",
            lambda v: isinstance(v, list) and bool(v) and all(x in options for x in v))


# a check is (what the value must be, test)
_BOOL = "true or false", lambda v: isinstance(v, bool)
_STR = "a string", lambda v: isinstance(v, str)
_INT = "an integer", _is_int
_NUM = "a number", _is_num
_MEASURE = "a number (.inf allowed) or null", lambda v: v is None or isinstance(v, (int, float)) \
    and not isinstance(v, bool) and not math.isnan(v)
_PATH = "a non-empty string", lambda v: isinstance(v, str) and bool(v)
_STR_LIST = ("a non-empty list of strings",
             lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))
_PHASES = ("null, or a non-empty list of phases (a label value, values joined by '+', or a phase name)",
           lambda v: v is None or isinstance(v, list) and bool(v) and all(
               (isinstance(x, str) and x.strip()) or (_is_int(x) and x >= 0) for x in v))
_POS_LIST = ("a non-empty list of numbers > 0",
             lambda v: isinstance(v, list) and bool(v) and all(_is_num(x) and x > 0 for x in v))

# stage -> parameter -> (check, default)
STAGES: dict[str, dict[str, tuple]] = {
    "preprocess": {"destripe": (_BOOL, True), "shading": (_BOOL, True)},
    "segment": {"methods": (_subset(("otsu", "hybrid")), ["otsu", "hybrid"])},
    "unet": {"epochs": (_int_min(1), 30), "patience": (_int_min(1), 8), "every": (_int_min(1), 5),
             "seed": (_INT, 0), "cta": (_BOOL, True)},
    "score": {"truth": (_STR, "truth")},
    "quantify": {"labels": (_STR_LIST, ["unet", "truth"]),
                 "axis": (("one of z, y, x", lambda v: v in ("z", "y", "x")), "y"),
                 "conductivity": (_BOOL, False), "phase": (_PHASES, None)},
    "regress": {"target": (_STR, "conductivity"), "labels": (_STR_LIST, ["unet", "truth"])},
    "generate": {"kinds": (_subset(("ddpm", "cgan")), ["ddpm", "cgan"]),
                 "minutes": (_or_null(("a number > 0", lambda v: _is_num(v) and v > 0)), 3.0),
                 "steps": (_or_null(_int_min(1)), None), "n": (_int_min(1), 64),
                 "seed": (_INT, 0), "design": (_POS_LIST, [50, 100, 200])},
    "report": {},
}
OFF_BY_DEFAULT = {"generate"}
DEFAULT_STAGES: dict[str, dict] = {
    stage: {p: default for p, (_, default) in params.items()}
    for stage, params in STAGES.items() if stage not in OFF_BY_DEFAULT
}

# sample fields kept in Sample.meta, with their checks
META_FIELDS = {
    "paste": _STR, "temperature_c": _NUM, "voi": _int_min(0),
    "conductivity": _or_null(("a number >= 0", lambda v: _is_num(v) and v >= 0)),
    "relative_density": _MEASURE, "relative_conductivity": _MEASURE, "tortuosity_factor": _MEASURE,
}
SAMPLE_FIELDS = ("id", "path", "source", "voxel_size", "box", "held_out", "labels", "meta", *META_FIELDS)
LABEL_SOURCE_FIELDS = ("source", "phase_names")
SYNTH_FIELDS = ("preset", "seed", "shape", "conductivity_unit", "conductivity_axis", "sigma_scale",
                "measurement_noise", "fibsem")   # written by porevox synth; not checked
TOP_FIELDS = ("name", "voxel_size", "unit", "samples", "stages", *SYNTH_FIELDS)


@dataclass(frozen=True)
class Sample:
    """One sample of a study. `path` and `source` are absolute; `voxel_size` is the
    sample's own or the study's default (None if neither is given; an existing
    volume's metadata rules); `box` is ((z0, z1), (y0, y1), (x0, x1)); `labels` the
    segmentations to ingest, as (name, source, phase names); `meta` holds every other
    field (paste, temperature_c, conductivity, ... and the `meta` keys)."""

    id: str
    path: Path
    source: Path | None = None
    voxel_size: tuple[float, float, float] | None = None
    box: tuple[tuple[int, int], ...] | None = None
    held_out: bool = False
    meta: dict = field(default_factory=dict)
    labels: tuple[tuple[str, Path, dict], ...] = ()


@dataclass(frozen=True)
class Study:
    """A validated study file. `stages` maps each enabled stage, in run order, to its
    parameters with defaults filled in; a disabled stage is absent. `raw` is the
    parsed YAML as written."""

    path: Path
    folder: Path
    name: str
    samples: tuple[Sample, ...]
    stages: dict
    unit: str = "micrometer"
    raw: dict = field(default_factory=dict, repr=False)


#: What porevox writes beside a study file; each command claims its own before it
#: writes any (:func:`claim_outputs`).
OUTPUTS = ("run", "models", "regression", "generation", "figures", "features.csv", "features.parquet",
           "table1.md", "table1.json", "table1.csv", "conductivity.csv", "report.html")


def claim_outputs(study: Study, names=OUTPUTS) -> None:
    """Check that each of `names` beside the study file is absent or porevox's own,
    and record them as porevox's, before anything is written (see
    :mod:`porevox.engine.outputs`); the study's sources are never among them."""
    if names:
        claim(study.folder, names, inputs=[study.path, *(s.source for s in study.samples if s.source)],
              what="study output")


def sample_path(folder: Path, path: str) -> Path:
    """Where a sample's volume is: its object-storage URL, or `path` relative to the
    study's `folder` (absolute)."""
    return location(path) if is_remote(path) else (Path(folder) / path).resolve()


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study file (a ``study.yaml`` or the folder holding one);
    raise :class:`StudyFileError` naming the file, line and field of the first problem."""
    given = Path(path)
    file = given / STUDY_FILE if given.is_dir() else given
    if not file.is_file():
        raise StudyFileError(f"{file}: no such study file; give a study.yaml or the folder "
                             "holding one (porevox synth writes one)")
    checker, raw = _read(file)
    return checker.study(raw)


def read_yaml(file: str | os.PathLike) -> Any:
    """The plain data of a study file, read within the bounds (:data:`MAX_BYTES` ...)
    and without tags, but not checked as a study."""
    return _read(Path(file))[1]


def _read(file: Path) -> tuple[_Checker, Any]:
    size = file.stat().st_size
    if size > MAX_BYTES:
        raise StudyFileError(f"{file}:1: study: the file is {size / 2**20:.1f} MiB, over the "
                             f"{MAX_BYTES // 2**20} MiB a study file may be; list the samples only")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StudyFileError(f"{file}:1: study: not UTF-8 text ({err.reason} at byte {err.start}); "
                             "save the study file as UTF-8") from None
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _expanded_size(file, root)
        checker = _Checker(file, root)   # tags and aliases checked before anything is built
        return checker, loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise StudyFileError(f"{file}:{mark.line + 1 if mark else 1}: yaml: "
                             f"{' '.join(str(problem).split())}"
                             + ("" if isinstance(err, _Bound) else "; fix the YAML syntax")) from None
    finally:
        loader.dispose()


#: Bounds that make a hostile study file fail fast in bounded memory.
MAX_BYTES = 4 * 2**20
MAX_DEPTH = 32
MAX_ALIASES = 10_000
MAX_NODES = 200_000


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing deep nesting and many aliases while it composes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = self._aliases = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Bound(f"more than {MAX_ALIASES} aliases; write the values out", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Bound(f"nested deeper than {MAX_DEPTH} levels; flatten the file", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Bound(yaml.YAMLError):
    """A bound of :class:`_BoundedLoader` exceeded, with where."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _expanded_size(file: Path, root: yaml.Node) -> int:
    """Nodes of the document with every alias written out (memoized over the shared
    nodes, so a few bytes of nested aliases cannot make it take long); raise past
    :data:`MAX_NODES` or on a recursive alias."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise StudyFileError(f"{file}:{node.start_mark.line + 1}: yaml: a recursive alias; "
                                     "write the value out")
            return sizes[key]
        sizes[key] = -1
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1 + sum(size(c) for c in children)
        if total > MAX_NODES:
            raise StudyFileError(f"{file}:{node.start_mark.line + 1}: yaml: its aliases expand to more "
                                 f"than {MAX_NODES:,} values; write the study out without nested aliases")
        sizes[key] = total
        return total

    return size(root)


class _Checker:
    def __init__(self, file: Path, root: yaml.Node | None):
        self.file = file
        self.lines = {"": root.start_mark.line + 1 if root is not None else 1}
        if root is not None:
            self._walk(root, "", set())

    # ------------------------------------------------------------ lines and messages
    def _walk(self, node: yaml.Node, path: str, active: set) -> None:
        if node.tag not in yaml.SafeLoader.yaml_constructors or node.tag is None:
            self.fail(path, f"the tag {node.tag} is not allowed", "porevox reads plain YAML only",
                      line=node.start_mark.line + 1)
        if id(node) in active:
            self.fail(path, "a recursive alias", "write the value out", line=node.start_mark.line + 1)
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                if isinstance(key, yaml.ScalarNode) and sub in self.lines:
                    self.fail(sub, f"duplicate key (first on line {self.lines[sub]})",
                              "give each key once", line=key.start_mark.line + 1)
                self.lines[sub] = key.start_mark.line + 1
                self._walk(key, sub, active)
                self._walk(value, sub, active)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[f"{path}[{i}]"] = item.start_mark.line + 1
                self._walk(item, f"{path}[{i}]", active)

    def line(self, path: str) -> int:
        while path not in self.lines:   # a missing field: the line of its mapping
            path = path[:max(path.rfind("."), path.rfind("["), 0)]
        return self.lines[path]

    def fail(self, path: str, problem: str, fix: str | None = None, *,
             line: int | None = None) -> NoReturn:
        line = line or self.line(path)
        raise StudyFileError(f"{self.file}:{line}: {path or 'study'}: {problem}"
                             + (f"; {fix}" if fix else ""))

    def unknown(self, path: str, known) -> NoReturn:
        name = path.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(name, known, n=1)
        self.fail(path, "unknown field", f"did you mean {close[0]}?" if close
                  else f"use one of {', '.join(known)}" if known else "it takes no parameters")

    def value(self, path: str, value: Any, check) -> Any:
        if not check[1](value):
            self.fail(path, f"must be {check[0]}, got {value!r}")
        return value

    def mapping(self, path: str, value: Any, what: str) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of {what}, got {value!r}")
        return value

    # ------------------------------------------------------------ the study
    def study(self, raw: Any) -> Study:
        raw = self.mapping("", raw, "study fields (name, samples, stages, ...)")
        folder = self.file.resolve().parent
        unit, stages, explicit = "micrometer", copy.deepcopy(DEFAULT_STAGES), set()
        for key, value in raw.items():
            key = str(key)
            if key not in TOP_FIELDS:
                self.unknown(key, TOP_FIELDS)
            elif key == "name":
                self.value(key, value, _STR)
            elif key == "voxel_size":
                self.voxel_size(key, value)
            elif key == "unit":
                unit = self.value(key, value, (f"one of {', '.join(sorted(UNITS))}", lambda v: v in UNITS))
            elif key == "samples":
                samples = self.samples(value, raw.get("voxel_size"), folder)
            elif key == "stages":
                stages, explicit = self.stages(value)
        if "samples" not in raw:
            self.fail("samples", "missing", "list the volumes under samples: (id and path each)")
        self.cross_check(stages, explicit, samples)
        return Study(path=self.file.resolve(), folder=folder, name=raw.get("name") or folder.name,
                     samples=samples, stages=stages, unit=unit, raw=raw)

    def voxel_size(self, path: str, value: Any) -> tuple[float, float, float]:
        if not (isinstance(value, list) and len(value) == 3 and all(_is_num(v) and v > 0 for v in value)):
            self.fail(path, f"must be 3 positive numbers (z, y, x), got {value!r}")
        return check_voxel_size(value)

    def samples(self, value: Any, default_voxel_size: Any, folder: Path) -> tuple[Sample, ...]:
        if not isinstance(value, list) or not value:
            self.fail("samples", f"must be a non-empty list of samples, got {value!r}",
                      "give each volume an entry with id and path")
        out, ids, paths = [], {}, {}
        for i, item in enumerate(value):
            at = f"samples[{i}]"
            item = self.mapping(at, item, "sample fields (id, path, ...)")
            meta, extra = {}, {}
            for key, v in item.items():
                key, f = str(key), f"{at}.{key}"
                if key not in SAMPLE_FIELDS:
                    self.unknown(f, SAMPLE_FIELDS)
                elif key == "id":
                    if not (isinstance(v, str) and ID_PATTERN.fullmatch(v)):
                        self.fail(f, f"must be a string of letters, digits, '.', '_' or '-', got {v!r}")
                    if v in ids:
                        self.fail(f, f"duplicate id {v!r} (also on line {self.line(ids[v])})",
                                  "give each sample its own id")
                    ids[v] = f
                elif key in ("path", "source"):
                    self.value(f, v, _PATH)
                elif key == "voxel_size":
                    self.voxel_size(f, v)
                elif key == "box":
                    self.box(f, v)
                elif key == "held_out":
                    self.value(f, v, _BOOL)
                elif key == "meta":
                    extra = self.mapping(f, v, "free fields")
                elif key == "labels":
                    self.mapping(f, v, "label name: segmentation source")
                else:
                    meta[key] = self.value(f, v, META_FIELDS[key])
            for key in ("id", "path"):
                if key not in item:
                    self.fail(f"{at}.{key}", "missing", "every sample needs an id and a path")
            for key in extra:
                if str(key) in SAMPLE_FIELDS:
                    self.fail(f"{at}.meta.{key}", "repeats a sample field", f"give {key} beside meta")
            out.append(self.sample(at, item, {**meta, **extra}, default_voxel_size, folder, paths))
        return tuple(out)

    def box(self, path: str, value: Any) -> None:
        def pair(p):
            return (isinstance(p, list) and len(p) == 2 and all(_is_int(a) and a >= 0 for a in p)
                    and p[0] < p[1])
        if not (isinstance(value, list) and len(value) == 3 and all(pair(p) for p in value)):
            self.fail(path, f"must be [[z0, z1], [y0, y1], [x0, x1]] with integers 0 <= a < b, got {value!r}")

    def sample(self, at: str, item: dict, meta: dict, default_voxel_size: Any, folder: Path,
               paths: dict) -> Sample:
        path = sample_path(folder, item["path"])
        if path in paths:
            self.fail(f"{at}.path", f"also the path of {paths[path]} (line {self.line(paths[path])})",
                      "give each sample its own volume folder")
        paths[path] = f"{at}.path"
        source = voxel_size = box = None
        if "voxel_size" in item:
            voxel_size = check_voxel_size(item["voxel_size"])
        elif default_voxel_size is not None:
            voxel_size = self.voxel_size("voxel_size", default_voxel_size)
        problem = bucket_error(path)
        if problem:
            self.fail(f"{at}.path", problem.removeprefix(f"cannot write {path}: "))
        if path.exists() and not path.is_dir():
            self.fail(f"{at}.path", f"{path} is a file, not a volume folder", "name a .zarr folder")
        if "source" in item:
            source = (folder / item["source"]).resolve()
            if not source.exists():
                self.fail(f"{at}.source", f"no such file or folder: {source}",
                          "check the path (relative to the study folder)")
            if voxel_size is None:
                self.fail(f"{at}.voxel_size", "missing; a source needs a voxel size",
                          "give voxel_size [z, y, x] on the sample or at the top of the file")
        elif "box" in item:
            self.fail(f"{at}.box", "a crop is made at ingest, so it needs a source",
                      "give the source to ingest from, or remove box")
        elif not path.is_dir() and not item.get("labels"):
            self.fail(f"{at}.path", f"no volume folder at {path}",
                      "check the path (relative to the study folder), or give a source to ingest from")
        elif not path.is_dir() and voxel_size is None:
            self.fail(f"{at}.voxel_size", "missing; a volume made from labels alone needs a voxel size",
                      "give voxel_size [z, y, x] on the sample or at the top of the file")
        if "box" in item:
            box = tuple(tuple(p) for p in item["box"])
        labels = self.label_sources(f"{at}.labels", item.get("labels") or {}, folder)
        return Sample(id=item["id"], path=path, source=source, voxel_size=voxel_size, box=box,
                      held_out=item.get("held_out", False), meta=meta, labels=labels)

    def label_sources(self, at: str, value: dict, folder: Path) -> tuple[tuple[str, Path, dict], ...]:
        """A sample's segmentations to ingest: name -> a source, or {source, phase_names}."""
        from ..engine.ingest import parse_phase_names

        out = []
        for name, spec in value.items():
            f = f"{at}.{name}"
            if not (isinstance(name, str) and ID_PATTERN.fullmatch(name) and not name.startswith(".")):
                self.fail(f, f"a label name must be letters, digits, '.', '_' or '-'; got {name!r}")
            if isinstance(spec, dict):
                for key in spec:
                    if key not in LABEL_SOURCE_FIELDS:
                        self.unknown(f"{f}.{key}", LABEL_SOURCE_FIELDS)
                if "source" not in spec:
                    self.fail(f"{f}.source", "missing", "give the segmentation's file or folder")
            else:
                spec = {"source": spec}
            where = f"{f}.source" if isinstance(value[name], dict) else f
            self.value(where, spec["source"], _PATH)
            source = (folder / spec["source"]).resolve()
            if not source.exists():
                self.fail(where, f"no such file or folder: {source}",
                          "check the path (relative to the study folder)")
            try:
                names = parse_phase_names(spec.get("phase_names"))
            except Exception as err:
                self.fail(f"{f}.phase_names", str(err).replace("--phase-names takes", "takes"))
            out.append((name, source, names))
        return tuple(out)

    # ------------------------------------------------------------ the stages
    def stages(self, value: Any) -> tuple[dict, set]:
        stages, explicit = copy.deepcopy(DEFAULT_STAGES), set()
        if value is None:
            return stages, explicit
        for key, v in self.mapping("stages", value, "stage: parameters").items():
            key, f = str(key), f"stages.{key}"
            if key not in STAGES:
                self.unknown(f, tuple(STAGES))
            if v is False:
                stages.pop(key, None)
                continue
            explicit.add(key)
            params = {p: copy.deepcopy(d) for p, (_, d) in STAGES[key].items()}
            if v is not True and v is not None:
                given = self.mapping(f, v, "parameters, true or false")
                if key == "regress" and "labels" in given:
                    explicit.add("regress.labels")
                for p, pv in given.items():
                    if str(p) not in STAGES[key]:
                        self.unknown(f"{f}.{p}", tuple(STAGES[key]))
                    params[p] = self.value(f"{f}.{p}", pv, STAGES[key][p][0])
            stages[key] = params
        return {s: stages[s] for s in STAGES if s in stages}, explicit

    def cross_check(self, stages: dict, explicit: set, samples: tuple[Sample, ...]) -> None:
        made = set(stages.get("segment", {}).get("methods", ()))
        made |= {"hybrid_annotation"} if "hybrid" in made else set()
        if "unet" in stages:
            made |= {"unet", "unet_cta"} if stages["unet"]["cta"] else {"unet"}
        for i, s in enumerate(samples):
            for name, _, _ in s.labels:
                if name in made:
                    self.fail(f"samples[{i}].labels.{name}", f"labels/{name} is what a porevox stage "
                              "of this study writes", "give the segmentation another name")
        if "unet" in stages:
            methods = stages.get("segment", {}).get("methods", [])
            need = ["hybrid", "otsu"] if stages["unet"]["cta"] else ["hybrid"]
            missing = [m for m in need if m not in methods]
            if missing:
                where = "stages.segment.methods" if "segment" in stages else "stages.segment"
                self.fail(where, f"unet trains on {' and '.join(missing)} labels, which segment "
                          "does not make", f"add {', '.join(missing)} to stages.segment.methods, "
                          "or set unet: false (or cta: false for otsu)")
        if "regress" not in stages:
            return
        if "quantify" not in stages:
            self.fail("stages.quantify", "regress needs quantify", "enable quantify or set regress: false")
        if "regress.labels" not in explicit:   # by default, every label set quantified
            stages["regress"]["labels"] = list(stages["quantify"]["labels"])
        extra = [lb for lb in stages["regress"]["labels"] if lb not in stages["quantify"]["labels"]]
        if extra:
            self.fail("stages.regress.labels", f"{', '.join(extra)} not among quantify's labels",
                      "add them to stages.quantify.labels")
        target = stages["regress"]["target"]
        n = sum(_is_num(s.meta.get(target)) for s in samples)
        if n < 3:
            if "regress" in explicit:
                self.fail("stages.regress.target", f"regression needs 3 samples with a {target} value; "
                          f"{n} have one", f"give {target} on more samples, or set regress: false")
            logger.info("study: regress skipped, %d samples have a %s value (3 needed)", n, target)
            del stages["regress"]
