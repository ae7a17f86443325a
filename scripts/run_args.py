"""The command line the run-comparison scripts share: run folders, legend labels, output figure, title."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_runs(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict[str, tuple[Path, list[dict]]]]:
    """Adds RUN_DIR..., --labels, --out, --title to ``ap``, parses, and reads each run's metrics.jsonl:
    {label: (run folder, metrics rows)}, or a one-line usage error."""
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                    help="`maskfocus train` output folders (each with metrics.jsonl)")
    ap.add_argument("--labels", default=None, help="comma-separated legend labels (default: folder names)")
    ap.add_argument("--out", required=True, type=Path, help="figure to write (.png)")
    ap.add_argument("--title", default="", help="figure title (default: none)")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(labels)} labels for {len(args.runs)} runs")
    if not args.labels and len(set(labels)) < len(labels):  # runs/seed0/mf, runs/seed1/mf: name by parent too
        labels = [f"{r.parent.name}/{r.name}" for r in args.runs]
    if len(set(labels)) < len(labels):  # one run would silently replace another in the plot and the table
        ap.error(f"two runs share the label {next(x for x in labels if labels.count(x) > 1)!r}: pass --labels")
    runs = {}
    for label, run in zip(labels, args.runs):
        path = run / "metrics.jsonl"
        if not path.is_file():
            ap.error(f"{path} not found: pass `maskfocus train` output folders")
        runs[label] = (run, [json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return args, runs
