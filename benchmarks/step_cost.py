"""Cost of one policy update: MaskFocus (k critical steps) vs Mask-GRPO (all T steps), same rollouts.

    python benchmarks/step_cost.py [--model shapes] [--steps 16] [--k 3] [--images 32]

Prints, side by side from one run: update time for each estimator (β = 0 and β > 0 for
MaskFocus), the ratio to Mask-GRPO against the targets 1.1·k/T (β = 0) and 1.5·k/T
(β > 0, one extra reference forward per step), and the peak-memory growth of one
update measured in a fresh process at T and 4T (capped at one token per step): how far
resident memory rises above the rollout's during the first update. It must not grow with T:
states are replayed one step at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def build(model: str, algorithm: str, steps: int, k: int, beta: float, images: int, out: str):
    from maskfocus_cli.config import build as build_cfg, Recipe
    from maskfocus_cli.engine.trainer import Trainer
    recipe = build_cfg(Recipe, {
        "model": {"spec": model}, "sampler": {"steps": steps, "guidance_scale": 3.0},
        "critical": {"selector": "info-gain", "k": k}, "routing": {"enabled": False},
        "rewards": [{"name": "brightness"}],
        "train": {"algorithm": algorithm, "prompts_per_iter": images // 4, "group_size": 4,
                  "micro_batch": images, "kl_beta": beta, "lr": 1e-5},
        "output": {"dir": out}, "data": {"num_eval_prompts": 0}})
    return Trainer(recipe)


def rollout(trainer, images: int):
    """One rollout batch + advantages, shared by every estimator timed below."""
    from maskfocus_cli.engine.sampling import sample
    prompts = [trainer.prompts[i][0] for i in range(images // 4) for _ in range(4)]
    cond, uncond = trainer.encoder(prompts), trainer.encoder([trainer.settings.negative_prompt] * images)
    res = sample(trainer.adapter, cond, uncond, list(range(images)), trainer.settings, record=True,
                 net=trainer.policy)
    adv = torch.randn(images)
    return res.trajectory, cond, uncond, adv


def update(trainer, traj, cond, uncond, adv) -> float:
    """One optimiser step's worth of backward passes (single epoch); returns seconds."""
    idx = torch.arange(adv.numel())
    steps = trainer._choose_steps(traj, 0, idx)
    trainer.policy.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    trainer._accumulate(traj, idx, steps, cond, uncond, adv, 0, idx, {}, adv.numel(), 0)
    return time.perf_counter() - t0


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), not the process's high-water mark: the rollout's own peak would
    hide the update's under ``ru_maxrss``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_probe(model: str, algorithm: str, steps: int, k: int, images: int) -> None:
    """In a fresh process: how far resident memory rises above its level before the first update, sampled
    every millisecond while that update runs (the first: later ones reuse what the allocator kept)."""
    import tempfile
    import threading
    torch.manual_seed(0)
    trainer = build(model, algorithm, steps, k, 0.0, images, tempfile.mkdtemp())
    traj, cond, uncond, adv = rollout(trainer, images)
    before = _rss_mb()
    peak, done = [before], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    update(trainer, traj, cond, uncond, adv)
    done.set()
    watcher.join()
    print(json.dumps({"growth_mb": max(peak[0], _rss_mb()) - before, "before_mb": before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--probe", nargs=2, metavar=("ALGORITHM", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.images < 4 or args.images % 4:
        ap.error("--images must be a positive multiple of 4 (groups of 4 images per prompt)")
    if args.steps < 1 or args.k < 1 or args.repeats < 1:
        ap.error("--steps, --k and --repeats must be at least 1")
    if args.probe:
        memory_probe(args.model, args.probe[0], int(args.probe[1]), args.k, args.images)
        return
    import tempfile
    T, k = args.steps, args.k
    trainers = {
        "mask-grpo": build(args.model, "mask-grpo", T, k, 0.0, args.images, tempfile.mkdtemp()),
        "maskfocus β=0": build(args.model, "maskfocus", T, k, 0.0, args.images, tempfile.mkdtemp()),
        "maskfocus β=0.01": build(args.model, "maskfocus", T, k, 0.01, args.images, tempfile.mkdtemp()),
    }
    traj, cond, uncond, adv = rollout(trainers["mask-grpo"], args.images)
    for tr in trainers.values():
        update(tr, traj, cond, uncond, adv)  # warm-up
    times = {name: float("inf") for name in trainers}
    for _ in range(args.repeats):  # interleaved, so load changes hit every estimator alike
        for name, tr in trainers.items():
            times[name] = min(times[name], update(tr, traj, cond, uncond, adv))
    base = times["mask-grpo"]
    print(f"threads={torch.get_num_threads()} T={T} k={k} images={args.images} (best of {args.repeats})")
    for name, s in times.items():
        print(f"  {name:18s} {s * 1000:8.1f} ms   ratio to mask-grpo {s / base:.3f}")
    print(f"  targets: β=0 ≤ {1.1 * k / T:.3f}   β>0 ≤ {1.5 * k / T:.3f}")
    big = min(4 * T, trainers["mask-grpo"].adapter.num_tokens)  # at most one token per step
    print("memory one update adds above the rollout's resident set (fresh process each):")
    for algo in ("maskfocus", "mask-grpo"):
        row = []
        for steps in (T, big):
            # glibc keeps freed blocks (resident) and fragments with every alloc/free cycle, so a longer update
            # looks larger without holding more live memory: make it return large blocks at once (mmap)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--k", str(k), "--images",
                                  str(args.images), "--probe", algo, str(steps)], capture_output=True, text=True,
                                 env=env)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            row.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {algo:10s} T={T}: +{row[0]['growth_mb']:.1f} MB   T={big}: +{row[1]['growth_mb']:.1f} MB")


if __name__ == "__main__":
    main()
