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
from pathlib import Path

from maskfocus_cli.io.plots import heldout_curves, minutes_at_iteration
from run_args import parse_runs

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=None, help="summary.json of the base model (plotted at 0 min)")
    ap.add_argument("--evals", default="heldout", help="folder inside each run holding step-N evaluations")
    args, runs = parse_runs(ap)
    if args.base and not args.base.is_file():
        ap.error(f"--base {args.base}: not found (the base model's EVAL/summary.json)")
    base = json.loads(args.base.read_text()) if args.base else None
    curves = {}
    print("| run | step | minutes | Overall | " + " | ".join(TAGS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(TAGS))
    for label, (run, history) in runs.items():
        minutes = minutes_at_iteration(history)
        evals = sorted((int(p.parent.name[5:]), p) for p in (run / args.evals).glob("step-*/summary.json")
                       if p.parent.name[5:].isdigit())
        if not evals:
            ap.error(f"no {run / args.evals}/step-N/summary.json: evaluate the checkpoints first (see --help)")
        curves[label] = []
        for step, path in evals:
            s, m = json.loads(path.read_text()), minutes.get(step, float("nan"))
            curves[label].append((m, s))
            print(f"| {label} | {step} | {m:.2f} | {s['overall']:.2f} | "
                  + " | ".join(f"{s.get(t, float('nan')):.2f}" for t in TAGS) + " |")
    heldout_curves(curves, args.out, base, title=args.title)
    print(args.out)


if __name__ == "__main__":
    main()
