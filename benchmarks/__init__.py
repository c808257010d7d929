"""porevox benchmarks: each case measures porevox against the plain reference code in
the same run (ratio = reference time / porevox time, > 1: porevox faster), with
voxels/s, peak memory per process and, for Dask cases, graph construction apart from
compute.

    python -m benchmarks all --out bench-out [--quick]
    python -m benchmarks ingest_large --out bench-large [--large-mib 2048]

``SUITES`` maps a suite name to ``callable(cfg) -> list[dict]``; :func:`run` runs
suites and writes ``results.json`` and ``results.md``. ``all`` leaves out the
suites in ``EXPLICIT_ONLY`` (a 2 GiB ingest, the generative models' training, the
out-of-core run, the many-tomogram study, the every-feature scale run, the paper's
VOI, the OME-Zarr pyramids and phases, and object storage, ~3 minutes).
Only this package's own
modules are imported here; the heavy libraries are imported in the measuring
processes.
"""

from __future__ import annotations

from pathlib import Path

from . import (
    conductivity_suite,
    gaussian_suite,
    generation_suite,
    histogram_suite,
    ingest_large_suite,
    io_suite,
    objectstore_suite,
    ome_suite,
    outofcore_suite,
    quantify_suite,
    regression_suite,
    scale_suite,
    segmentation_suite,
    slic_suite,
    study_suite,
    synthesis_suite,
    voi_suite,
)
from .harness import Config, run_suites

SUITES = {
    "io": io_suite.run,
    "histogram": histogram_suite.run,
    "gaussian": gaussian_suite.run,
    "ingest_large": ingest_large_suite.run,
    "conductivity": conductivity_suite.run,
    "synthesis": synthesis_suite.run,
    "slic": slic_suite.run,
    "segmentation": segmentation_suite.run,
    "quantify": quantify_suite.run,
    "regression": regression_suite.run,
    "generation": generation_suite.run,
    "outofcore": outofcore_suite.run,
    "study": study_suite.run,
    "scale": scale_suite.run,
    "voi": voi_suite.run,
    "ome": ome_suite.run,
    "objectstore": objectstore_suite.run,
}

#: Suites that "all" leaves out; they run only when named.
EXPLICIT_ONLY = ("ingest_large", "generation", "outofcore", "study", "scale", "voi", "ome", "objectstore")


def run(suites: list[str], out: Path, quick: bool = False) -> list[dict]:
    """Run the named suites ("all": every suite except ``EXPLICIT_ONLY``), write
    ``out/results.json`` and ``out/results.md``, print the Markdown table and
    return the results. An unknown name raises ValueError naming the valid ones."""
    return run_suites(SUITES, suites, Path(out), quick=quick, explicit_only=EXPLICIT_ONLY)


__all__ = ["EXPLICIT_ONLY", "SUITES", "Config", "run"]
