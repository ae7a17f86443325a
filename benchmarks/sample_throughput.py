"""Sampling throughput of the engine vs a naive reference loop, measured side by side.

    python benchmarks/sample_throughput.py [--model shapes] [--images 128] [--batch 64] [--steps 16]

Engine: batches of --batch images, conditional and unconditional passes in ONE
batched forward, text encodings cached (and, for the built-in model, the text rows'
keys/values computed once per run: ``prepare_cond``); timed with fp32 weights (the
default) and with bf16 weights (``maskfocus sample --dtype bf16``; fast where the CPU
has AVX-512 BF16 or AMX). Naive: one image at a time, cond and uncond as two
forwards, the prompt re-encoded every step, the same step maths; timed in both
precisions too. Prints images/s for each and the same-precision ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from maskfocus_cli.engine.generate import generate, make_jobs
from maskfocus_cli.engine.sampling import (SamplerSettings, denoise_step, draw_noise, make_generators, mask_counts,
                                           step_info)
from maskfocus_cli.models.base import apply_guidance
from maskfocus_cli.models.loading import load_model


@torch.no_grad()
def naive_sample(adapter, prompt: str, seed: int, settings: SamplerSettings) -> torch.Tensor:
    """One image, two forwards per step (the loop a first implementation usually has)."""
    n, T = adapter.num_tokens, settings.steps
    gens = make_generators([seed])
    tokens = torch.full((1, n), adapter.mask_id, dtype=torch.long)
    counts = mask_counts(n, T, settings.schedule)
    for t in range(T):
        info = step_info(t, T, n, counts)
        c = adapter.call_transformer(adapter.transformer, tokens, adapter.encode_prompts([prompt]), info)
        u = adapter.call_transformer(adapter.transformer, tokens, adapter.encode_prompts([""]), info)
        logits = apply_guidance(c.float(), u.float(), settings.guidance_scale, adapter.guidance_form)
        out = denoise_step(logits, tokens, adapter.mask_id, counts[t + 1],
                           adapter.gumbel_temperature(t, T, settings.gumbel_temperature), draw_noise(gens, n))
        tokens = out.tokens
    return adapter.decode(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--naive-images", type=int, default=16, help="the naive loop is slow: time fewer images")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; each figure is its best round (shared machines are noisy)")
    args = ap.parse_args()
    for name in ("rounds", "images", "batch", "steps", "naive_images"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    adapter = load_model(args.model, device="cpu")
    adapter_bf16 = load_model(args.model, device="cpu", dtype="bf16")
    settings = SamplerSettings(steps=args.steps, guidance_scale=args.cfg)
    from maskfocus_cli.shapes import world
    prompts = [r["prompt"] for r in world.make_metadata(args.images, seed=0, split="heldout")]
    jobs = make_jobs(prompts, 1, 0)

    def engine(a) -> float:
        t0 = time.perf_counter()
        n = sum(len(b.jobs) for b in generate(a, jobs, settings, args.batch))
        return n / (time.perf_counter() - t0)

    def naive(a) -> float:
        t0 = time.perf_counter()
        timed = jobs[:args.naive_images]
        for j in timed:
            naive_sample(a, j.prompt, j.seed, settings)
        return len(timed) / (time.perf_counter() - t0)  # the images really sampled (--images may be fewer)

    for a in (adapter, adapter_bf16):  # warm-up
        list(generate(a, jobs[:args.batch], settings, args.batch))
        naive_sample(a, jobs[0].prompt, jobs[0].seed, settings)
    best = {"engine fp32": 0.0, "engine bf16": 0.0, "naive fp32": 0.0, "naive bf16": 0.0}
    for _ in range(args.rounds):  # interleaved, so a slow spell hits every figure alike
        for name, fn, a in (("engine fp32", engine, adapter), ("naive fp32", naive, adapter),
                            ("engine bf16", engine, adapter_bf16), ("naive bf16", naive, adapter_bf16)):
            best[name] = max(best[name], fn(a))
    engine_ips, bf16_ips = best["engine fp32"], best["engine bf16"]
    naive_ips, naive_bf16_ips = best["naive fp32"], best["naive bf16"]
    print(f"threads={torch.get_num_threads()} T={args.steps} cfg={args.cfg} batch={args.batch} images={len(jobs)} "
          f"best of {args.rounds} rounds")
    print(f"engine fp32: {engine_ips:.1f} images/s   naive fp32: {naive_ips:.1f} images/s   "
          f"ratio {engine_ips / naive_ips:.1f}x")
    print(f"engine bf16: {bf16_ips:.1f} images/s   naive bf16: {naive_bf16_ips:.1f} images/s   "
          f"ratio {bf16_ips / naive_bf16_ips:.1f}x")
    print(f"engine bf16 / naive fp32: {bf16_ips / naive_ips:.1f}x")


if __name__ == "__main__":
    main()
