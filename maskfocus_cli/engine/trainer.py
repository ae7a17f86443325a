"""The training loop: rollouts → rewards → group advantages → critical steps → loss → step.

Explicit and readable on purpose (not a transformers ``Trainer`` subclass). All
randomness is a pure function of (seed, iteration, global sample index), so a
resumed run repeats the uninterrupted one bit for bit and a 2-rank run sees the
same samples as a 1-rank run with the same global batch.

Distributed runs go through accelerate: the loss is computed through the
*prepared* model, so DDP all-reduces gradients (the published code bypassed it).
Each prompt's G images are spread over ranks (k-repeat), rewards are gathered so
every rank normalises advantages over the whole group.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from maskfocus_cli.config import Recipe, flatten, to_dict
from maskfocus_cli.engine.data import load_prompt_source, prompt_weights
from maskfocus_cli.engine.estimators import Unit, UpdateContext, make_estimator
from maskfocus_cli.engine.grpo import group_advantages
from maskfocus_cli.engine.routing import make_router
from maskfocus_cli.engine.seeds import derive_seed
from maskfocus_cli.engine.sampling import (PromptEncoder, SamplerSettings, Trajectory, sample,
                                           mask_counts, step_info)
from maskfocus_cli.io.checkpoint import (CheckpointError, atomic_dir, atomic_write_bytes, atomic_write_json,
                                        read_json, save_weights)
from maskfocus_cli.models.base import MaskedT2IAdapter, index_cond
from maskfocus_cli.models.loading import absolute_spec


def sampler_settings(cfg, model_spec: str, inherit=None) -> SamplerSettings:
    """A recipe's sampler section; fields left null take ``inherit``'s (``eval_sampler`` inherits ``sampler``'s),
    then the model family's own settings."""
    from maskfocus_cli.models.sampler_defaults import family_sampler
    d = family_sampler(model_spec)

    def pick(key: str):
        for source in (cfg, inherit):
            if source is not None and getattr(source, key) is not None:
                return getattr(source, key)
        return getattr(d, key)
    return SamplerSettings(steps=pick("steps"), guidance_scale=pick("guidance_scale"), schedule=cfg.schedule,
                           logit_temperature=cfg.logit_temperature, gumbel_temperature=pick("gumbel_temperature"))


def lr_factor(it: int, warmup: int, total: int, schedule: str) -> float:
    """Warm-up then constant or cosine-to-zero multiplier for iteration ``it``."""
    if warmup and it < warmup:
        return (it + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warmup) / span)))
    return 1.0


# --------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
             and p.name[5:].isdigit() and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def set_aside_later_checkpoints(run_dir: Path, ckpt: Path) -> list[Path]:
    """Rewinding a run to its own ``ckpt``: move the checkpoints after it to OUT/abandoned/ (kept, never
    deleted), so ``--resume latest`` cannot jump back onto the abandoned branch. Returns the new paths."""
    step = int(ckpt.name[5:])
    return [set_aside(d, run_dir) for d in checkpoint_dirs(run_dir) if int(d.name[5:]) > step]


def stale_checkpoints(dirs: list[Path], keep_last: int) -> list[Path]:
    """The oldest of ``dirs`` (sorted by step) beyond the newest ``keep_last``; 0 keeps every one
    (a held-out curve over the run needs them all: scripts/heldout_curve.py)."""
    return dirs[:-keep_last] if keep_last > 0 else []


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """--resume latest|PATH → checkpoint folder (None = fresh run)."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoint_dirs(run_dir)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "trainer.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint (no trainer.json inside); "
                              "use --resume latest or a runs/NAME/checkpoints/step-N folder")
    return p


#: recipe keys a resumed run may change: how long and where it runs and what it writes, never what it computes
RESUME_FREE = ("train.iterations", "train.time_budget_minutes", "output.", "model.device", "data.eval_prompts",
               "data.num_eval_prompts", "data.num_validation_prompts", "eval_sampler")


#: reward options that say where and how patiently to ask, not what is scored: a reward server may move
#: (another host after pre-emption) between a run and its resume
REWARD_TRANSPORT = {"http": ("url", "timeout", "retries", "backoff")}


def _scored(recipe: dict) -> dict:
    """The recipe without reward transport options (see ``REWARD_TRANSPORT``)."""
    rewards = []
    for r in recipe.get("rewards") or ():
        if isinstance(r, dict) and r.get("name") in REWARD_TRANSPORT and isinstance(r.get("options"), dict):
            free = REWARD_TRANSPORT[r["name"]]
            r = {**r, "options": {k: v for k, v in r["options"].items() if k not in free}}
        rewards.append(r)
    return {**recipe, "rewards": rewards} if "rewards" in recipe else recipe


#: sampler fields that may be null in a recipe: the model family's own value (``models/sampler_defaults.py``)
FAMILY_FIELDS = ("steps", "guidance_scale", "gumbel_temperature")


def _sampled(recipe: dict) -> dict:
    """The recipe with null sampler fields as the run samples them: ``sampler`` from the model family,
    ``eval_sampler`` from ``sampler``. A run saved with explicit values (or before the fields could be null)
    then compares equal to the same settings left null."""
    from maskfocus_cli.models.sampler_defaults import family_sampler
    try:
        family = family_sampler(str((recipe.get("model") or {}).get("spec", "shapes")))
    except ValueError:
        return recipe
    sampler = dict(recipe.get("sampler") or {})
    for key in FAMILY_FIELDS:
        if sampler.get(key) is None:
            sampler[key] = getattr(family, key)
    out = {**recipe, "sampler": sampler}
    if isinstance(recipe.get("eval_sampler"), dict):
        out["eval_sampler"] = {**recipe["eval_sampler"], **{k: sampler[k] for k in FAMILY_FIELDS
                                                            if recipe["eval_sampler"].get(k) is None}}
    return out


def recipe_changes(saved: dict, now: dict) -> list[str]:
    """'key: saved → now' for every field that differs and would change what a resumed run computes."""
    a, b = flatten(_scored(_sampled(saved))), flatten(_scored(_sampled(now)))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE))
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys]


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def holds_run(run_dir: Path) -> bool:
    """A run folder with checkpoints: a fresh run there would overwrite and mix them. (Metrics without a
    checkpoint are a run that died before its first one: nothing to resume, so they are set aside.)"""
    return bool(checkpoint_dirs(run_dir))


def set_aside(path: Path, run_dir: Path) -> Path:
    """Move ``path`` to OUT/abandoned/ under a free name (kept, never deleted)."""
    dest = run_dir / "abandoned" / path.name
    k = 1
    while dest.exists():
        k += 1
        dest = run_dir / "abandoned" / f"{path.stem}-{k}{path.suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.rename(dest)
    return dest


STOP_REQUESTED = "stop requested (signal)"


class RewardFailed(Exception):
    """The reward raised inside an RL iteration (wraps the original as ``__cause__``)."""


@dataclass
class RunState:
    iteration: int = 0  #: iterations completed
    history: list[dict] = field(default_factory=list)  #: metrics rows so far
    elapsed: float = 0.0  #: wall-clock seconds the run had trained before this process (from the checkpoint)


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Builds everything a recipe asks for and runs the loop."""

    def __init__(self, recipe: Recipe, *, accelerator=None, log: Callable[[str], None] | None = None,
                 adapter: MaskedT2IAdapter | None = None, reward_fn=None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed  # noqa: F401  (accelerate initialises its state here)

        self.recipe = recipe
        self.cfg = recipe.train
        self.log = log or (lambda msg: None)
        if accelerator is None:
            from maskfocus_cli.models.loading import resolve_device
            device = resolve_device(recipe.model.device)  # a bad value or a missing GPU: a clear error
            if device.type == "cpu" and self.cfg.mixed_precision == "fp16":  # accelerate would run fp32 silently
                raise ValueError("train.mixed_precision: fp16 needs a GPU (on CPU autocast is bf16 only): use bf16 "
                                 "or no")
            accelerator = Accelerator(mixed_precision=self.cfg.mixed_precision, cpu=device.type == "cpu")
        self.acc = accelerator
        self.run_dir = Path(recipe.output.dir)
        if self.cfg.algorithm == "pretrain" and self.cfg.batch_size % self.acc.num_processes:
            raise ValueError(f"train.batch_size = {self.cfg.batch_size} scenes must split evenly over "
                             f"{self.acc.num_processes} processes")
        if self.cfg.algorithm != "pretrain":
            if self.cfg.group_size < 2:
                raise ValueError("train.group_size must be at least 2: GRPO compares images of the same prompt")
            total = self.cfg.prompts_per_iter * self.cfg.group_size
            if self.cfg.kl_estimator == "full" and self.cfg.kl_max > 0:
                raise ValueError("train.kl_max caps k3 values; kl_estimator: full has none to cap: set kl_max to 0")
            if total % self.acc.num_processes:
                raise ValueError(f"prompts_per_iter × group_size = {total} images must split evenly over "
                                 f"{self.acc.num_processes} processes")
        self.adapter = adapter or self._load_adapter()
        self.lora = self.cfg.lora_rank > 0
        if self.lora:
            self.adapter.transformer = add_lora(self.adapter, self.cfg.lora_rank, derive_seed(self.cfg.seed, "lora"))
        else:
            self.adapter.transformer.requires_grad_(True)
            self._keep_fp32_weights()
        self.policy = self.adapter.transformer
        self.policy.train()
        # the policy-update strategy (which steps, which loss); None for supervised pretraining
        self.settings = sampler_settings(recipe.sampler, recipe.model.spec)
        self.eval_settings = sampler_settings(recipe.eval_sampler, recipe.model.spec, recipe.sampler) \
            if recipe.eval_sampler is not None else self.settings
        self.estimator = None if self.cfg.algorithm == "pretrain" else \
            make_estimator(recipe, self.adapter, self.settings)
        self.reference = None
        if self.estimator is not None and self.estimator.uses_reference:
            # with LoRA the frozen base *is* the reference: no second copy of the weights
            self.reference = AdapterDisabled(self.policy) if self.lora else \
                copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.rollout_net = self._make_rollout_net()
        self.ema_net = self._make_ema_net()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
                                           weight_decay=self.cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, self.cfg.warmup, self.cfg.iterations, self.cfg.lr_schedule))
        self.net, self.optimizer = self.acc.prepare(self.policy, self.optimizer)
        for st in (self.settings, self.eval_settings):  # too many steps for the image: refuse now, not mid-run
            mask_counts(self.adapter.num_tokens, st.steps, st.schedule)
        self.encoder = PromptEncoder(self.adapter)
        self.state = RunState()
        self._clock_start: float | None = None  #: time.monotonic() when this process's loop began
        self._started = False
        self._grid_at: int | None = None  #: the iteration this process last drew a sample grid at
        self.stop_requested = False  #: set from a signal handler: stop after the current iteration
        self.terminated = False  #: the loop stopped on that request (not at its end or time budget)
        self._check_eval_prompts()
        if self.cfg.algorithm != "pretrain":
            self.prompts = load_prompt_source(recipe.data.prompts)
            self._check_vocabulary(self.prompts, "data.prompts")
            self._warn_heldout_training()
            self.prompt_weights = prompt_weights(self.prompts, recipe.data.tag_weights, recipe.data.prompts)
            self._check_metadata_for_reward(reward_fn)  # before the reward loads its weights
            self.reward = reward_fn or self._build_reward()
            # ranks route on the whole rollout batch's median entropy, as one process would
            gather = None if self.acc.num_processes == 1 else self._gather_entropies
            self.router = make_router(recipe.routing.enabled, recipe.routing.scale, recipe.routing.decay,
                                      recipe.routing.floor, gather)
        else:
            from maskfocus_cli.engine.pretrain import SceneStream, pretrain_mix
            self.stream = SceneStream(self.adapter, self.cfg.seed, tag_mix=pretrain_mix(recipe.data.tag_weights),
                                      fidelity=recipe.data.caption_fidelity or None)

    # ------------------------------------------------------------------ set-up helpers
    def _check_metadata_for_reward(self, reward_fn=None) -> None:
        """A reward that scores by GenEval metadata (``geneval``) cannot score plain prompts: say which prompt
        file lacks them now, not after the reward's weights loaded and the first rollout (or validation) ran."""
        from maskfocus_cli.rewards.registry import reward_factory
        needs = getattr(reward_fn, "needs_metadata", False) if reward_fn is not None else any(
            getattr(reward_factory(r.name), "needs_metadata", False) for r in self.recipe.rewards)
        if not needs:
            return
        d = self.recipe.data
        sources = [("data.prompts", d.prompts, self.prompts)]
        if self.recipe.output.validate_every > 0:
            sources.append(("data.eval_prompts", d.eval_prompts, self._eval_rows(d.num_validation_prompts)))
        for key, source, rows in sources:
            plain = [p for p, m in rows if m is None]
            if plain:
                raise ValueError(f"{key}: {source} has prompts without GenEval metadata (e.g. {plain[0]!r}), which "
                                 "the geneval reward scores by: use a GenEval .jsonl file (rows with tag/include)")

    def _warn_heldout_training(self) -> None:
        """Training on the shapes bench's held-out prompts is allowed (an overfitting probe), never silent: the
        bench would then score prompts the run was rewarded on."""
        if self.adapter.family != "shapes":
            return
        from maskfocus_cli.shapes.world import heldout_prompts
        seen = {p for p, _ in self.prompts} & heldout_prompts()
        if seen and self.acc.is_main_process:
            self.log(f"warning: data.prompts ({self.recipe.data.prompts}) holds {len(seen)} held-out shapes prompts, "
                     "which `maskfocus evaluate --bench shapes` scores: its results would not be held-out (train on "
                     "shapes:train)")

    def _check_eval_prompts(self) -> None:
        """A bad ``data.eval_prompts`` fails now, not at the first grid (or after the last iteration)."""
        d, o = self.recipe.data, self.recipe.output
        used = d.num_eval_prompts > 0 or (o.validate_every > 0 and self.cfg.algorithm != "pretrain")
        if not used:
            return
        try:
            rows = load_prompt_source(d.eval_prompts)
        except ValueError as e:
            raise ValueError(f"data.eval_prompts: {e}; or set data.num_eval_prompts: 0 for no sample grids") from None
        if not rows:
            raise ValueError(f"data.eval_prompts {d.eval_prompts} holds no prompts: give a prompt file, or set "
                             "data.num_eval_prompts: 0 for no sample grids")
        self._check_vocabulary(rows, "data.eval_prompts")

    def _check_vocabulary(self, rows: list[tuple[str, dict | None]], key: str) -> None:
        """The built-in model's closed vocabulary: an unknown word fails now, not mid-run or after the last
        iteration (open-vocabulary tokenizers take any prompt, and encoding all of them would cost minutes)."""
        if self.adapter.family != "shapes":
            return
        try:
            self.adapter.encode_prompts(sorted({p for p, _ in rows}))
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None

    def _keep_fp32_weights(self) -> None:
        """Full fine-tuning updates the weights themselves, so they stay fp32.

        In bf16 an AdamW step of lr·1 is below half a unit in the last place for every weight
        larger than ~256·lr (5e-4 at the published lr 2e-6) and rounds away: ~97% of the
        weights would never move. Low precision still serves where it is safe:
        ``train.mixed_precision`` (autocast) and ``train.rollout_dtype`` (rollout copy).
        LoRA is unaffected (peft keeps its adapter weights fp32).
        """
        low = sorted({str(p.dtype).removeprefix("torch.") for p in self.adapter.transformer.parameters()
                      if p.is_floating_point() and p.dtype != torch.float32})
        if low:
            self.adapter.transformer.float()
            self.log(f"full fine-tuning: {'/'.join(low)} weights upcast to fp32 (a low-precision weight ignores "
                     "small updates); use train.mixed_precision / train.rollout_dtype for speed, or LoRA for memory")

    def _gather_entropies(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's per-sample entropies (ranks hold equal shares: k-repeat split)."""
        return self.acc.gather(values.contiguous().to(self.acc.device)).to(values.device)

    def _load_adapter(self) -> MaskedT2IAdapter:
        from maskfocus_cli.models.loading import load_model
        m = self.recipe.model
        if self.cfg.algorithm == "pretrain" and m.checkpoint is None:
            if not m.spec.startswith("shapes"):
                raise ValueError("algorithm 'pretrain' trains the built-in shapes model only (model.spec: shapes)")
            from maskfocus_cli.models.shapes import new_shapes_model
            torch.manual_seed(self.cfg.seed)
            adapter = new_shapes_model()
            adapter.transformer.to(self.acc.device)
            return adapter
        device = "cuda" if self.acc.device.type == "cuda" else "cpu"
        return load_model(m.spec, m.checkpoint, device, m.dtype)

    def _make_rollout_net(self) -> nn.Module:
        """The module rollouts sample with: the policy itself, or a low-precision copy of it.

        Rollouts are ~3/4 of an iteration on CPU and need no gradients, so a bf16 copy
        buys iterations; log-probs for the loss still come from the fp32 policy (the
        single-epoch π_old is the current policy detached, never the rollout copy).
        """
        if self.cfg.rollout_dtype == "fp32" or self.cfg.algorithm == "pretrain":
            return self.policy
        if self.lora:
            raise ValueError("train.rollout_dtype: bf16 needs full fine-tuning (lora_rank: 0); with LoRA use "
                             "train.mixed_precision: bf16 instead")
        return copy.deepcopy(self.policy).to(torch.bfloat16).requires_grad_(False).eval()

    def _make_ema_net(self) -> nn.Module | None:
        """The weight average checkpoints hand out (``train.ema_decay``), or None.

        On the shapes world, checkpoints 50 iterations apart differ by up to 0.05 held-out
        (docs/shapes-rl.md, tenth round): the average takes the lottery out of where a time
        budget happens to stop, so it is what evaluate / export should see.
        """
        if self.cfg.ema_decay == 0:
            return None
        if self.lora:
            raise ValueError("train.ema_decay needs full fine-tuning (lora_rank: 0)")
        return copy.deepcopy(self.policy).requires_grad_(False).eval()

    @torch.no_grad()
    def _after_optimizer_step(self, it: int) -> None:
        """Bring the rollout copy and the weight average up to the new weights."""
        self._sync_rollout_net()
        if self.ema_net is None:
            return
        decay = min(self.cfg.ema_decay, (1 + it) / (10 + it))  # early iterations: follow the policy closely
        ema = [p for p in self.ema_net.parameters() if p.is_floating_point()]
        live = [p for p in self.policy.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(ema, live, 1.0 - decay)

    @torch.no_grad()
    def _sync_rollout_net(self) -> None:
        """Re-cast the fp32 master weights into the rollout copy (after each optimiser step)."""
        if self.rollout_net is self.policy:
            return
        for dst, src in zip(self.rollout_net.parameters(), self.policy.parameters()):
            dst.copy_(src)

    def _build_reward(self):
        from maskfocus_cli.rewards.composite import CompositeReward, RewardSpec
        if not self.recipe.rewards:
            raise ValueError("the recipe has no rewards: add e.g. `rewards: [{name: shapes-geneval}]`")
        if all(r.weight == 0 for r in self.recipe.rewards):
            raise ValueError("every reward has weight 0, so every advantage would be 0 and nothing would train: "
                             "give at least one reward a non-zero weight")
        specs = [RewardSpec(name=r.name, weight=r.weight, options=dict(r.options)) for r in self.recipe.rewards]
        reward = CompositeReward(specs)
        for component in reward.rewards:  # a reward server that is down fails now, before any rollout
            if hasattr(component, "preflight"):
                component.preflight()
        return reward

    # ------------------------------------------------------------------ persistence
    def save_checkpoint(self) -> Path:
        it = self.state.iteration
        final = self.run_dir / "checkpoints" / f"step-{it}"
        policy = self.acc.unwrap_model(self.net)

        def fill(tmp: Path) -> None:
            weights = policy if self.ema_net is None else self.ema_net
            if self.ema_net is not None:  # the raw policy, for --resume
                save_weights(policy.state_dict(), tmp / "policy.safetensors")
            if self.lora:  # model.safetensors holds merged weights, so --checkpoint/export need no peft
                from peft import get_peft_model_state_dict
                save_weights(get_peft_model_state_dict(policy), tmp / "lora.safetensors")
                weights = copy.deepcopy(policy).cpu().merge_and_unload()
            if hasattr(self.adapter, "save") and self.adapter.family == "shapes":
                live = self.adapter.transformer
                self.adapter.transformer = weights
                try:
                    self.adapter.save(tmp)  # a complete model folder: --model shapes:CKPT works
                finally:
                    self.adapter.transformer = live
            else:
                save_weights(weights.state_dict(), tmp / "model.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "training_state.pt")
            atomic_write_json(tmp / "trainer.json", {
                "iteration": it, "algorithm": self.cfg.algorithm, "model": absolute_spec(self.recipe.model.spec),
                "elapsed_seconds": round(self.elapsed(), 3),
                "recipe": to_dict(self.recipe), "last_metrics": self.state.history[-1] if self.state.history else {}})

        if self.acc.is_main_process:
            atomic_dir(final, fill)
            for old in stale_checkpoints(checkpoint_dirs(self.run_dir), self.recipe.output.keep_last):
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        from maskfocus_cli.io.checkpoint import load_weights
        info = read_json(path / "trainer.json")
        self.adapter.check_checkpoint(path)
        if self.lora:
            from peft import set_peft_model_state_dict
            from maskfocus_cli.io.checkpoint import read_weights
            set_peft_model_state_dict(self.acc.unwrap_model(self.net), read_weights(path / "lora.safetensors"))
        elif self.ema_net is not None:  # model.safetensors holds the average
            load_weights(self.acc.unwrap_model(self.net), path / "policy.safetensors")
            load_weights(self.ema_net, path / "model.safetensors")
        else:
            load_weights(self.acc.unwrap_model(self.net), path / "model.safetensors")
        try:
            st = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable state is the same user problem
            raise CheckpointError(f"{path}/training_state.pt is unreadable ({type(e).__name__}); "
                                  "resume from an earlier checkpoint") from None
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self._sync_rollout_net()
        self.state.iteration = int(info["iteration"])
        self.state.elapsed = float(info.get("elapsed_seconds", 0.0))  # the time budget spans resumes
        metrics = self.run_dir / "metrics.jsonl"
        rows = []
        if metrics.is_file():
            rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
        self.state.history = [r for r in rows if r.get("iteration", 0) < self.state.iteration]
        if self.acc.is_main_process:
            metrics.write_text("".join(json.dumps(r) + "\n" for r in self.state.history))
        self.acc.wait_for_everyone()

    def _append_metrics(self, row: dict) -> None:
        self.state.history.append(row)
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ the loop
    def start(self, resume: str | None = None) -> None:
        """Check / create the run folder and load the checkpoint to resume from; once per run.

        The CLI calls it before its progress display, so a refused folder or recipe is a clean
        one-line error; ``run`` calls it otherwise.
        """
        if self._started:
            return
        ckpt = find_resume(self.run_dir, resume)
        if resume == "latest" and ckpt is None:  # a mistyped folder must not start a fresh multi-hour run
            raise CheckpointError(f"--resume latest: no checkpoint in {self.run_dir / 'checkpoints'} (check --out / "
                                  "output.dir, or drop --resume to start a new run there)")
        if ckpt is not None:
            saved = read_json(ckpt / "trainer.json").get("recipe")
            changes = recipe_changes(saved, to_dict(self.recipe)) if isinstance(saved, dict) else []
            if changes:
                more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
                raise CheckpointError(f"--resume {ckpt}: the recipe differs from the run's ({'; '.join(changes[:3])}"
                                      f"{more}); resume with the run's recipe (maskfocus train "
                                      f"{ckpt.parent.parent / 'recipe.json'} --resume {ckpt} --out {self.run_dir}) "
                                      "or start a new run with another --out")
        if self.acc.is_main_process:  # after the resume checks: a refused --resume creates no folder
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"cannot write to the run folder {self.run_dir}: {e.strerror or e} (choose a "
                                 "writable folder with --out or output.dir)") from None
        metrics = self.run_dir / "metrics.jsonl"
        if self.acc.is_main_process and not holds_run(self.run_dir) and metrics.is_file() and \
                (ckpt is None or not _inside(ckpt, self.run_dir)):
            dest = set_aside(metrics, self.run_dir)  # its rows must not pass for this run's
            self.log(f"{self.run_dir} held metrics of a run that stopped before its first checkpoint: moved to {dest}")
        self.acc.wait_for_everyone()
        if ckpt is not None and holds_run(self.run_dir) and not _inside(ckpt, self.run_dir):
            raise CheckpointError(f"--resume {ckpt}: {self.run_dir} already holds another run, and continuing "
                                  "there would mix the two runs' checkpoints and metrics; choose a new --out "
                                  "(output.dir)")
        if ckpt is not None:
            self.load_checkpoint(ckpt)  # first: a checkpoint that fails to load must not cost the later ones
            if _inside(ckpt, self.run_dir) and ckpt.name.startswith("step-") and ckpt.name[5:].isdigit():
                if self.acc.is_main_process:
                    moved = set_aside_later_checkpoints(self.run_dir, ckpt)
                    if moved:
                        names = ", ".join(m.name for m in moved)
                        self.log(f"rewinding to {ckpt.name}: the later checkpoints ({names}) moved to "
                                 f"{self.run_dir / 'abandoned'}")
                self.acc.wait_for_everyone()
            self.log(f"resumed from {ckpt} at iteration {self.state.iteration}")
            if not _inside(ckpt, self.run_dir):  # a branch: say where its first rows are, and how not to branch
                source = ckpt.parent.parent
                self.log(f"{self.run_dir} branches off {source} at iteration {self.state.iteration}: its "
                         f"metrics.jsonl starts there (the earlier rows are in {source / 'metrics.jsonl'}); to "
                         f"continue {source} itself, resume with --out {source}")
        else:
            if holds_run(self.run_dir):
                raise CheckpointError(f"{self.run_dir} already holds a run (checkpoints): continue it with --resume "
                                      "latest, or choose a new --out (output.dir)")
        if self.acc.is_main_process:
            atomic_write_json(self.run_dir / "recipe.json", to_dict(self.recipe))
        self._started = True

    def run(self, resume: str | None = None, stop_after: int | None = None,
            on_iteration: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until ``train.iterations`` (or ``stop_after`` more iterations); returns metrics rows."""
        self.start(resume)
        end = self.cfg.iterations if stop_after is None else min(self.cfg.iterations,
                                                                 self.state.iteration + stop_after)
        self._clock_start = time.monotonic()
        budget = self.cfg.time_budget_minutes * 60
        if self.state.iteration >= end:
            self.log(f"nothing to train: the run is at iteration {self.state.iteration} of train.iterations = "
                     f"{self.cfg.iterations} (raise train.iterations to continue it)")
        while self.state.iteration < end:
            reason = self._stop_reason(budget)
            if reason:
                self.terminated = reason == STOP_REQUESTED
                if not checkpoint_dirs(self.run_dir) or checkpoint_dirs(self.run_dir)[-1].name != \
                        f"step-{self.state.iteration}":
                    self.save_checkpoint()
                self.log(f"{reason} at iteration {self.state.iteration} (checkpoint step-{self.state.iteration})")
                break
            it = self.state.iteration
            try:
                row = self.pretrain_iteration(it) if self.cfg.algorithm == "pretrain" else self.rl_iteration(it)
            except RewardFailed as e:
                self._checkpoint_after_reward_failure()
                raise e.__cause__ from None
            ve = self.recipe.output.validate_every
            if ve and self.cfg.algorithm != "pretrain" and (it + 1) % ve == 0:
                row["validation"] = self.validation_reward()
            row["iteration"] = it
            row["lr"] = self.scheduler.get_last_lr()[0]
            with warnings.catch_warnings():  # the schedule follows iterations, also those whose groups all
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")  # tied
                self.scheduler.step()
            self.state.iteration = it + 1
            self._append_metrics(row)
            if on_iteration is not None:
                on_iteration(row)
            every = self.recipe.output.checkpoint_every
            if (it + 1) % every == 0 or it + 1 == end:
                self.save_checkpoint()
            se = self.recipe.output.sample_every
            if se and (it + 1) % se == 0:
                self.sample_grid(f"iter-{it + 1:05d}")
        return self.state.history

    def elapsed(self) -> float:
        """Wall-clock seconds this run has trained, over all its resumes (what the time budget counts)."""
        now = 0.0 if self._clock_start is None else time.monotonic() - self._clock_start
        return self.state.elapsed + now

    def _checkpoint_after_reward_failure(self) -> None:
        """A reward that fails (a server down past its retries) fails before the update, so the state is
        exactly that after the last completed iteration: checkpoint it, and the run resumes from there
        instead of from the last periodic checkpoint. One process only: other ranks could not join in."""
        it = self.state.iteration
        have = checkpoint_dirs(self.run_dir)
        if self.acc.num_processes > 1 or it == 0 or (have and have[-1].name == f"step-{it}"):
            return
        self.save_checkpoint()
        self.log(f"the reward failed at iteration {it}: checkpoint step-{it} saved; fix the reward and "
                 "continue with --resume latest")

    def _stop_reason(self, budget: float) -> str:
        """Why the loop stops before the next iteration ('' = it goes on): the time budget — counted over
        the whole run, so a resumed run gets only what is left of it (rank 0's clock decides) — or a
        termination signal on any rank; all ranks agree, so DDP never splits."""
        flags = torch.tensor([float(bool(budget) and self.elapsed() >= budget),
                              float(self.stop_requested)], device=self.acc.device)
        if self.acc.num_processes > 1:
            both = self.acc.gather(flags[None]).cpu()
            flags = torch.stack([both[0, 0], both[:, 1].max()])
        if flags[1]:
            return STOP_REQUESTED
        if flags[0]:
            return f"time budget of {self.cfg.time_budget_minutes:g} min reached"
        return ""

    # ------------------------------------------------------------------ pretraining
    def pretrain_iteration(self, it: int) -> dict:
        from maskfocus_cli.engine.pretrain import masked_ce_loss
        t0 = time.perf_counter()
        rank, world = self.acc.process_index, self.acc.num_processes
        per_rank = self.cfg.batch_size // world
        prompts, tokens = self.stream.batch(it, self.cfg.batch_size, self.cfg.prompt_dropout)
        prompts, tokens = prompts[rank * per_rank:(rank + 1) * per_rank], tokens[rank * per_rank:(rank + 1) * per_rank]
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, it, rank, "mask"))
        self.optimizer.zero_grad(set_to_none=True)
        if not hasattr(self, "_background"):
            from maskfocus_cli.engine.pretrain import background_code
            self._background = background_code(self.adapter)
        loss, stats = masked_ce_loss(self.adapter, self.net, prompts, tokens, gen, self._background)
        self.acc.backward(loss)
        grad_norm = self._clip()
        self.optimizer.step()
        self._after_optimizer_step(it)
        loss_value = float(loss.detach())
        if world > 1:  # the whole batch's numbers, as one process would log them (ranks hold equal shares)
            keys = list(stats)  # one all-reduce for all of them, not one per number
            vals = torch.tensor([loss_value] + [float(stats[k]) for k in keys], dtype=torch.float64)
            vals = self.acc.reduce(vals.to(self.acc.device), "mean").cpu().tolist()
            loss_value, stats = vals[0], dict(zip(keys, vals[1:]))
        return {"loss": loss_value, **stats, "grad_norm": grad_norm, "time": {"total": time.perf_counter() - t0}}

    def _clip(self) -> float:
        if self.cfg.grad_clip > 0:
            return float(self.acc.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip))
        return 0.0

    # ------------------------------------------------------------------ RL
    def _iteration_prompts(self, it: int) -> list[tuple[str, dict | None]]:
        rng = random.Random(derive_seed(self.cfg.seed, it, "prompts"))
        if self.prompt_weights is not None:
            return rng.choices(self.prompts, weights=self.prompt_weights, k=self.cfg.prompts_per_iter)
        return [self.prompts[rng.randrange(len(self.prompts))] for _ in range(self.cfg.prompts_per_iter)]

    def rl_iteration(self, it: int) -> dict:
        cfg, acc = self.cfg, self.acc
        G = cfg.group_size
        rank, world = acc.process_index, acc.num_processes
        times = {}
        t0 = time.perf_counter()
        chosen = self._iteration_prompts(it)
        total = len(chosen) * G
        mine = list(range(rank, total, world))  # k-repeat: a group's images are spread over ranks
        prompts = [chosen[i // G][0] for i in mine]
        metas = [chosen[i // G][1] for i in mine]
        seeds = [derive_seed(cfg.seed, it, i, "rollout") for i in mine]

        # 1. rollouts (policy in eval mode; the unwrapped module, no grad)
        self.policy.eval()
        cond = self.encoder(prompts)
        uncond = self.encoder([""] * len(prompts))
        res = sample(self.adapter, cond, uncond, seeds, self.settings, record=True, router=self.router,
                     net=self.rollout_net)
        traj = res.trajectory
        images = self.adapter.decode(res.tokens)
        times["rollout"] = time.perf_counter() - t0

        # 2. rewards, gathered so advantages see whole groups
        t1 = time.perf_counter()
        try:
            out = self.reward(images, prompts, metas)
        except Exception as e:  # nothing of this iteration has changed any state yet: say so to run()
            raise RewardFailed(e) from e
        local = torch.stack([out.total.float().cpu(), out.valid.float().cpu()]
                            + [out.components[k].float().cpu() for k in sorted(out.components)])
        gathered = acc.gather(local.to(acc.device).T.contiguous()).cpu()  # (total, 2 + C) in rank order
        order = torch.tensor([i for r in range(world) for i in range(r, total, world)])
        full = torch.empty_like(gathered)
        full[order] = gathered
        rewards, valid = full[:, 0], full[:, 1] > 0.5
        adv = group_advantages(rewards, valid, G)
        times["reward"] = time.perf_counter() - t1

        # 3. loss over the chosen steps, accumulated; one optimiser step per inner epoch
        t2 = time.perf_counter()
        mine_t = torch.tensor(mine)
        keep_local = adv.keep[mine_t]
        adv_local = adv.values[mine_t]
        n_keep_global = int(adv.keep.sum())
        stats = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "elements": 0.0}
        steps_used: list[int] = []
        if n_keep_global > 0:
            idx = keep_local.nonzero().flatten()
            sub = traj.select(idx)
            steps = self._choose_steps(sub, it, idx)
            steps_used = sorted(set(steps.flatten().tolist()))
            self.policy.train()
            old: dict = {}
            for epoch in range(cfg.inner_epochs):
                self.optimizer.zero_grad(set_to_none=True)
                e_stats = self._accumulate(sub, idx, steps, cond, uncond, adv_local, it, mine_t, old,
                                           n_keep_global, epoch)
                grad_norm = self._clip()
                self.optimizer.step()
                self._after_optimizer_step(it)
                if epoch == 0:  # loss and KL of the on-policy pass; clipping counts every pass (it bites
                    stats.update(e_stats)  # only from the second on, where the ratio has moved)
                else:
                    stats["clipped"] += e_stats["clipped"]
                    stats["elements"] += e_stats["elements"]
                stats["grad_norm"] = grad_norm
        stats = self._reduce_stats(stats)
        times["loss"] = time.perf_counter() - t2
        times["total"] = time.perf_counter() - t0

        n_invalid = int((~valid).sum())
        comp_names = sorted(out.components)
        row = {
            "reward": _mean_std(rewards[valid]),
            # a component counts where it is finite (a weight-0 "log only" one may be NaN where the total is not)
            "components": {k: _mean_std(c[valid & torch.isfinite(c)])
                           for k, c in ((k, full[:, 2 + j]) for j, k in enumerate(comp_names))},
            "reward_by_tag": reward_by_tag(rewards, valid, [chosen[i // G][1] for i in range(total)]),
            "loss": stats["loss"], "kl": stats["kl"], "grad_norm": stats.get("grad_norm"),
            "clip_fraction": stats["clipped"] / stats["elements"] if stats["elements"] else 0.0,
            "zero_std_ratio": adv.zero_std_groups / adv.groups,
            "kept": n_keep_global, "invalid_rewards": n_invalid,
            "steps": steps_used,
            "explore_fraction": self._rank_mean(traj.explore.float().mean()) if self.router else 0.0,
            "time": {k: round(v, 4) for k, v in times.items()},
        }
        if n_invalid:
            self.log(f"iteration {it}: {n_invalid} non-finite rewards skipped")
        return row

    def _reduce_stats(self, stats: dict) -> dict:
        """Loss, KL and clip counts of the whole rollout batch (summed over ranks), so the
        metrics of N ranks are those of one process."""
        keys = ("loss", "kl", "kl_count", "clipped", "elements")
        vals = torch.tensor([float(stats.get(k, 0.0)) for k in keys], dtype=torch.float64)
        if self.acc.num_processes > 1:
            vals = self.acc.reduce(vals.to(self.acc.device), "sum").cpu()
        out = {**stats, **dict(zip(keys, vals.tolist()))}
        out["kl"] = out["kl"] / out["kl_count"] if out["kl_count"] else 0.0
        return out

    def _rank_mean(self, value: torch.Tensor) -> float:
        """Mean over ranks of a per-rank mean (ranks hold equal rollout shares)."""
        if self.acc.num_processes > 1:
            value = self.acc.reduce(value.to(self.acc.device), "mean").cpu()
        return float(value)

    def _context(self) -> UpdateContext:
        return UpdateContext(self.adapter, self.net, self.reference, self.acc, self.settings, self.cfg.seed)

    def _choose_steps(self, sub: Trajectory, it: int, idx: torch.Tensor) -> torch.Tensor:
        """(k,) shared steps or (B, k) per-sample steps for this rank's kept samples (the estimator's)."""
        return self.estimator.choose_steps(self._context(), sub, it)

    def _units(self, b: int, steps: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """(j, t, rows) work units; each is ONE forward and ONE backward (what DDP expects)."""
        mb = self.cfg.micro_batch
        units = []
        for j in range(steps.shape[-1]):
            for lo in range(0, b, mb):
                rows = torch.arange(lo, min(b, lo + mb))
                if steps.dim() == 2:  # a step set per image: one forward per distinct step
                    ts = steps[rows, j]
                    units += [(j, int(t), rows[ts == t]) for t in ts.unique().tolist()]
                else:
                    units.append((j, int(steps[j]), rows))
        return units

    def _accumulate(self, sub: Trajectory, idx: torch.Tensor, steps: torch.Tensor, cond, uncond,
                    adv_local: torch.Tensor, it: int, mine_t: torch.Tensor, old: dict, n_keep_global: int,
                    epoch: int) -> dict:
        """All backward passes of one optimiser step; gradients all-reduce on the last one only.

        Every rank runs the same number of backward passes (short ranks add zero-weight
        passes), and only the last one synchronises, so DDP sums exactly once.
        """
        cfg, acc = self.cfg, self.acc
        units = self._units(idx.numel(), steps)
        n_units = len(units)
        if acc.num_processes > 1:
            n_units = int(acc.gather(torch.tensor([n_units], device=acc.device)).max())
        scale = acc.num_processes / (n_keep_global * steps.shape[-1])
        dev = self.adapter.device
        loss_cond = index_cond(cond, idx.to(dev))
        loss_uncond = index_cond(uncond, idx.to(dev)) if uncond is not None and cfg.loss_guidance else None
        settings = self.settings if cfg.loss_guidance else SamplerSettings(
            steps=self.settings.steps, guidance_scale=1.0 if self.adapter.guidance_form == "meissonic" else 0.0,
            schedule=self.settings.schedule, logit_temperature=self.settings.logit_temperature)
        out = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "elements": 0.0,
               "kl_count": float(idx.numel() * steps.shape[-1])}  # kl: a sum until rl_iteration divides
        for u in range(n_units):
            sync = u == n_units - 1
            with nullcontext() if sync or acc.num_processes == 1 else acc.no_sync(self.net):
                if u >= len(units):  # this rank has less work: a zero-weight pass keeps DDP in step
                    acc.backward(self._dummy_loss(sub, loss_cond) * 0.0)
                    continue
                j, t, rows = units[u]
                res = self._unit_loss(sub, rows, j, t, loss_cond, loss_uncond, settings, adv_local[idx[rows]],
                                      it, mine_t[idx[rows]], old, epoch)
                acc.backward(res.loss_sum * scale)
            out["loss"] += float(res.loss_sum.detach()) * scale / acc.num_processes
            out["kl"] += res.kl_sum
            out["clipped"] += res.clip_count
            out["elements"] += res.elements
        return out

    def _dummy_loss(self, sub: Trajectory, cond) -> torch.Tensor:
        if sub.final.shape[0]:
            tokens, c = sub.final[:1], index_cond(cond, slice(0, 1))
        else:
            tokens = torch.full((1, self.adapter.num_tokens), self.adapter.mask_id, device=self.adapter.device)
            c = self.encoder([""])
        info = step_info(0, self.settings.steps, self.adapter.num_tokens, sub.counts)
        return self.adapter.logits(tokens, c, info, None, 0.0, net=self.net).sum()

    def _unit_loss(self, sub: Trajectory, rows: torch.Tensor, j: int, t: int, cond, uncond,
                   settings: SamplerSettings, adv: torch.Tensor, it: int, global_idx: torch.Tensor, old: dict,
                   epoch: int):
        """The estimator's loss on one (step, rows) unit; π_old is cached from epoch 0."""
        dev = self.adapter.device
        c = index_cond(cond, rows.to(dev))
        u = index_cond(uncond, rows.to(dev)) if uncond is not None else None
        key = (j, t, int(rows[0]))
        res = self.estimator.unit_loss(self._context(), sub, Unit(j, t, rows, global_idx), c, u, settings,
                                       adv.to(dev), it, old.get(key))
        if epoch == 0:
            old[key] = res.logp
        return res

    # ------------------------------------------------------------------ evaluation grids
    @torch.no_grad()
    def _standard_samples(self, prompts: list[str], seeds: list[int]):
        """Images of the model a checkpoint hands out (the weight average if kept, else the policy) with
        the standard step (no routing, eval sampler), in micro-batches."""
        net = self.policy if self.ema_net is None else self.ema_net
        was = self.policy.training
        self.policy.eval()
        step = max(1, self.cfg.micro_batch)
        for lo in range(0, len(prompts), step):
            p = prompts[lo:lo + step]
            res = sample(self.adapter, self.encoder(p), self.encoder([""] * len(p)), seeds[lo:lo + step],
                         self.eval_settings, net=net)
            yield lo, self.adapter.decode(res.tokens)
        self.policy.train(was)

    def _eval_rows(self, limit: int) -> list[tuple[str, dict | None]]:
        """The first ``limit`` distinct eval prompts (shapes:heldout repeats prompts to balance its tags: a grid
        row twice says nothing new)."""
        rows, seen = [], set()
        for p, m in load_prompt_source(self.recipe.data.eval_prompts):
            if p not in seen and len(rows) < limit:
                seen.add(p)
                rows.append((p, m))
        return rows

    def validation_reward(self) -> dict:
        """Reward of the standard sampler on fixed eval prompts (4 fixed seeds each).

        The rollout reward is measured on routed samples, and a run can raise it by
        making exploratory samples less broken while what ``evaluate`` samples gets no
        better; this is the curve to watch. Uses no training RNG, so resume stays exact.
        """
        rows = self._eval_rows(self.recipe.data.num_validation_prompts)
        prompts = [p for p, _ in rows for _ in range(4)]
        metas = [m for _, m in rows for _ in range(4)]
        seeds = [derive_seed(self.cfg.seed, "validation", i) for i in range(len(prompts))]
        totals, valids = [], []
        for lo, images in self._standard_samples(prompts, seeds):
            out = self.reward(images, prompts[lo:lo + len(images)], metas[lo:lo + len(images)])
            totals.append(out.total.float().cpu())
            valids.append(out.valid.bool().cpu())
        total, valid = torch.cat(totals), torch.cat(valids)
        return {"reward": _mean_std(total[valid]), "by_tag": reward_by_tag(total, valid, metas)}

    def close(self) -> None:
        """End the run on every rank: wait for all of them, drop the wrapped model and optimiser, tear the
        process group down.

        The DDP wrapper holds the gloo group; left alive, the group is destroyed during interpreter shutdown,
        where its threads can abort the process ("terminate called without an active exception", about one
        2-rank run in seven on a busy machine) after a run that finished.
        """
        self.acc.wait_for_everyone()
        self.net = self.optimizer = self.scheduler = None
        self.acc.free_memory()  # accelerate's own references to the prepared objects, then gc
        self.acc.end_training()

    def sample_grid(self, name: str) -> Path | None:
        """Fixed eval prompts × 4 seeds → OUT/samples/NAME.png (main process)."""
        if not self.acc.is_main_process or self.recipe.data.num_eval_prompts == 0:
            return None
        path = self.run_dir / "samples" / f"{name}.png"
        same = self.run_dir / "samples" / f"iter-{self.state.iteration:05d}.png"
        if name == "final" and self._grid_at == self.state.iteration and same.is_file():  # these weights, sampled
            atomic_write_bytes(path, same.read_bytes())
            atomic_write_bytes(path.with_suffix(".json"), same.with_suffix(".json").read_bytes())
            return path
        from maskfocus_cli.io.images import contact_sheet, save_png
        rows = self._eval_rows(self.recipe.data.num_eval_prompts)
        prompts = [p for p, _ in rows for _ in range(4)]
        seeds = [j for _ in rows for j in range(4)]
        images = torch.cat([im for _, im in self._standard_samples(prompts, seeds)])
        self._grid_at = self.state.iteration
        save_png(contact_sheet(images, ncols=4, scale=2), path)
        # which prompt each row shows (rows of 4 seeds), beside the grid
        atomic_write_json(path.with_suffix(".json"), {"rows": [p for p, _ in rows], "seeds": [0, 1, 2, 3]})
        return path


class AdapterDisabled(nn.Module):
    """The frozen base of a peft model, as a module: the KL reference under LoRA."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = [peft_model]  # a list: not registered as a submodule (no double counting)

    def forward(self, *args, **kwargs):
        model = self.peft_model[0]
        with torch.no_grad(), model.disable_adapter():
            return model(*args, **kwargs)


def add_lora(adapter: MaskedT2IAdapter, rank: int, seed: int = 0) -> nn.Module:
    """Wrap the transformer with peft LoRA adapters on the adapter's ``lora_targets``."""
    from peft import LoraConfig, get_peft_model
    targets = getattr(adapter, "lora_targets", "all-linear")
    adapter.transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA's random init must not depend on what ran before (exact resume)
        return get_peft_model(adapter.transformer, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                                              target_modules=targets))


def reward_by_tag(rewards: torch.Tensor, valid: torch.Tensor, metas: list[dict | None]) -> dict[str, float]:
    """Mean valid reward per GenEval tag (prompts with metadata only): which skills are moving."""
    by: dict[str, list[float]] = {}
    for r, ok, m in zip(rewards.tolist(), valid.tolist(), metas):
        if ok and m and "tag" in m:
            by.setdefault(str(m["tag"]), []).append(r)
    return {t: sum(v) / len(v) for t, v in sorted(by.items())}


def _mean_std(x: torch.Tensor) -> dict:
    if x.numel() == 0:  # nothing valid: null in JSON (a bare NaN is not JSON, and strict parsers refuse it)
        return {"mean": None, "std": None}
    return {"mean": float(x.float().mean()), "std": float(x.float().std(unbiased=False))}


