"""The report's command line: ``python -m arca_sweep.report SWEEP_DIR [--baseline KEY=VALUE ...]
[--smooth STEPS] [--delta D]`` writes the report into ``SWEEP_DIR`` and prints ``report.md``'s path; a bad argument
or a dir without arms exits with status 2 and the reason."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from arca_sweep.errors import UserError
from arca_sweep.report.build import SMOOTH_STEPS, build_report
from arca_sweep.report.data import NotASweepError, parse_override
from arca_sweep.report.markdown import DEFAULT_DELTA


def parse_baseline(items: list[str]) -> dict[str, str]:
    """``["credit=uniform", "rank=8"]`` -> ``{"credit": "uniform", "rank": "8"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--baseline {item!r}: expected KEY=VALUE, e.g. --baseline credit=uniform")
        key, value = parse_override(item)
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arca_sweep.report",
        description="Write report.md, figures and token heatmaps of a finished or running sweep into its dir.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun's hydra.sweep.dir (holds one dir per arm)")
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="the reference cell of the paired comparisons, at the same other axes (default: credit=uniform; "
        "repeat for several keys)",
    )
    parser.add_argument(
        "--smooth", type=int, default=SMOOTH_STEPS, help="trailing window of the curves, in steps (default 5)"
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help="the difference the power section asks seeds and problems for (default 0.02: 2 points)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.delta < float("inf"):
        parser.error(f"--delta {args.delta}: need a positive difference, e.g. 0.02")
    if args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: need a window of at least 1 step")
    try:
        baseline = parse_baseline(args.baseline) if args.baseline else None
    except ValueError as e:
        parser.error(str(e))
    try:
        report = build_report(args.sweep_dir, baseline, args.smooth, args.delta)
    except NotASweepError as e:
        parser.error(str(e))  # exit status 2
    except UserError as e:  # a damaged record: named, with what to do
        if os.environ.get("ARCA_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report)
