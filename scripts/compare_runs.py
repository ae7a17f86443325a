"""One figure for an equal-budget comparison: rollout reward and KL of several runs against wall time.

    python scripts/compare_runs.py RUN_DIR [RUN_DIR ...] [--labels a,b,c] --out docs/shapes-rl.png

Each RUN_DIR is a `maskfocus train` output folder (its metrics.jsonl is read).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskfocus_cli.io.plots import compare_reward_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", default=None, help="comma-separated legend labels (default: folder names)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(labels)} labels for {len(args.runs)} runs")
    runs = {}
    for label, run in zip(labels, args.runs):
        path = run / "metrics.jsonl"
        if not path.is_file():
            ap.error(f"{path} not found: pass `maskfocus train` output folders")
        runs[label] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    compare_reward_curves(runs, args.out, args.title)
    print(args.out)


if __name__ == "__main__":
    main()
