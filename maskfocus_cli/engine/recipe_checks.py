"""Recipe problems found before a run starts, not mid-run or after its last iteration: prompt files a reward
cannot score, eval prompts that do not load, words the built-in model cannot read, held-out prompts trained on."""

from __future__ import annotations

from typing import Callable

from maskfocus_cli.config import Recipe
from maskfocus_cli.engine.data import load_prompt_source
from maskfocus_cli.models.base import MaskedT2IAdapter

Rows = list[tuple[str, dict | None]]


#: how the shipped real-model recipes mark what a user must fill in
PLACEHOLDERS = ("/path/to/",)


def check_placeholders(recipe: Recipe) -> None:
    """Every FILL-IN value of a recipe in one message, before any model loads (one at a time, each after a
    model load and a queue wait, is how a cluster user would otherwise find them)."""
    from maskfocus_cli.config import flatten, to_dict
    data = to_dict(recipe)
    flat = flatten({k: v for k, v in data.items() if k != "rewards"})
    for i, r in enumerate(data.get("rewards") or ()):
        flat.update(flatten(r.get("options") or {}, f"rewards.{i}.options."))
    todo = [k for k, v in flat.items() if isinstance(v, str) and any(p in v for p in PLACEHOLDERS)
            and (k != "data.eval_prompts" or eval_prompts_used(recipe))]
    spec = recipe.model.spec
    if ":" in spec and not spec.split(":", 1)[1].strip() and not spec.startswith("shapes"):
        todo.insert(0, "model.spec")
    if todo:
        raise ValueError(f"the recipe still has placeholders to fill in: {', '.join(todo)} (e.g. --set "
                         f"{todo[0]}=...; the recipe's comments say what each one is)")


def check_metadata_for_reward(recipe: Recipe, prompts: Rows, reward_fn=None) -> None:
    """A reward that scores by GenEval metadata (``geneval``) cannot score plain prompts: say which prompt
    file lacks them now, not after the reward's weights loaded and the first rollout (or validation) ran."""
    from maskfocus_cli.rewards.registry import reward_factory
    needs = getattr(reward_fn, "needs_metadata", False) if reward_fn is not None else any(
        getattr(reward_factory(r.name), "needs_metadata", False) for r in recipe.rewards)
    if not needs:
        return
    d = recipe.data
    sources = [("data.prompts", d.prompts, prompts)]
    if recipe.output.validate_every > 0:
        sources.append(("data.eval_prompts", d.eval_prompts,
                        load_prompt_source(d.eval_prompts)[:d.num_validation_prompts]))
    for key, source, rows in sources:
        plain = [p for p, m in rows if m is None]
        if plain:
            raise ValueError(f"{key}: {source} has prompts without GenEval metadata (e.g. {plain[0]!r}), which "
                             "the geneval reward scores by: use a GenEval .jsonl file (rows with tag/include)")


def warn_heldout_training(recipe: Recipe, adapter: MaskedT2IAdapter, prompts: Rows,
                          log: Callable[[str], None]) -> None:
    """Training on the shapes bench's held-out prompts is allowed (an overfitting probe), never silent: the
    bench would then score prompts the run was rewarded on."""
    if adapter.family != "shapes":
        warn_geneval_training(recipe, prompts, log)
        return
    from maskfocus_cli.shapes.world import heldout_prompts
    seen = {p for p, _ in prompts} & heldout_prompts()
    if seen:
        log(f"warning: data.prompts ({recipe.data.prompts}) holds {len(seen)} held-out shapes prompts, which "
            "`maskfocus evaluate --bench shapes` scores: its results would not be held-out (train on shapes:train)")


def warn_geneval_training(recipe: Recipe, prompts: Rows, log: Callable[[str], None]) -> None:
    """Real models: the same for GenEval's 553 evaluation prompts, checked against the cached official file when
    ``evaluate`` has fetched it (a training run never downloads it)."""
    from maskfocus_cli.bench.prompts import GENEVAL_CACHED, cache_dir, load_geneval_metadata
    path = cache_dir() / GENEVAL_CACHED
    if not path.is_file():
        return
    try:
        bench = {row["prompt"].strip().lower() for row in load_geneval_metadata(path)}
    except ValueError:  # a damaged cache is evaluate's problem, not this warning's
        return
    seen = {p.strip().lower() for p, _ in prompts} & bench
    if seen:
        log(f"warning: data.prompts ({recipe.data.prompts}) holds {len(seen)} of GenEval's evaluation prompts "
            f"({path}): `maskfocus evaluate --bench geneval` would score prompts the run was rewarded on")


def eval_prompts_used(recipe: Recipe) -> bool:
    """Sample grids or validation read ``data.eval_prompts``; with neither it may stay a placeholder."""
    d, o = recipe.data, recipe.output
    return d.num_eval_prompts > 0 or (o.validate_every > 0 and recipe.train.algorithm != "pretrain")


def check_eval_prompts(recipe: Recipe, adapter: MaskedT2IAdapter) -> None:
    """A bad ``data.eval_prompts`` fails now, not at the first grid (or after the last iteration)."""
    d = recipe.data
    if not eval_prompts_used(recipe):
        return
    try:
        rows = load_prompt_source(d.eval_prompts)
    except ValueError as e:
        raise ValueError(f"data.eval_prompts: {e}; or set data.num_eval_prompts: 0 for no sample grids") from None
    if not rows:
        raise ValueError(f"data.eval_prompts {d.eval_prompts} holds no prompts: give a prompt file, or set "
                         "data.num_eval_prompts: 0 for no sample grids")
    check_vocabulary(adapter, rows, "data.eval_prompts")


def check_vocabulary(adapter: MaskedT2IAdapter, rows: Rows, key: str) -> None:
    """The built-in model's closed vocabulary: an unknown word fails now, not mid-run or after the last
    iteration (open-vocabulary tokenizers take any prompt, and encoding all of them would cost minutes)."""
    if adapter.family != "shapes":
        return
    try:
        adapter.encode_prompts(sorted({p for p, _ in rows}))
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def check_distributed_type(distributed_type: str) -> None:
    """DDP (one or many GPUs and nodes, or gloo ranks on CPUs) and DeepSpeed ZeRO 1–2 (``engine.deepspeed_zero``)
    are what the trainer is built and tested for. Under FSDP the weights every rank's rollouts read are sharded
    and rank 0 alone would gather the state dict: refused, not run wrong."""
    kind = distributed_type.rsplit(".", 1)[-1].upper()
    if kind == "FSDP":
        raise ValueError("accelerate launched this run with FSDP, which maskfocus train does not support yet: "
                         "launch with DeepSpeed ZeRO-2 (recipes/accelerate/deepspeed-zero2.yaml) or DDP "
                         "(--multi_gpu) and, for memory, train.lora_rank")
