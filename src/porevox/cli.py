"""The ``porevox`` command line: a thin typer app over :mod:`porevox.pipelines`.

``--json`` prints exactly one JSON object on stdout; logs and progress go to stderr.
Exit status 0 on success, 2 on bad input with a one-line reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import sys
from pathlib import Path

import typer

from . import __version__
from .engine.location import is_remote, location
from .errors import InvalidVolumeError, PorevoxError

app = typer.Typer(
    name="porevox",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tomograms of porous materials to segmentations, features and models, at any scale.",
)

logger = logging.getLogger("porevox")


# --------------------------------------------------------------------------- plumbing
def _guard(func):
    """Turn any error into one line on stderr and exit status 2; the traceback goes
    to the log file (:func:`_log_path`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - every error path ends in one line
            _fail(err)

    return wrapper


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}; check the path and its permissions"
    return " ".join(str(err).split()) or type(err).__name__


def _fail(err: Exception):
    """Leave with one line and exit status 2; the traceback goes to the log file
    (and to the terminal with -v, for errors that are not porevox's own)."""
    import traceback

    import dask

    trace = logging.getLogger("porevox.traceback")
    trace.debug("".join(traceback.format_exception(err)))
    if isinstance(err, MemoryError):
        message = "out of memory; give the workers more memory (--memory-limit) or use smaller chunks"
    elif isinstance(err, (PorevoxError, ValueError, TypeError, OSError)):
        message = _one_line(err)
    else:
        log = next((h.baseFilename for h in trace.handlers if hasattr(h, "baseFilename")), None)
        message = (f"internal error ({type(err).__name__}: {_one_line(err)[:200]}); the traceback is "
                   f"{f'in {log}' if log else 'shown with -v'}; please report it")
    if dask.config.get("porevox.verbose", 0) and not isinstance(err, PorevoxError):
        typer.echo("".join(traceback.format_exception(err)).rstrip(), err=True)
    typer.echo(f"porevox: error: {message}", err=True)
    raise typer.Exit(2) from None


def _log_path() -> Path:
    """Where every invocation logs in full (tracebacks too): ``$POREVOX_LOG``, else
    ``porevox/porevox.log`` in the user's state folder."""
    if os.environ.get("POREVOX_LOG"):
        return Path(os.environ["POREVOX_LOG"])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "porevox" / "porevox.log"


def _emit(result: dict, as_json: bool, human) -> None:
    if as_json:   # JSON has no inf or NaN: they become null
        from .pipelines import finite_json

        sys.stdout.write(json.dumps(finite_json(result), default=str, allow_nan=False) + "\n")
    else:
        human(result)


def _session(ctx: typer.Context):
    from .pipelines import session

    opts = ctx.obj or {}
    return session(opts.get("scheduler"), n_workers=opts.get("workers"),
                   threads_per_worker=opts.get("threads_per_worker"),
                   memory_limit=opts.get("memory_limit"))


def _progress() -> bool:
    """Whether progress bars were asked for (--progress, quiet off, stderr a TTY)."""
    import dask

    return bool(dask.config.get("porevox.progress", False))


def _setup_logging(verbose: int, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    handler.setLevel(level)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("porevox").setLevel(logging.DEBUG)
    logging.getLogger("distributed").setLevel(logging.INFO if verbose > 1 else logging.WARNING)
    trace = logging.getLogger("porevox.traceback")   # the log file only
    trace.propagate = False
    trace.handlers[:] = []
    try:
        from logging.handlers import RotatingFileHandler

        path = _log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        file = RotatingFileHandler(path, maxBytes=8 * 2**20, backupCount=2, encoding="utf-8")
    except OSError:   # no log file where it cannot be written; the terminal still has -v
        return
    file.setFormatter(logging.Formatter(f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s"))
    root.addHandler(file)
    trace.addHandler(file)


def _parse_meta(items: list[str]) -> dict:
    import yaml

    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PorevoxError(f"--meta takes key=value; got {item!r} (e.g. --meta material=copper)")
        meta[key.strip()] = yaml.safe_load(value) if value else ""
    return meta


def _print_summary(s: dict) -> None:
    typer.echo(f"{s['path']}")
    typer.echo(f"  shape      {tuple(s['shape'])} (z, y, x)  " + (
        f"{s['dtype']}  {s['nbytes'] / 1e6:.1f} MB" if s.get("image", True) else "label images only"))
    typer.echo(f"  chunks     {tuple(s['chunks'])}")
    typer.echo(f"  voxel size {tuple(s['voxel_size'])} {s['unit']}")
    typer.echo(f"  sample     {s['sample'] or '-'}")
    typer.echo(f"  labels     {', '.join(s['labels']) or '-'}")
    for stage, rec in s["provenance"].items():
        typer.echo(f"  stage      {stage}: " + ("killed while publishing; rerun it" if rec.get("pending") else
                   f"finished {rec.get('finished')} in {rec.get('seconds')} s "
                   f"(porevox {rec.get('porevox_version')})"))


def _print_study(m: dict) -> None:
    typer.echo(f"{m['name']}: {len(m['samples'])} samples (study.yaml)")
    typer.echo(f"  {'sample':<18} {'D':>6} {'σ/σ0':>8} {'τ factor':>9} {'σ µS/cm':>9}")
    for s in m["samples"]:
        typer.echo(f"  {s['id']:<18} {s['relative_density']:>6.3f} "
                   f"{s['relative_conductivity']:>8.4f} {s['tortuosity_factor']:>9.3f} "
                   f"{s['conductivity']:>9.2f}")


def _print_version(value: bool) -> None:
    """--version, while the options are parsed (before a command is looked for)."""
    if value:
        typer.echo(__version__)
        raise typer.Exit()


# --------------------------------------------------------------------------- app
@app.callback()
def main_options(
    ctx: typer.Context,
    scheduler: str | None = typer.Option(
        None, "--scheduler", envvar="DASK_SCHEDULER_ADDRESS",
        help="Address of an existing Dask scheduler (default: start a LocalCluster)."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="LocalCluster worker processes (default: sized to the machine)."),
    threads_per_worker: int | None = typer.Option(
        None, "--threads-per-worker", min=1, help="Threads per LocalCluster worker."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", help="Memory limit per LocalCluster worker, e.g. 4GB."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-vv for Dask's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """porevox: FIB-SEM / X-ray tomograms of porous materials, at any scale."""
    _setup_logging(verbose, quiet)
    import dask

    dask.config.set({"porevox.progress": progress and not quiet and sys.stderr.isatty(),
                     "porevox.verbose": verbose, "porevox.worker_logs": verbose > 1})
    ctx.obj = {"scheduler": scheduler, "workers": workers,
               "threads_per_worker": threads_per_worker, "memory_limit": memory_limit}


@app.command()
@_guard
def ingest(
    ctx: typer.Context,
    src: Path = typer.Argument(
        ..., help="Multi-page TIFF, folder of TIFF slices, .npy, raw file or Zarr array."),
    out: str | None = typer.Argument(
        None, help="The volume to write (a new .zarr folder, or s3://... URL); with --labels, a new "
                   "volume of label images only (or give --into to join a volume)."),
    voxel_size: tuple[float, float, float] | None = typer.Option(
        None, "--voxel-size", help="Voxel size along z y x (the slice pitch first); with --labels, "
                                   "checked against the volume's."),
    labels: str | None = typer.Option(
        None, "--labels", help="SRC is a segmentation (uint8/uint16 values): write it as labels/NAME "
                               "of the volume given by --into, or of a new volume OUT."),
    into: str | None = typer.Option(None, "--into", help="With --labels: the volume of its image."),
    phase_names: str | None = typer.Option(
        None, "--phase-names", help="With --labels: value=name pairs, e.g. 0=pore,1=LSM,2=YSZ."),
    unit: str = typer.Option("micrometer", "--unit", help="Unit of the voxel size."),
    meta: list[str] = typer.Option([], "--meta", help="Sample metadata key=value (repeatable)."),
    chunks: tuple[int, int, int] | None = typer.Option(
        None, "--chunks", help="Chunk shape z y x (default: ~64 MB chunks from shape and dtype)."),
    shards: tuple[int, int, int] | None = typer.Option(
        None, "--shards", help="Shard shape z y x, whole multiples of --chunks (default: ~64 MB shards "
                               "where the chunks are small; one file or object each)."),
    kind: str | None = typer.Option(
        None, "--kind", help="tiff, tiff-folder, npy, raw or zarr (default: from the path)."),
    shape: tuple[int, int, int] | None = typer.Option(None, "--shape", help="Raw files: shape z y x."),
    dtype: str | None = typer.Option(None, "--dtype", help="Raw files: uint8, uint16 or float32."),
    offset: int = typer.Option(0, "--offset", help="Raw files: header bytes to skip."),
    byte_order: str = typer.Option("little", "--byte-order", help="Raw files: little or big."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing porevox volume at OUT (nothing else)."),
    allow_nan: bool = typer.Option(False, "--allow-nan",
                                   help="Float stacks: keep NaN and ±inf voxels as missing values "
                                        "(read as the median gray value) instead of refusing them."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Ingest a stack into a porevox volume (Zarr v3 + OME-Zarr metadata), or a
    segmentation into a volume's labels (--labels NAME --into VOLUME)."""
    from .pipelines import ingest_labels, ingest_volume, plan_ingest, plan_label_ingest

    if labels is not None:
        if (into is None) == (out is None):
            raise InvalidVolumeError("--labels writes into the volume of its image (--into VOLUME) or into a "
                                     "new volume of label images only (OUT with --voxel-size): give one")
        label_plan = plan_label_ingest(src, into or out, labels, voxel_size=voxel_size,
                                       phase_names=phase_names, kind=kind, shape=shape, dtype=dtype,
                                       offset=offset, byte_order=byte_order, new=out is not None,
                                       unit=unit, chunks=chunks, shards=shards, sample=_parse_meta(meta))
        with _session(ctx):
            result = ingest_labels(label_plan)
        _emit(result, as_json, lambda r: typer.echo(
            f"labels/{r['labels']} {'written' if r['ingested'] else 'already ingested (nothing to do)'}: "
            + ", ".join(f"{v} = {p['name']} ({p['voxels']:,} voxels)" for v, p in r["phases"].items())))
        return
    if into is not None or phase_names is not None:
        raise InvalidVolumeError("--into and --phase-names go with --labels NAME (a segmentation); "
                                 "drop them to ingest an image")
    if out is None or voxel_size is None:
        missing = " and ".join(m for m, v in (("OUT (the new volume)", out),
                                               ("--voxel-size Z Y X", voxel_size)) if v is None)
        raise InvalidVolumeError(f"porevox ingest needs {missing} to ingest an image, or --labels NAME "
                                 "--into VOLUME for a segmentation; see porevox ingest --help")
    plan = plan_ingest(src, out, voxel_size, unit=unit, sample=_parse_meta(meta), chunks=chunks,
                       shards=shards, kind=kind, shape=shape, dtype=dtype, offset=offset,
                       byte_order=byte_order, overwrite=overwrite, allow_nan=allow_nan)
    with contextlib.nullcontext() if plan.done else _session(ctx):
        result = ingest_volume(plan)
    _emit(result, as_json, lambda r: (
        typer.echo("ingested:" if r["ingested"] else "already ingested (nothing to do):"),
        _print_summary(r)))


@app.command()
@_guard
def info(
    volume: str = typer.Argument(..., help="A porevox volume (.zarr folder, or s3://... URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Summarise a volume: shape, dtype, chunks, voxel size, metadata, labels, provenance."""
    from .pipelines import volume_info

    _emit(volume_info(volume), as_json, _print_summary)


def _print_run(r: dict) -> None:
    """A finished run: what ran, the tables it made, where the report is."""
    folder = Path(r["study"]).parent
    typer.echo(f"{r['name']}: {r['tomograms']} tomograms, {r['ran']} steps ran, {r['skipped']} "
               f"were done before, {r['seconds']:.0f} s")
    if (folder / "table1.md").exists():
        typer.echo("segmentation against the truth (the paper's Table 1):")
        typer.echo((folder / "table1.md").read_text().rstrip())
    for table in sorted(folder.glob("regression/*/table2.json")):
        b = json.loads(table.read_text())["best"]
        typer.echo(f"structure–property model on labels/{table.parent.name} (Table 2's best): "
                   f"{', '.join(b['features'])}: LOOCV R² {b['loocv_r2']:.3f}"
                   + (f", test R² {b['test_r2']:.3f}" if b.get("test_r2") is not None else ""))
    if (folder / "generation" / "table3.md").exists():
        typer.echo("generated against real microstructures, R² per paste (the paper's Table 3):")
        typer.echo((folder / "generation" / "table3.md").read_text().rstrip())
    for t in (r.get("results", {}).get("generate") or {}).get("design", []):
        typer.echo(f"  design: target {t['target']:>7.1f} µS/cm, " + (
            f"predicted {t['predicted']:>7.1f} ({100 * t['relative_error']:+.0f} %)" if not t.get("flag")
            else f"no valid prediction: {t['flag']}"))
    for perf in r.get("performance_reports", [])[-1:]:
        typer.echo(f"Dask performance report: {folder / perf}")
    if r.get("cluster"):
        typer.echo(f"Dask dashboard (while it ran): {r['cluster']['dashboard']}")
    if r.get("report"):
        typer.echo(f"report: {r['report']}")


@app.command("run")
@_guard
def run_cmd(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="A study.yaml (or its folder); porevox synth writes one."),
    parallel: int | None = typer.Option(None, "--parallel", min=1,
                                        help="Steps in flight at once (default: twice the worker threads)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the run record) on stdout."),
) -> None:
    """Every stage of a study for every tomogram, ordered by their data, resumable:
    a rerun redoes only what had not finished. Writes report.html beside the study."""
    from .pipelines.run import run_study
    from .pipelines.studyfile import claim_outputs, load_study

    claim_outputs(load_study(study))   # a bad study file or output fails before any cluster starts
    with _session(ctx) as client:
        typer.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        record = run_study(study, parallel=parallel, progress=_progress() and not as_json)
    _emit(record, as_json, _print_run)


@app.command()
@_guard
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's files."),
    epochs: int = typer.Option(20, "--epochs", min=1,
                               help="Most U-Net epochs (early stopping may end sooner)."),
    generate_minutes: float = typer.Option(2.0, "--generate-minutes", min=0.01,
                                           help="Training time of each generative model."),
    generate_steps: int | None = typer.Option(None, "--generate-steps", min=1,
                                              help="Most training steps of each generative model "
                                                   "(default: the cpu preset's)."),
    generate_n: int = typer.Option(16, "--generate-n", min=2,
                                   help="Generated images per class and per design target."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """The twin study end to end: porevox synth (demo preset), then porevox run on the
    embedded cluster — Table 1 of its segmentations, every sample's features with
    figures, Table 2 with SHAP, the DDPM and cGAN judged by Table 3 with inverse
    design — and report.html; then a stack ingested as a user's TIFF."""
    from .pipelines import run_demo

    with _session(ctx) as client:
        typer.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        result = run_demo(out, epochs=epochs, generate_minutes=generate_minutes,
                          generate_steps=generate_steps, generate_n=generate_n,
                          progress=_progress() and not as_json)

    def human(r):
        _print_study(r["study"])
        typer.echo(f"  contact sheet: {r['study']['preview']}")
        _print_run(r["run"])
        typer.echo("a twin image exported as TIFF and ingested like a user's stack:")
        _print_summary(r["ingested"])
        typer.echo(f"  gray value percentiles (1, 50, 99 %): {r['histogram_percentiles']}")

    _emit(result, as_json, human)


@app.command()
@_guard
def synth(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Folder for the study's volumes and study.yaml."),
    preset: str = typer.Option("demo", "--preset", help="demo (small, < 1 min) or paper (the paper's VOIs)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same bytes."),
    preview: bool = typer.Option(False, "--preview", help="Also write contact_sheet.png."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Synthesise a digital-twin study: sintered copper imaged by a FIB-SEM model, with truth."""
    from .pipelines import synthesize_study
    from .pipelines.synth import claim_study

    if preset not in ("demo", "paper"):
        raise PorevoxError(f"--preset must be demo or paper; got {preset!r}")
    claim_study(out_dir, preset=preset, seed=seed, preview=preview)   # before the cluster starts
    with _session(ctx):
        manifest = synthesize_study(out_dir, preset=preset, seed=seed, preview=preview)

    def human(m):
        _print_study(m)
        if m.get("preview"):
            typer.echo(f"  contact sheet: {m['preview']}")

    _emit(manifest, as_json, human)


def _is_study(path: Path) -> bool:
    if is_remote(path):
        return False
    return path.suffix in (".yaml", ".yml") or (path.is_dir() and (path / "study.yaml").is_file()
                                                 and path.suffix != ".zarr")


def _print_features(r: dict) -> None:
    for k, v in r.items():
        if isinstance(v, float):
            typer.echo(f"{k:<32} {v:.6g}")
        elif isinstance(v, list) and v and all(isinstance(x, float) for x in v):
            typer.echo(f"{k:<32} [{', '.join(f'{x:.6g}' for x in v)}]")
        elif isinstance(v, dict):
            typer.echo(f"{k:<32} " + ", ".join(f"{a}: {b:.6g}" if isinstance(b, float) else f"{a}: {b}"
                                               for a, b in v.items()))
        else:
            typer.echo(f"{k:<32} {v}")


@app.command()
@_guard
def quantify(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="A porevox volume (.zarr folder, or s3://... URL), or a "
                                           "study.yaml (or its folder) to quantify every tomogram of."),
    labels: str = typer.Option("truth", "--labels", help="The segmentation: labels/<NAME>."),
    phase: list[str] | None = typer.Option(
        None, "--phase",
        help="The phase measured: a label value, values joined by '+' (1+2) or a phase name "
             "(--phase-names of ingest). Repeat for several phases, one row each. Default: 1, the solid."),
    axis: str = typer.Option("y", "--axis", help="Transport axis: z, y or x."),
    directions: str | None = typer.Option(
        None, "--directions",
        help="More tortuosity directions: comma-separated signed axes (+z,-y,...), 'paper' "
             "(the paper's five) or 'all'."),
    order: int = typer.Option(2, "--order", help="Fast-marching scheme: 1 or 2."),
    sigma: float | None = typer.Option(None, "--sigma",
                                       help="Curvature smoothing in the voxel size's unit."),
    tortuosity_method: str = typer.Option(
        "auto", "--tortuosity-method", help="auto, whole (one solve per tomogram) or blocks."),
    scratch: str | None = typer.Option(
        None, "--scratch", help="Where the block tortuosity solver keeps its blocks: a folder every "
                                "worker sees (default: inside the volume)."),
    with_conductivity: bool = typer.Option(
        False, "--conductivity", help="Volumes: also solve for the effective conductivity along --axis."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Studies: skip the PNG figures."),
    force: bool = typer.Option(False, "--force", help="Recompute even if done with the same inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Every microstructure feature of a segmentation: D, SA, φ, τ, M, G, α, β, SP2D, shape
    index. A volume: stored in its attributes and printed. A study: every tomogram in
    parallel into features.csv / features.parquet, with figures."""
    from .pipelines.quantify import make_options

    dirs = None
    if directions:
        dirs = directions if directions in ("paper", "all") else [d for d in directions.split(",") if d]
    options = {"directions": dirs, "order": order, "sigma": sigma,
               "tortuosity_method": tortuosity_method, "tortuosity_scratch": scratch}
    make_options(axis=axis, **options)                     # bad options fail before the cluster starts
    if _is_study(location(target)):
        from .pipelines.feature_study import WRITES, markdown, quantify_study
        from .pipelines.segmentation_study import study_volumes

        study_volumes(target, writes=WRITES)
        with _session(ctx):
            result = quantify_study(target, labels=labels, phase=phase or None, axis=axis, force=force,
                                    figures=not no_figures, **options)

        def human(r):
            import pandas as pd

            typer.echo(markdown(pd.DataFrame(r["rows"])))
            typer.echo(f"table: {r['csv']} and {r['parquet']}")
            for name, figs in r["figures"].items():
                typer.echo(f"figures ({name}): " + ", ".join(figs.values()))

        _emit(result, as_json, human)
        return
    from .engine import open_volume, phases
    from .pipelines import volume_info
    from .pipelines.quantify import quantify_phases
    from .pipelines.volumes import tidy_volume

    have = volume_info(target)["labels"]
    tidy_volume(target)
    if labels not in have:
        raise PorevoxError(f"{target} has no label image {labels!r}; it has {list(have) or 'none'}: "
                           "pass --labels <one of them> or segment the volume first")
    named = phases.names(open_volume(target, mode="r").array(f"labels/{labels}"))
    for p in phase or ():          # a phase that names nothing fails before the cluster starts
        phases.parse(p, named, where=f"{target}: labels/{labels}")
    with _session(ctx):
        results = quantify_phases(target, labels=labels, phases=phase or None, axis=axis,
                                  with_conductivity=with_conductivity, force=force, **options)
    if len(results) == 1:
        _emit(results[0], as_json, _print_features)
        return

    def human(r):
        for one in r["phases"]:
            typer.echo(f"--- phase {one['phase']}")
            _print_features(one)

    _emit({"volume": str(target), "labels": labels, "phases": results}, as_json, human)


def _split_list(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated option values as one list (None when absent)."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _print_regression(r: dict, files: bool = True) -> None:
    from .pipelines.regress import markdown, shap_summary

    typer.echo(markdown(r))
    typer.echo("SHAP (mean |SHAP|):")
    for line in shap_summary(r):
        typer.echo(f"  {line}")
    for name, path in r.get("files", {}).items() if files else ():
        typer.echo(f"{name:<18} {path}")


@app.command()
@_guard
def regress(
    ctx: typer.Context,
    table: Path = typer.Argument(..., help="A feature table (features.csv or .parquet from quantify)."),
    target: str = typer.Option("conductivity", "--target", help="The column to predict."),
    features: list[str] = typer.Option(
        None, "--features", help="Feature columns or the paper's symbols (D SA phi tau G M alpha beta), "
                                 "comma-separated or repeated (default: the paper's eight)."),
    labels: str | None = typer.Option(None, "--labels",
                                      help="Rows of one segmentation (the table's 'labels' column)."),
    phase: str | None = typer.Option(
        None, "--phase", help="Rows of this phase (the table's phase column), where it holds several."),
    test_samples: list[str] = typer.Option(
        None, "--test-samples", help="Held-out rows by id, comma-separated or repeated (default: rows "
                                     "marked held_out, else the last VOI of samples with several)."),
    min_features: int = typer.Option(2, "--min-features", help="Fewest features per model."),
    max_features: int | None = typer.Option(
        None, "--max-features", help="Most features per model (default: all, as samples allow)."),
    drop_nan: bool = typer.Option(False, "--drop-nan", help="Leave out rows with NaN features."),
    top: int = typer.Option(10, "--top", help="Models listed besides the paper's."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Output folder (default: regression/<labels> beside TABLE)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the PNG figures."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Structure–property models (the paper's Table 2, Fig. 4): every feature subset as
    StandardScaler + LinearRegression, LOOCV and test sets, SHAP."""
    from .pipelines.regress import plan_regression, run_regression

    plan = plan_regression(table, target=target, features=_split_list(features), labels=labels,
                           phase=phase, test_samples=_split_list(test_samples), min_features=min_features,
                           max_features=max_features, drop_nan=drop_nan, top=top,
                           out=out or "auto", figures=not no_figures)
    with _session(ctx) if plan.parallel else contextlib.nullcontext():
        result = run_regression(plan)
    _emit(result, as_json, _print_regression)


@app.command()
@_guard
def preprocess(
    ctx: typer.Context,
    volume: str = typer.Argument(..., help="A porevox volume (.zarr folder, or s3://... URL)."),
    destripe: bool = typer.Option(True, "--destripe/--no-destripe", help="FFT curtaining filter."),
    shading: bool = typer.Option(True, "--shading/--no-shading",
                                 help="Shading correction by histogram shifting."),
    force: bool = typer.Option(False, "--force", help="Redo even if done with the same inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Destripe and shading-correct the image into the volume's `preprocessed` array."""
    from .engine import open_volume
    from .pipelines import preprocess_volume, volume_info
    from .pipelines.preprocess import resolve_params
    from .pipelines.volumes import tidy_volume

    resolve_params(volume_info(volume)["shape"], destripe=destripe, shading=shading)
    open_volume(volume, mode="r").array("image")   # a volume of label images only: one line, here
    tidy_volume(volume)
    with _session(ctx):
        r = preprocess_volume(volume, destripe=destripe, shading=shading, force=force)
    result = {"volume": str(volume), "written": r.name, "skipped": r.skipped}
    _emit(result, as_json, lambda r: typer.echo(
        f"{r['written']}: {'already done (nothing to do)' if r['skipped'] else 'written'}"))


@app.command()
@_guard
def segment(
    ctx: typer.Context,
    volume: str = typer.Argument(..., help="A porevox volume (.zarr folder, or s3://... URL)."),
    method: str = typer.Option("otsu", "--method",
                               help="otsu (CTA), threshold (--threshold), hybrid (SLIC annotation) or unet."),
    threshold: float | None = typer.Option(None, "--threshold",
                                           help="threshold: the gray value from which a voxel is solid."),
    model: Path | None = typer.Option(None, "--model", help="unet: a model.pt (train-unet) or model.keras."),
    name: str | None = typer.Option(None, "--name", help="Output labels/<NAME> (default: the method)."),
    src: str | None = typer.Option(None, "--image",
                                   help="Array to segment (default: preprocessed, else image)."),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="unet: also store class probabilities."),
    force: bool = typer.Option(False, "--force", help="Redo even if done with the same inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Segment a volume: labels/<method> with 1 = copper, 0 = pore."""
    from .pipelines import segment_volume
    from .pipelines.segment import check_segment
    from .pipelines.volumes import tidy_volume

    check_segment(volume, method, model=model, src=src, name=name, threshold=threshold)
    tidy_volume(volume)
    with _session(ctx):
        result = segment_volume(volume, method, name=name, src=src, model=model,
                                probabilities=probabilities, force=force, threshold=threshold)
    _emit(result, as_json, lambda r: [typer.echo(f"{k:<12} {v}") for k, v in r.items()])


@app.command("train-unet")
@_guard
def train_unet(
    ctx: typer.Context,
    volumes: list[Path] = typer.Argument(..., help="Volumes whose annotations to train on."),
    out: Path = typer.Option(..., "--out", help="The model file to write (.pt; a .json and .png beside)."),
    labels: str = typer.Option("hybrid_annotation", "--labels", help="Annotation or segmentation to learn."),
    every: int = typer.Option(5, "--every", min=1, help="Train on every N-th slice (the paper: 5)."),
    epochs: int = typer.Option(100, "--epochs", min=1, help="Most epochs (early stopping may end sooner)."),
    patience: int = typer.Option(10, "--patience", min=1, help="Early stopping: epochs without improvement."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of slices held out."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a U-Net on the annotations of one or more volumes."""
    from .pipelines import train_unet_volumes
    from .pipelines.train import check_training

    check_training(volumes, out, labels, every)
    with _session(ctx):
        result = train_unet_volumes(volumes, out, labels=labels, every=every, epochs=epochs,
                                    patience=patience, val_fraction=val_fraction, seed=seed,
                                    progress=_progress() and not as_json)
    _emit(result, as_json, lambda r: [typer.echo(f"{k:<14} {v}") for k, v in r.items()])


@app.command()
@_guard
def score(
    ctx: typer.Context,
    volume: str = typer.Argument(..., help="A porevox volume (.zarr folder, or s3://... URL)."),
    labels: str = typer.Option(..., "--labels", help="The segmentation to score: labels/<NAME>."),
    truth: str = typer.Option("truth", "--truth", help="The reference: labels/<NAME>."),
    phase: str | None = typer.Option(
        None, "--phase", help="Score one phase against the rest (reported as cu, the rest as pore): a "
                              "value, values joined by '+', or a phase name. Default: binary images."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Jaccard, precision and recall per phase, and accuracy, against a reference."""
    from .pipelines import score_volume
    from .pipelines.score import check_labels

    check_labels(volume, labels, truth)
    with _session(ctx):
        result = score_volume(volume, labels=labels, truth=truth, phase=phase)
    _emit(result, as_json, lambda r: [typer.echo(f"{k:<16} {v:.4f}" if isinstance(v, float)
                                                 else f"{k:<16} {v}") for k, v in r.items()])


@app.command("segment-study")
@_guard
def segment_study(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="A study folder or its study.yaml (porevox synth makes one)."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Most U-Net epochs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """The paper's Table 1 on a study: CTA, Hybrid, U-Net CTA, U-Net Hybrid vs truth."""
    from .pipelines import segmentation_study
    from .pipelines.segmentation_study import WRITES, markdown, study_volumes

    study_volumes(study, writes=WRITES)   # a bad study file or output fails before the cluster
    with _session(ctx):
        result = segmentation_study(study, epochs=epochs, progress=_progress() and not as_json)
    _emit(result, as_json, lambda r: typer.echo(markdown(r["table"], len(r["samples"]))))


generate_app = typer.Typer(help="Conditional DDPM and cGAN microstructures: train, sample, "
                                  "evaluate (Table 3), design (a target conductivity).",
                             no_args_is_help=True)
app.add_typer(generate_app, name="generate")


def _print_table3(evaluation: dict) -> None:
    from .pipelines.generation_eval import PAPER_TABLE3, markdown

    typer.echo(markdown(evaluation["table3"]))
    typer.echo("  the paper's average R² (HPA, HPB, NPC): " + "; ".join(
        f"{m} {', '.join(f'{v[3]:.2f}' for v in rows.values())}" for m, rows in PAPER_TABLE3.items()))
    figures = ", ".join(evaluation.get("figures", {}).values())
    typer.echo(f"  files: {evaluation['files']['table3_md']}" + (f", figures: {figures}" if figures else ""))


def _print_design(designed: dict) -> None:
    typer.echo(f"  σ from 2-D descriptors: {', '.join(designed['regression']['features'])} "
               f"(LOOCV R² {designed['regression']['loocv_r2']:.3f})")
    for t in designed["targets"]:
        typer.echo(f"  target {t['target']:>7.1f}  " + (
            f"predicted {t['predicted']:>7.1f}  error {t['error']:+7.1f} ({100 * t['relative_error']:+.0f} %)"
            if not t.get("flag") else f"no valid prediction: {t['flag']}"))


@generate_app.command("train")
@_guard
def generate_train(
    study: Path = typer.Argument(..., help="A study folder or its study.yaml."),
    model: str = typer.Option("ddpm", "--model", help="ddpm or cgan."),
    preset: str = typer.Option("cpu", "--preset", help="cpu (64 px crops, < 10 min on 2 cores) or gpu."),
    labels: str = typer.Option("unet", "--labels", help="The segmentation to learn: labels/<NAME>."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps (default: the preset's)."),
    minutes: float | None = typer.Option(None, "--minutes", min=0.01,
                                         help="Stop after this long, with a checkpoint (default: "
                                              "the preset's; resume to go on)."),
    size: int | None = typer.Option(None, "--size", help="Crop size in pixels (default: the preset's)."),
    out: Path | None = typer.Option(None, "--out", help="Model folder (default: STUDY/models/<model>)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train (or resume) a generative model on the study's segmented crops."""
    from .pipelines.generate import check_train, train_generator

    check_train(model, preset)
    result = train_generator(study, kind=model, preset=preset, labels=labels, steps=steps, minutes=minutes,
                             size=size, out=out, seed=seed, progress=_progress() and not as_json)
    _emit(result, as_json, lambda r: [typer.echo(f"{k:<14} {v}") for k, v in r.items()])


@generate_app.command("sample")
@_guard
def generate_sample(
    model: Path = typer.Argument(..., help="A trained model folder (generate train writes one)."),
    paste: str | None = typer.Option(None, "--paste", help="Class: the paste (with --temperature)."),
    temperature: float | None = typer.Option(None, "--temperature", help="Class: sinter temperature °C."),
    conductivity: float | None = typer.Option(None, "--conductivity", help="DDPM: a conductivity (µS/cm)."),
    n: int = typer.Option(16, "-n", help="How many images."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the PNGs and samples.zarr."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same images."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance weight (1: none)."),
    eta: float = typer.Option(1.0, "--eta", help="DDIM η: 1 adds fresh noise each step; 0: deterministic."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Generate binary microstructure images for a class and/or a conductivity."""
    from .pipelines.generate import Generator, claim_samples, write_samples

    gen = Generator(model)
    tag = "-".join(str(v) for v in (paste, temperature and int(temperature), conductivity) if v is not None)
    target = claim_samples(out or Path(model) / "samples" / tag, n)
    images = gen.sample(n, paste=paste, temperature_c=temperature, conductivity=conductivity, seed=seed,
                        steps=steps, guidance=guidance, eta=eta)
    meta = {"model": str(model), "paste": paste, "temperature_c": temperature,
            "conductivity": conductivity, "seed": seed, "steps": steps, "guidance": guidance,
            "eta": eta, "pixel_size": gen.meta["pixel_size"]}
    files = write_samples(images, target, meta)
    result = {**meta, "n": n, "relative_density": float(images.mean()), "zarr": files["zarr"],
              "pngs": len(files["pngs"])}
    _emit(result, as_json, lambda r: [typer.echo(f"{k:<16} {v}") for k, v in r.items()])


@generate_app.command("evaluate")
@_guard
def generate_evaluate(
    study: Path = typer.Argument(..., help="A study folder or its study.yaml."),
    models: list[Path] = typer.Option(None, "--model", help="Model folders (default: STUDY/models/ddpm "
                                                             "and cgan, those that exist)."),
    n: int = typer.Option(128, "-n", help="Generated images per class (against all the real crops)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance weight (1: none)."),
    eta: float = typer.Option(1.0, "--eta", help="DDIM η: 1 adds fresh noise each step; 0: deterministic."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """The Table-3 analog: D, SP2D and shape index of real and generated images, R² per paste."""
    from .pipelines.generate import model_dir
    from .pipelines.generation_study import evaluate_generators

    models = models or [p for p in (model_dir(study, "ddpm"), model_dir(study, "cgan"))
                        if (p / "model.json").exists()]
    if not models:
        raise PorevoxError(f"no trained models under {study}; run porevox generate train STUDY first")
    result = evaluate_generators(study, models, n=n, seed=seed, steps=steps, guidance=guidance,
                                 eta=eta)
    _emit(result, as_json, _print_table3)


@generate_app.command("design")
@_guard
def generate_design(
    study: Path = typer.Argument(..., help="A study folder or its study.yaml (with features.csv)."),
    conductivity: list[str] = typer.Option(..., "--conductivity",
                                           help="Target conductivities (µS/cm), comma-separated "
                                                "or repeated."),
    model: Path | None = typer.Option(None, "--model", help="The DDPM folder (default: STUDY/models/ddpm)."),
    n: int = typer.Option(64, "-n", help="Images per target."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance weight (1: none)."),
    eta: float = typer.Option(1.0, "--eta", help="DDIM η: 1 adds fresh noise each step; 0: deterministic."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Inverse design: microstructures for target conductivities, σ predicted back."""
    from .pipelines.generate import model_dir
    from .pipelines.generation_study import design

    try:
        targets = [float(v) for v in _split_list(conductivity)]
    except ValueError:
        raise PorevoxError(f"--conductivity takes numbers; got {conductivity}") from None
    result = design(study, model or model_dir(study, "ddpm"), targets, n=n, seed=seed, guidance=guidance,
                    eta=eta)
    _emit(result, as_json, _print_design)


def _benchmarks():
    """The benchmark suites: the `benchmarks` package of the source checkout (not
    installed with porevox), found from the working directory or beside ``src/``."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (Path.cwd(), checkout):
        if (root / "benchmarks" / "__init__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("benchmarks")
    raise PorevoxError("the benchmark suites live in the source checkout, not in the installed "
                       "package; install porevox from its repository (make install) and run there")


@app.command()
@_guard
def bench(
    ctx: typer.Context,
    suites: list[str] = typer.Argument(
        None, help="Suites: io, histogram, gaussian, conductivity, synthesis, slic, segmentation, "
                   "quantify, regression, or all; and, only when named, ingest_large, generation, "
                   "outofcore, study, scale, voi."),
    out: Path = typer.Option(
        Path("bench-out"), "--out",
        help="Folder for results.json and results.md (with --tune: tune.md and tune.json)."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes, for a smoke run."),
    tune: bool = typer.Option(
        False, "--tune", help="Measure worker/thread layouts and chunk sizes of the main stages here "
                              "(or on --scheduler's cluster) and write the fastest to the tuned "
                              "configuration ($POREVOX_CONFIG, else ~/.config/porevox/tuned.yaml) "
                              "that later runs use."),
) -> None:
    """Run benchmark suites: porevox against the plain reference code, same run; or
    with --tune, tune layouts and chunk sizes for this machine."""
    benchmarks = _benchmarks()
    if tune:
        if suites:
            raise PorevoxError(f"--tune measures its own stages; drop the suite names {' '.join(suites)}")
        run_tune = importlib.import_module("benchmarks.tune").tune

        result = run_tune(out, quick=quick, scheduler=(ctx.obj or {}).get("scheduler"))
        typer.echo(result["markdown"])
        typer.echo(f"tuned configuration: {result['config_path']}")
        return
    benchmarks.run(suites or ["all"], out, quick=quick)


def main() -> None:
    """The ``porevox`` entry point: a usage error (a missing option, a bad value) is
    one line and exit status 2, like every other error."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False, prog_name="porevox")
    except TyperException as err:   # click's usage errors, as typer carries them
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "porevox"
        message = " ".join(err.format_message().split()).rstrip(".")
        if message:   # none when a bare command printed its help
            typer.echo(f"porevox: error: {where}: {message}; see {where} --help", err=True)
        code = 2
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
