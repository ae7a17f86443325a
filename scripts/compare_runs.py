"""One figure for an equal-budget comparison: rollout reward and KL of several runs against wall time.

    python scripts/compare_runs.py RUN_DIR [RUN_DIR ...] [--labels a,b,c] --out docs/shapes-rl.png

Each RUN_DIR is a `maskfocus train` output folder (its metrics.jsonl is read).
"""

from __future__ import annotations

import argparse

from maskfocus_cli.io.plots import compare_reward_curves
from run_args import parse_runs


def main() -> None:
    args, runs = parse_runs(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    compare_reward_curves({label: history for label, (_, history) in runs.items()}, args.out, args.title)
    print(args.out)


if __name__ == "__main__":
    main()
