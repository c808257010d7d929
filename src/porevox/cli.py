"""The ``porevox`` command line: a thin typer app over :mod:`porevox.pipelines`.

``--json`` prints exactly one JSON object on stdout; logs and progress go to stderr.
Exit status 0 on success, 2 on bad input with a one-line reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from pathlib import Path

import typer

from . import __version__
from .errors import PorevoxError

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
    """Turn bad input into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (PorevoxError, ValueError, TypeError, FileNotFoundError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            typer.echo(f"porevox: error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _emit(result: dict, as_json: bool, human) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        human(result)


def _session(ctx: typer.Context):
    from .pipelines import session

    opts = ctx.obj or {}
    return session(opts.get("scheduler"), n_workers=opts.get("workers"),
                   threads_per_worker=opts.get("threads_per_worker"),
                   memory_limit=opts.get("memory_limit"))


def _setup_logging(verbose: int, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("porevox").setLevel(level)
    logging.getLogger("distributed").setLevel(logging.INFO if verbose > 1 else logging.WARNING)


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
    typer.echo(f"  shape      {tuple(s['shape'])} (z, y, x)  {s['dtype']}  "
               f"{s['nbytes'] / 1e6:.1f} MB")
    typer.echo(f"  chunks     {tuple(s['chunks'])}")
    typer.echo(f"  voxel size {tuple(s['voxel_size'])} {s['unit']}")
    typer.echo(f"  sample     {s['sample'] or '-'}")
    typer.echo(f"  labels     {', '.join(s['labels']) or '-'}")
    for stage, rec in s["provenance"].items():
        typer.echo(f"  stage      {stage}: finished {rec.get('finished')} in {rec.get('seconds')} s "
                   f"(porevox {rec.get('porevox_version')})")


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
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """porevox: FIB-SEM / X-ray tomograms of porous materials, at any scale."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    _setup_logging(verbose, quiet)
    import dask

    dask.config.set({"porevox.progress": progress and not quiet and sys.stderr.isatty()})
    ctx.obj = {"scheduler": scheduler, "workers": workers,
               "threads_per_worker": threads_per_worker, "memory_limit": memory_limit}


@app.command()
@_guard
def ingest(
    ctx: typer.Context,
    src: Path = typer.Argument(
        ..., help="Multi-page TIFF, folder of TIFF slices, .npy, raw file or Zarr array."),
    out: Path = typer.Argument(..., help="The volume to write (a new .zarr folder)."),
    voxel_size: tuple[float, float, float] = typer.Option(
        ..., "--voxel-size", help="Voxel size along z y x (the slice pitch first)."),
    unit: str = typer.Option("micrometer", "--unit", help="Unit of the voxel size."),
    meta: list[str] = typer.Option([], "--meta", help="Sample metadata key=value (repeatable)."),
    chunks: tuple[int, int, int] | None = typer.Option(
        None, "--chunks", help="Chunk shape z y x (default: ~64 MB chunks from shape and dtype)."),
    kind: str | None = typer.Option(
        None, "--kind", help="tiff, tiff-folder, npy, raw or zarr (default: from the path)."),
    shape: tuple[int, int, int] | None = typer.Option(None, "--shape", help="Raw files: shape z y x."),
    dtype: str | None = typer.Option(None, "--dtype", help="Raw files: uint8, uint16 or float32."),
    offset: int = typer.Option(0, "--offset", help="Raw files: header bytes to skip."),
    byte_order: str = typer.Option("little", "--byte-order", help="Raw files: little or big."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing volume at OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Ingest a stack into a porevox volume (Zarr v3 + OME-Zarr metadata)."""
    from .pipelines import ingest_volume, plan_ingest

    plan = plan_ingest(src, out, voxel_size, unit=unit, sample=_parse_meta(meta), chunks=chunks,
                       kind=kind, shape=shape, dtype=dtype, offset=offset,
                       byte_order=byte_order, overwrite=overwrite)
    with contextlib.nullcontext() if plan.done else _session(ctx):
        result = ingest_volume(plan)
    _emit(result, as_json, lambda r: (
        typer.echo("ingested:" if r["ingested"] else "already ingested (nothing to do):"),
        _print_summary(r)))


@app.command()
@_guard
def info(
    volume: Path = typer.Argument(..., help="A porevox volume (.zarr folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Summarise a volume: shape, dtype, chunks, voxel size, metadata, labels, provenance."""
    from .pipelines import volume_info

    _emit(volume_info(volume), as_json, _print_summary)


@app.command()
@_guard
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """The study end to end on the cluster (so far: a test stack, ingested and summarised)."""
    from .pipelines import run_demo

    with _session(ctx):
        result = run_demo(out)

    def human(r):
        _print_summary(r["volume"])
        typer.echo(f"  gray value percentiles (1, 50, 99 %): {r['histogram_percentiles']}")
        typer.echo(f"  Dask dashboard (while it ran): {r['dashboard']}")

    _emit(result, as_json, human)


@app.command()
@_guard
def bench(
    suites: list[str] = typer.Argument(
        None, help="Suites to run: io, histogram, gaussian, ingest_large, or all."),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Folder for results.json and results.md."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes, for a smoke run."),
) -> None:
    """Run benchmark suites: porevox against the plain reference code, same run."""
    try:
        import benchmarks
    except ImportError:
        raise PorevoxError("the benchmark suites live in the source checkout; run from the "
                           "porevox repository root (make bench)") from None
    benchmarks.run(suites or ["all"], out, quick=quick)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
