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
import dataclasses
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

from maskfocus_cli.config import Recipe, to_dict
from maskfocus_cli.engine.data import distinct_prompts, load_prompt_source, prompt_weights
from maskfocus_cli.engine.deepspeed_zero import (DEEPSPEED_DIR, accelerator_device, autocast_context, autocast_forward,
                                               check_shards, deepspeed_launch, import_deepspeed_quietly,
                                               is_deepspeed, load_optimizer, mark_boundary, quiet_stdout,
                                               save_optimizer, stale_shards)
from maskfocus_cli.engine.deepspeed_zero import configure as configure_deepspeed
from maskfocus_cli.engine import trackers
from maskfocus_cli.engine.estimators import Unit, UpdateContext, make_estimator
from maskfocus_cli.engine.grpo import group_advantages
from maskfocus_cli.engine.lora import AdapterDisabled, add_lora
from maskfocus_cli.engine.metrics import json_safe, mean_std, reward_by_tag
from maskfocus_cli.engine.monitor import SEEDS_PER_PROMPT, copy_grid, standard_samples, validation_reward, write_grid
from maskfocus_cli.engine.ranks import gather_in_order
from maskfocus_cli.engine.recipe_checks import (check_distributed_type, check_eval_prompts,
                                                check_metadata_for_reward, check_placeholders, check_vocabulary,
                                                warn_heldout_training)
from maskfocus_cli.engine.routing import make_router
from maskfocus_cli.engine.run_folder import (checkpoint_dirs, find_resume, holds_run, inside, recipe_changes,
                                             set_aside, set_aside_later_checkpoints, stale_checkpoints)
from maskfocus_cli.engine.sampling import (PromptEncoder, SamplerSettings, Trajectory, sample,
                                           mask_counts, step_info)
from maskfocus_cli.engine.seeds import derive_seed
from maskfocus_cli.engine.settings import lr_factor, param_groups, sampler_settings
from maskfocus_cli.engine.weight_copies import (keep_fp32_weights, make_ema_net, make_rollout_net,
                                                resolve_rollout_dtype, sync_rollout_net, update_average)
from maskfocus_cli.io.checkpoint import (CheckpointError, atomic_dir, atomic_write_json, read_trainer_info,
                                         save_weights)
from maskfocus_cli.models.base import MaskedT2IAdapter, index_cond
from maskfocus_cli.rewards.composite import reward_from_recipe
from maskfocus_cli.models.loading import absolute_spec


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
        check_placeholders(recipe)  # every FILL-IN at once, before anything (accelerate, models) starts
        trackers.check_trackers(recipe.output.log_with)
        import_deepspeed_quietly()  # before accelerate imports it with its stdout logger
        if accelerator is None:
            from maskfocus_cli.models.loading import resolve_device
            device = resolve_device(recipe.model.device)  # a bad value or a missing GPU: a clear error
            if device.type == "cpu" and self.cfg.mixed_precision == "fp16":  # accelerate would run fp32 silently
                raise ValueError("train.mixed_precision: fp16 needs a GPU (on CPU autocast is bf16 only): use bf16 "
                                 "or no")
            # under DeepSpeed accelerate's mixed precision is DeepSpeed's (half-precision weights): off, and bf16
            # is autocast of our own (deepspeed_zero.autocast_forward)
            precision = "no" if deepspeed_launch() else self.cfg.mixed_precision
            logging = {"log_with": list(recipe.output.log_with),
                       "project_dir": str(Path(recipe.output.dir) / "trackers")} if recipe.output.log_with else {}
            with quiet_stdout(deepspeed_launch()):
                accelerator = Accelerator(mixed_precision=precision, **accelerator_device(device), **logging)
        elif recipe.output.log_with:
            raise ValueError("output.log_with needs the trainer to build its own Accelerator (trackers are set up "
                             "when it is created)")
        self.acc = accelerator
        check_distributed_type(str(getattr(self.acc, "distributed_type", "NO")))
        self.deepspeed = is_deepspeed(self.acc)
        if deepspeed_launch() and not self.deepspeed:
            raise ValueError("accelerate was launched for DeepSpeed but set up without it (use_cpu: true in the "
                             "accelerate config drops it): remove use_cpu, or launch without DeepSpeed")
        if self.deepspeed:
            configure_deepspeed(self.acc, self.cfg.micro_batch, self.cfg.grad_clip, self.cfg.mixed_precision)
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
            keep_fp32_weights(self.adapter.transformer, self.log)
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
        pretrain = self.cfg.algorithm == "pretrain"
        rollout_dtype = "fp32" if pretrain else resolve_rollout_dtype(self.cfg.rollout_dtype, self.adapter.device,
                                                                      self.lora)
        if self.cfg.rollout_dtype == "auto" and not pretrain and self.acc.is_main_process:
            self.log(f"train.rollout_dtype auto: rollouts sample with {rollout_dtype} weights on this "
                     f"{self.adapter.device.type}" + ("" if rollout_dtype == "bf16" else
                                                     " (bf16 is not native here, or LoRA is on)"))
        self.rollout_net = make_rollout_net(self.policy, rollout_dtype, self.lora)
        self.ema_net = make_ema_net(self.policy, self.cfg.ema_decay, self.lora)
        groups = param_groups(self.policy.named_parameters(), self.cfg.weight_decay, self.cfg.weight_decay_on)
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, self.cfg.warmup, self.cfg.iterations, self.cfg.lr_schedule))
        with quiet_stdout(self.deepspeed):
            self.net, self.optimizer = self.acc.prepare(self.policy, self.optimizer)
        self.autocast = autocast_context(self.acc, self.cfg.mixed_precision)
        if self.deepspeed and self.cfg.mixed_precision != "no":
            autocast_forward(self.net.module, self.autocast)
        for st in (self.settings, self.eval_settings):  # too many steps for the image: refuse now, not mid-run
            mask_counts(self.adapter.num_tokens, st.steps, st.schedule)
        self.encoder = PromptEncoder(self.adapter)
        self.state = RunState()
        self._clock_start: float | None = None  #: time.monotonic() when this process's loop began
        self._started = False
        self._grid_at: int | None = None  #: the iteration this process last drew a sample grid at
        self.stop_requested = False  #: set from a signal handler: stop after the current iteration
        self.terminated = False  #: the loop stopped on that request (not at its end or time budget)
        check_eval_prompts(recipe, self.adapter)
        for key, st in (("sampler.negative_prompt", self.settings), ("eval_sampler.negative_prompt",
                                                                    self.eval_settings)):  # grids use it too
            check_vocabulary(self.adapter, [(st.negative_prompt, None)], key)
        if self.cfg.algorithm != "pretrain":
            self.prompts = load_prompt_source(recipe.data.prompts)
            check_vocabulary(self.adapter, self.prompts, "data.prompts")
            if self.acc.is_main_process:
                warn_heldout_training(recipe, self.adapter, self.prompts, self.log)
            self.prompt_weights = prompt_weights(self.prompts, recipe.data.tag_weights, recipe.data.prompts)
            check_metadata_for_reward(recipe, self.prompts, reward_fn)  # before the reward loads its weights
            self.reward = reward_fn or reward_from_recipe(self.recipe.rewards)
            # ranks route on the whole rollout batch's median entropy, as one process would
            gather = None if self.acc.num_processes == 1 else self._gather
            self.router = make_router(recipe.routing.enabled, recipe.routing.scale, recipe.routing.decay,
                                      recipe.routing.floor, gather)
        else:
            from maskfocus_cli.engine.pretrain import SceneStream, pretrain_mix
            self.stream = SceneStream(self.adapter, self.cfg.seed, tag_mix=pretrain_mix(recipe.data.tag_weights),
                                      fidelity=recipe.data.caption_fidelity or None)

    # ------------------------------------------------------------------ set-up helpers
    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's equal-length tensor (rewards, validation scores, routing entropies), concatenated in
        rank order, on the device ``values`` came from."""
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

    def _after_optimizer_step(self, it: int) -> None:
        """Bring the rollout copy and the weight average up to the new weights."""
        sync_rollout_net(self.rollout_net, self.policy)
        update_average(self.ema_net, self.policy, self.cfg.ema_decay, it)

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
            if self.deepspeed:
                shards.replace(tmp / DEEPSPEED_DIR)
                torch.save({"scheduler": self.scheduler.state_dict()}, tmp / "training_state.pt")
            else:
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                           tmp / "training_state.pt")
            atomic_write_json(tmp / "trainer.json", {
                "iteration": it, "algorithm": self.cfg.algorithm, "model": absolute_spec(self.recipe.model.spec),
                "elapsed_seconds": round(self.elapsed(), 3),
                # what null sampler fields resolved to: the record, and a resume check that survives a change
                # of a family's defaults between versions
                "sampler": dataclasses.asdict(self.settings), "eval_sampler": dataclasses.asdict(self.eval_settings),
                "recipe": to_dict(self.recipe), "last_metrics": self.state.history[-1] if self.state.history else {}})

        shards = final.with_name(f".{final.name}.{DEEPSPEED_DIR}")
        if self.deepspeed:  # every rank writes its optimiser shard; fill() moves them into the checkpoint
            if self.acc.is_main_process:
                for leftover in stale_shards(final.parent):
                    shutil.rmtree(leftover, ignore_errors=True)
            self.acc.wait_for_everyone()
            save_optimizer(self.net, shards, self.lora)
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                check_shards(shards, self.acc.num_processes, "save")
        if self.acc.is_main_process:
            atomic_dir(final, fill)
            for old in stale_checkpoints(checkpoint_dirs(self.run_dir), self.recipe.output.keep_last):
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        from maskfocus_cli.io.checkpoint import load_weights
        info = read_trainer_info(path)
        self.adapter.check_checkpoint(path)
        saved_by_deepspeed = (path / DEEPSPEED_DIR).is_dir()
        if saved_by_deepspeed != self.deepspeed:
            how = ("a DeepSpeed run: its optimiser state is in per-rank shards; resume it under the same accelerate "
                   "launch (--use_deepspeed)") if saved_by_deepspeed else \
                "a run without DeepSpeed: its optimiser state is one torch file; resume it without DeepSpeed"
            raise CheckpointError(f"{path} was saved by {how}, or start a new run from its weights with "
                                  "model.checkpoint")
        if self.deepspeed:  # before any weights load
            check_shards(path / DEEPSPEED_DIR, self.acc.num_processes, "resume")
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
        if self.deepspeed:
            load_optimizer(self.net, path / DEEPSPEED_DIR, self.lora)
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # what the scheduler set last, whatever the loaded optimiser state says
        sync_rollout_net(self.rollout_net, self.policy)
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
        row.update(json_safe(row))  # a NaN / inf number is null: strict JSON readers (jq) refuse the bare word
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
            info = read_trainer_info(ckpt)
            saved = info.get("recipe")
            changes = recipe_changes(saved, to_dict(self.recipe)) if isinstance(saved, dict) else []
            sampled = info.get("sampler")
            if isinstance(sampled, dict) and not changes:  # the settings the run really sampled with
                now = dataclasses.asdict(self.settings)
                changes = [f"sampler.{k} (resolved): {sampled.get(k)!r} → {v!r}" for k, v in now.items()
                           if k in sampled and sampled[k] != v]
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
                (ckpt is None or not inside(ckpt, self.run_dir)):
            dest = set_aside(metrics, self.run_dir)  # its rows must not pass for this run's
            self.log(f"{self.run_dir} held metrics of a run that stopped before its first checkpoint: moved to {dest}")
        self.acc.wait_for_everyone()
        if ckpt is not None and holds_run(self.run_dir) and not inside(ckpt, self.run_dir):
            raise CheckpointError(f"--resume {ckpt}: {self.run_dir} already holds another run, and continuing "
                                  "there would mix the two runs' checkpoints and metrics; choose a new --out "
                                  "(output.dir)")
        if ckpt is not None:
            self.load_checkpoint(ckpt)  # first: a checkpoint that fails to load must not cost the later ones
            if inside(ckpt, self.run_dir) and ckpt.name.startswith("step-") and ckpt.name[5:].isdigit():
                if self.acc.is_main_process:
                    moved = set_aside_later_checkpoints(self.run_dir, ckpt)
                    if moved:
                        names = ", ".join(m.name for m in moved)
                        self.log(f"rewinding to {ckpt.name}: the later checkpoints ({names}) moved to "
                                 f"{self.run_dir / 'abandoned'}")
                self.acc.wait_for_everyone()
            self.log(f"resumed from {ckpt} at iteration {self.state.iteration}")
            if not inside(ckpt, self.run_dir):  # a branch: say where its first rows are, and how not to branch
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
        out = self.recipe.output
        trackers.start(self.acc, out.log_with, out.tracker_project or self.run_dir.resolve().name,
                       to_dict(self.recipe), self.run_dir, fresh=ckpt is None or not inside(ckpt, self.run_dir))
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
            trackers.log_row(self.acc, row, step=it)
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
        grad_norm, skipped = self._step(it)
        loss_value = float(loss.detach())
        if world > 1:  # the whole batch's numbers, as one process would log them (ranks hold equal shares)
            keys = list(stats)  # one all-reduce for all of them, not one per number
            vals = torch.tensor([loss_value] + [float(stats[k]) for k in keys], dtype=torch.float64)
            vals = self.acc.reduce(vals.to(self.acc.device), "mean").cpu().tolist()
            loss_value, stats = vals[0], dict(zip(keys, vals[1:]))
        return {"loss": loss_value, **stats, "grad_norm": grad_norm, "skipped_steps": int(skipped),
                "time": {"total": time.perf_counter() - t0}}

    def _clip(self) -> float | None:
        """The global gradient norm (clipped to train.grad_clip when > 0); None where DeepSpeed computed none."""
        if self.deepspeed:  # DeepSpeed clipped inside its step (gradient_clipping = train.grad_clip): its norm
            norm = self.net.get_global_grad_norm()  # inf where it skipped a non-finite gradient
            return float(norm) if norm is not None else None
        return float(self.acc.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip or math.inf))

    def _step(self, it: int) -> tuple[float | None, bool]:
        """Clip and take the optimiser step, unless the gradient is not finite: then skip it, so one bad batch
        (a NaN loss, an overflow) cannot turn every weight into NaN — DeepSpeed skips such steps itself.
        Returns (gradient norm or None when not finite or not known, whether the step was skipped)."""
        norm = self._clip()
        if norm is not None and not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)  # every rank holds the same reduced norm: all skip
            if self.acc.is_main_process:
                self.log(f"iteration {it}: the gradient is not finite (norm {norm}): optimiser step skipped (if "
                         "it keeps happening, lower train.lr or check the loss's inputs)")
            return None, True
        self.optimizer.step()
        self._after_optimizer_step(it)
        return norm, False

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
        uncond = self.encoder([self.settings.negative_prompt] * len(prompts))
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
        full = gather_in_order(local.T.contiguous(), total, world, self._gather)  # (total, 2 + C), image order
        rewards, valid = full[:, 0], full[:, 1] > 0.5
        adv = group_advantages(rewards, valid, G, unbiased=cfg.advantage_std == "unbiased")
        times["reward"] = time.perf_counter() - t1

        # 3. loss over the chosen steps, accumulated; one optimiser step per inner epoch
        t2 = time.perf_counter()
        mine_t = torch.tensor(mine)
        keep_local = adv.keep[mine_t]
        adv_local = adv.values[mine_t]
        n_keep_global = int(adv.keep.sum())
        stats = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "elements": 0.0}
        skipped_steps = 0  # optimiser steps skipped for a non-finite gradient
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
                grad_norm, skipped = self._step(it)
                skipped_steps += int(skipped)
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
            "reward": mean_std(rewards[valid]),
            # a component counts where it is finite (a weight-0 "log only" one may be NaN where the total is not)
            "components": {k: mean_std(c[valid & torch.isfinite(c)])
                           for k, c in ((k, full[:, 2 + j]) for j, k in enumerate(comp_names))},
            "reward_by_tag": reward_by_tag(rewards, valid, [chosen[i // G][1] for i in range(total)]),
            "loss": stats["loss"], "kl": stats["kl"], "grad_norm": stats.get("grad_norm"),
            "skipped_steps": skipped_steps,
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
        return UpdateContext(self.adapter, self.net, self.reference, self.acc, self.settings, self.cfg.seed,
                             self.autocast)

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
            if self.deepspeed:  # DeepSpeed steps inside the backward that ends the accumulation
                mark_boundary(acc, self.net, sync)
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

    # ------------------------------------------------------------------ what the run shows of itself
    def _standard_samples(self, prompts: list[str], seeds: list[int]):
        """Images of the model a checkpoint hands out (the weight average if kept, else the policy)."""
        net = self.policy if self.ema_net is None else self.ema_net
        was = self.policy.training
        self.policy.eval()
        yield from standard_samples(self.adapter, net, self.encoder, self.eval_settings, prompts, seeds,
                                    self.cfg.micro_batch)
        self.policy.train(was)

    def validation_reward(self) -> dict:
        """The standard sampler's reward on fixed eval prompts (``monitor.validation_reward``)."""
        # the source's own rows (tag-balanced for shapes:heldout, repeats included), unlike the grids' distinct ones
        rows = load_prompt_source(self.recipe.data.eval_prompts)[:self.recipe.data.num_validation_prompts]
        seeds = [derive_seed(self.cfg.seed, "validation", i) for i in range(len(rows) * SEEDS_PER_PROMPT)]
        return validation_reward(self.reward, self._standard_samples, rows, seeds, rank=self.acc.process_index,
                                 world=self.acc.num_processes, gather=self._gather)

    def sample_grid(self, name: str) -> Path | None:
        """Fixed eval prompts × 4 seeds → OUT/samples/NAME.png (main process)."""
        if not self.acc.is_main_process or self.recipe.data.num_eval_prompts == 0:
            return None
        path = self.run_dir / "samples" / f"{name}.png"
        same = self.run_dir / "samples" / f"iter-{self.state.iteration:05d}.png"
        if name == "final" and self._grid_at == self.state.iteration and same.is_file():  # these weights, drawn
            return copy_grid(same, path)
        self._grid_at = self.state.iteration
        grid = write_grid(path, self._standard_samples,
                          distinct_prompts(self.recipe.data.eval_prompts, self.recipe.data.num_eval_prompts))
        trackers.log_image(self.acc, "samples", grid, step=self.state.iteration)
        return grid
