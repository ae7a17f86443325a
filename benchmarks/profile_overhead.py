"""How much does `profile-steps` (codebook embedding) cost over plain sampling?

Issue 3's target: profile-time / sample-time <= 1.15 for the same prompts and seeds,
and no model forward beyond sampling. Both sides run in this one process on the same
model: "sample" is the `sample` command's engine (sampling + decoding the final
grids, no PNG writing); "profile" is the `profile-steps` engine (recorded sampling,
codebook gains, critical-step selection, the x̂0 strip decodes; no plot writing).
Transformer forwards are counted with a forward hook on both sides.

    python benchmarks/profile_overhead.py            # built-in model if present, else random init
    python benchmarks/profile_overhead.py --random   # random-init model of the built-in architecture
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def build_model(random_init: bool):
    """The shipped base model, or a random-init one of the same architecture."""
    from maskfocus_cli.models.shapes import builtin_model_dir
    if not random_init and (builtin_model_dir() / "model.safetensors").is_file():
        from maskfocus_cli.models.loading import load_model
        return load_model("shapes", device="cpu"), "built-in shapes-base"
    if not random_init:
        print("built-in weights not found: using a random-init model (pass --random to silence this)",
              file=sys.stderr)
    import torch
    from maskfocus_cli.models.shapes import new_shapes_model
    from maskfocus_cli.shapes.tokenizer import fit_default
    torch.manual_seed(0)
    adapter = new_shapes_model(fit_default(num_scenes=200))
    adapter.transformer.eval().requires_grad_(False)
    return adapter, "random-init shapes (built-in architecture)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", action="store_true", help="use a random-init model even if weights exist")
    ap.add_argument("--prompts", type=int, default=8, help="number of shapes prompts")
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (the median is reported)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from maskfocus_cli.engine.critical import CodebookEmbedder
    from maskfocus_cli.engine.generate import generate, make_jobs
    from maskfocus_cli.engine.profile import profile_steps
    from maskfocus_cli.engine.sampling import PromptEncoder, SamplerSettings
    from maskfocus_cli.shapes.world import make_metadata

    adapter, name = build_model(args.random)
    prompts = [r["prompt"] for r in make_metadata(args.prompts, seed=0)]
    settings = SamplerSettings(steps=args.steps, guidance_scale=args.cfg)
    embedder = CodebookEmbedder(adapter)
    calls = [0]
    adapter.transformer.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def run_sample() -> None:
        encoder = PromptEncoder(adapter)  # fresh cache: each side pays its text encoding
        for _ in generate(adapter, make_jobs(prompts, args.n, 0), settings, args.batch_size, encoder=encoder):
            pass

    def run_profile() -> None:
        profile_steps(adapter, prompts, settings, embedder, top_k=args.top_k, n=args.n, seed=0,
                      batch_size=args.batch_size, strip_prompts=4)

    def timed(fn) -> tuple[float, int]:
        calls[0] = 0
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, calls[0]

    timed(run_sample), timed(run_profile)  # warm-up (allocator, lazy imports)
    t_sample, t_profile = [], []
    f_sample = f_profile = 0
    for _ in range(args.repeats):  # interleaved so drifting machine load hits both sides alike
        t, f_sample = timed(run_sample)
        t_sample.append(t)
        t, f_profile = timed(run_profile)
        t_profile.append(t)
    ts, tp = statistics.median(t_sample), statistics.median(t_profile)
    ratio = tp / ts
    images = len(prompts) * args.n
    print(f"model: {name}; {len(prompts)} prompts x {args.n} images, T={args.steps}, cfg={args.cfg}, "
          f"batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}")
    print(f"sample  time: {ts:8.3f} s  ({images / ts:7.1f} images/s)  transformer forwards: {f_sample}")
    print(f"profile time: {tp:8.3f} s  ({images / tp:7.1f} images/s)  transformer forwards: {f_profile}")
    print(f"ratio profile/sample: {ratio:.3f}  (target <= 1.15: {'ok' if ratio <= 1.15 else 'ABOVE TARGET'})")
    print(f"forwards equal: {'yes' if f_sample == f_profile else 'NO'}")
    return 0 if f_sample == f_profile else 1


if __name__ == "__main__":
    sys.exit(main())
