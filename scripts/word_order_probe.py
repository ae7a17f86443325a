"""Does a shapes model read word order? One JSON line per model and tag (see maskfocus_cli/shapes/probes.py).

    python scripts/word_order_probe.py shapes shapes:MODEL_DIR runs/X/checkpoints/step-N

gap_nats ≈ 0: the model treats the prompt as a bag of words for relations / colour binding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskfocus_cli.models.loading import load_model
from maskfocus_cli.shapes.probes import PROBED_TAGS, word_order_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shapes | shapes:DIR | a checkpoint folder (runs/X/checkpoints/step-N)")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts per tag")
    ap.add_argument("--scenes", type=int, default=2, help="scenes per prompt")
    args = ap.parse_args()
    for m in args.models:
        if (Path(m) / "trainer.json").is_file():  # a training checkpoint of the shapes model
            adapter = load_model(f"shapes:{m}", device="cpu")  # a complete model folder, its own base
        else:
            adapter = load_model(m, device="cpu")
        for tag in PROBED_TAGS:
            print(json.dumps({"model": m, **word_order_probe(adapter, tag, args.prompts, args.scenes)}), flush=True)


if __name__ == "__main__":
    main()
