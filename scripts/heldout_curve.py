"""The benchmark score of a run's checkpoints against wall time (is it still rising? where is base + 0.15?).

    for ck in RUN/checkpoints/step-*; do
        maskfocus evaluate --bench shapes --checkpoint $ck --out RUN/heldout/$(basename $ck); done
    python scripts/heldout_curve.py RUN [RUN ...] [--labels a,b] --base BASE_EVAL/summary.json --out curve.png

Reads RUN/metrics.jsonl (wall time per iteration) and RUN/heldout/step-N/summary.json; prints one markdown
row per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from maskfocus_cli.io.plots import heldout_curves, minutes_at_iteration

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", default=None, help="comma-separated legend labels (default: folder names)")
    ap.add_argument("--base", type=Path, default=None, help="summary.json of the base model (plotted at 0 min)")
    ap.add_argument("--evals", default="heldout", help="folder inside each run holding step-N evaluations")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(labels)} labels for {len(args.runs)} runs")
    base = json.loads(args.base.read_text()) if args.base else None
    runs = {}
    print("| run | step | minutes | Overall | " + " | ".join(TAGS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(TAGS))
    for label, run in zip(labels, args.runs):
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            ap.error(f"{metrics} not found: pass `maskfocus train` output folders")
        minutes = minutes_at_iteration([json.loads(x) for x in metrics.read_text().splitlines() if x.strip()])
        points = []
        for summary in sorted((run / args.evals).glob("step-*/summary.json"),
                              key=lambda p: int(re.sub(r"\D", "", p.parent.name))):
            step = int(re.sub(r"\D", "", summary.parent.name))
            s = json.loads(summary.read_text())
            points.append((minutes.get(step, float("nan")), s))
            print(f"| {label} | {step} | {minutes.get(step, float('nan')):.1f} | {s['overall']:.2f} | "
                  + " | ".join(f"{s.get(t, float('nan')):.2f}" for t in TAGS) + " |")
        if not points:
            ap.error(f"no {run / args.evals}/step-N/summary.json: evaluate the checkpoints first (see --help)")
        runs[label] = points
    heldout_curves(runs, args.out, base, title=args.title)
    print(args.out)


if __name__ == "__main__":
    main()
