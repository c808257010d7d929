"""``python -m benchmarks SUITE [SUITE...] [--out DIR] [--quick]``.

Guarded by ``if __name__ == "__main__"``: the measuring processes and the Dask
workers start by spawn and import this module again as ``__mp_main__``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from benchmarks import EXPLICIT_ONLY, SUITES, run
    from benchmarks.ingest_large_suite import SIZE_ENV

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure porevox against plain reference code (ratio = reference "
                    "time / porevox time; > 1: porevox faster).",
    )
    parser.add_argument("suites", nargs="+", metavar="SUITE",
                        help=f"all, {', '.join(SUITES)} ('all' leaves out "
                             f"{', '.join(EXPLICIT_ONLY)})")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="folder for results.json and results.md (default bench-out)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--large-mib", type=int, default=None,
                        help=f"size of the ingest_large TIFF in MiB (default 2048, quick 256; "
                             f"also ${SIZE_ENV})")
    args = parser.parse_args(argv)
    if args.large_mib is not None:
        os.environ[SIZE_ENV] = str(args.large_mib)
    try:
        results = run(args.suites, args.out, quick=args.quick)
    except ValueError as err:
        parser.error(str(err))
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
