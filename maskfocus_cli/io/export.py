"""Training checkpoint → standalone model folder (+ a model card)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maskfocus_cli.config import flatten
from maskfocus_cli.io.checkpoint import CheckpointError, atomic_write_bytes, read_trainer_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export_checkpoint(checkpoint: str | Path, to: str | Path, dtype: str = "fp32", model: str | None = None) -> dict:
    """Write a folder loadable by ``--model FAMILY:DIR``; returns the model card facts.

    ``model`` points at the base model when it has moved since training (same family)."""
    from maskfocus_cli.models.loading import load_model, parse_spec
    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder (pass runs/NAME/checkpoints/step-N)")
    if not (ckpt / "trainer.json").is_file():
        raise CheckpointError(f"{checkpoint} is not a training checkpoint (no trainer.json); expected a folder "
                              "like runs/NAME/checkpoints/step-N")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: use fp32, bf16 or fp16")
    info = read_trainer_info(ckpt)
    spec = info.get("model", "shapes")
    family, _ = parse_spec(spec)
    if model is not None:
        if parse_spec(model)[0] != family:
            raise ValueError(f"--model {model}: the checkpoint was trained from a {family} model ({spec}); "
                             f"give its {family}:DIR")
        spec = model
    out = Path(to)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--to {to} exists and is not empty: choose a new folder")
    if family == "shapes":
        adapter = load_model(f"shapes:{ckpt}", device="cpu")
    else:
        check_base_model(spec, ckpt)
        adapter = load_model(spec, checkpoint=ckpt, device="cpu")
    if hasattr(adapter, "merge_lora"):
        adapter.merge_lora()
    # plain nn.Module cast: diffusers' ModelMixin.to warns about fp32-kept modules these models lack
    torch.nn.Module.to(adapter.transformer, DTYPES[dtype])
    if not hasattr(adapter, "save"):
        raise ValueError(f"export is not supported for the {family!r} family yet")
    adapter.save(out)
    card = {"base_model": spec, "algorithm": info.get("algorithm"), "iteration": info.get("iteration"),
            "eval_sampler": info.get("eval_sampler"),
            "dtype": dtype, "source_checkpoint": str(ckpt), "final_metrics": info.get("last_metrics", {}),
            "recipe": info.get("recipe", {})}
    atomic_write_bytes(out / "README.md", model_card(card, family).encode())
    return {k: v for k, v in card.items() if k != "recipe"} | {"path": str(out), "family": family}


def check_base_model(spec: str, ckpt: Path) -> None:
    """The base model the run recorded must still be where it was, or be named with --model: say so
    instead of the loader's '--model ...: no such folder'."""
    from maskfocus_cli.models.folders import HUB_ID
    from maskfocus_cli.models.loading import parse_spec
    _, path = parse_spec(spec)
    if path and not Path(path).expanduser().exists() and not HUB_ID.match(path):
        raise ValueError(f"the checkpoint's base model {spec} (model.spec in its recipe) is missing: no folder "
                         f"{path}; name where it is now with --model {spec.partition(':')[0]}:DIR")


#: what training made the exported weights, by ``train.algorithm`` (the card's title)
TRAINED_WITH = {"pretrain": "pretrained with maskfocus (masked-token cross-entropy on rendered scenes)",
                "maskfocus": "post-trained with MaskFocus (maskfocus)",
                "mask-grpo": "post-trained with Mask-GRPO (maskfocus)"}


def model_card(card: dict, family: str) -> str:
    m = card.get("final_metrics") or {}
    reward = m.get("reward", {}).get("mean") if isinstance(m.get("reward"), dict) else None
    algorithm = card.get("algorithm")
    start = ((card.get("recipe") or {}).get("model") or {}).get("checkpoint")
    if start:
        base = f"* base model: `{card['base_model']}`, training started from the checkpoint `{start}`"
    elif algorithm == "pretrain":
        base = f"* base model: none (random weights of the `{card['base_model']}` architecture)"
    else:
        base = f"* base model: `{card['base_model']}`"
    lines = [
        f"# {family} model {TRAINED_WITH.get(algorithm, 'trained with maskfocus')}", "",
        base,
        f"* algorithm: `{card['algorithm']}`",
        f"* iterations completed: {card['iteration']}",
        f"* dtype: {card['dtype']}",
        f"* exported from: `{card['source_checkpoint']}`",
    ]
    ema = ((card.get("recipe") or {}).get("train") or {}).get("ema_decay")
    if ema:
        lines.append(f"* weights: moving average of the policy (train.ema_decay {ema})")
    val = m.get("validation", {}).get("reward", {}).get("mean") if isinstance(m.get("validation"), dict) else None
    if val is not None:
        lines.append(f"* validation reward at the last iteration: {val:.4f} (standard sampler, fixed eval prompts)")
    if reward is not None:
        train = (card.get("recipe") or {}).get("train") or {}
        size = (train.get("prompts_per_iter") or 0) * (train.get("group_size") or 0)
        batch = f"{size} images" if size else "one batch"
        routed = ((card.get("recipe") or {}).get("routing") or {}).get("enabled", False)
        lines.append(f"* rollout reward at the last iteration: {reward:.4f} ({batch} of one iteration"
                     + (", routed rollouts included" if routed else "")
                     + ": not a benchmark score; `maskfocus evaluate` gives that)")
    flat = flat_metrics(m)
    if flat:
        last = m.get("iteration")  # metrics.jsonl numbers iterations from 0: N completed end at N - 1
        where = f" (metrics.jsonl row `iteration: {last}`)" if last is not None else ""
        lines += ["", f"## Final metrics: the last training iteration{where}", ""]
        lines += [f"* {k}: {v:.6g}" if isinstance(v, float) else f"* {k}: {v}" for k, v in flat.items()]
    flags = sampled_as(card, family)
    lines += ["", f"Load it with `maskfocus sample --model {family}:THIS_FOLDER{flags} \"a prompt\"`"
              + (" (the settings its sample grids and validation used during training; without them, the family's "
                 "own)." if flags else "."), "",
              "## Recipe", "", "```json", json.dumps(card.get("recipe", {}), indent=2), "```", ""]
    return "\n".join(lines)


def sampled_as(card: dict, family: str) -> str:
    """The `sample` flags that reproduce the run's eval sampler ('' when none is recorded or all are the
    family's defaults), so the card's command samples the model as it was watched during training."""
    from types import SimpleNamespace

    from maskfocus_cli.engine.settings import differing_options, sampler_settings
    ev = card.get("eval_sampler")
    if not isinstance(ev, dict):
        return ""
    nothing_given = SimpleNamespace(steps=None, guidance_scale=None, schedule="cosine", logit_temperature=1.0,
                                    gumbel_temperature=None, negative_prompt=None)
    defaults = sampler_settings(nothing_given, family)  # what `sample` uses without options
    return "".join(" " + f for f in differing_options(ev, defaults))


def flat_metrics(row: dict) -> dict:
    """Scalar metrics of a metrics.jsonl row as ``a.b`` keys (timings left out: not model facts)."""
    return {k: v for k, v in flatten({k: v for k, v in row.items() if k != "time"}).items()
            if isinstance(v, (int, float, str, bool)) or v is None or (isinstance(v, list) and len(v) <= 16)}
