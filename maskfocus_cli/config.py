"""Recipes: YAML → frozen dataclasses, strict keys, ``base:`` inheritance, ``--set`` overrides.

Every field carries its help text in ``field(metadata={"help": ...})`` (shown by
``maskfocus train --explain``), and optional ``choices`` / ``min`` / ``max`` that the
loader enforces. A typo'd key, a wrong type or an out-of-range value is rejected
with a message naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe problem the user must fix (the CLI prints it and exits 2)."""


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, factory: Any = None, length: int | None = None) -> Any:
    """A dataclass field with its help text and constraints (``length``: of a tuple value)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "length": length}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


#: experiment trackers accelerate knows (``output.log_with``)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    spec: str = opt("shapes", "model spec: shapes | shapes:DIR | amused:DIR | meissonic:DIR | showo:DIR")
    checkpoint: str | None = opt(None, "training checkpoint folder to start from (weights only)")
    dtype: str = opt("fp32", "weights dtype", choices=("fp32", "bf16", "fp16"))
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")


@dataclass(frozen=True)
class SamplerConfig:
    steps: int | None = opt(None, "T, number of unmasking steps (null: the model family's own, as for `maskfocus "
                                   "sample`: shapes 16, aMUSEd 12, Meissonic 64, Show-o 50)", min=1)
    guidance_scale: float | None = opt(None, "classifier-free guidance w, formula given by the model family (null: "
                                             "the family's own: shapes 3, aMUSEd 10, Meissonic 9, Show-o 5)", min=0)
    schedule: str = opt("cosine", "mask-ratio schedule", choices=("cosine", "linear"))
    logit_temperature: float = opt(1.0, "τ_logit in p = softmax(logits / τ_logit); a routed (exploring) token "
                                        "divides by τ_logit × its routing temperature", min=1e-6)
    gumbel_temperature: float | None = opt(None, "start of the annealed Gumbel confidence noise τ_t (→ 0); null: "
                                                 "the family's own (Show-o 1, the others 2)", min=0)
    negative_prompt: str | None = opt(None, "prompt of guidance's unconditional branch; null: the family's own "
                                            "(none, except Meissonic's fixed list of defects, as its scripts and "
                                            "MaskFocus use); \"\" turns it off")


@dataclass(frozen=True)
class CriticalConfig:
    selector: str = opt("info-gain", "which steps get the policy update",
                        choices=("info-gain", "random", "uniform", "first", "last", "all"))
    k: int = opt(3, "number of critical steps per rollout batch (ignored by 'all')", min=1)
    embed: str = opt("codebook", "embedding for step similarity", choices=("codebook", "pixels", "clip"))
    reduction: str = opt("batch", "'batch': one step set for the whole rollout batch, all ranks (official); "
                         "'sample': per image", choices=("batch", "sample"))
    clip_model: str = opt("ViT-B-32", "open_clip architecture for embed=clip")
    clip_weights: str | None = opt(None, "local open_clip weights file for embed=clip")


@dataclass(frozen=True)
class RoutingConfig:
    enabled: bool = opt(True, "entropy-based dynamic routing during rollouts (MaskFocus §3.3)")
    scale: float = opt(2.5, "exploratory temperature law: scale·exp(−H/decay) + floor", min=0)
    decay: float = opt(3.0, "entropy decay of the exploratory temperature law", min=1e-6)
    floor: float = opt(0.7, "minimum exploratory temperature", min=1e-6)


@dataclass(frozen=True)
class RewardConfig:
    name: str = opt("shapes-geneval", "registered reward name or 'package.module:callable'")
    weight: float = opt(1.0, "weight of this component in the summed reward")
    options: dict = opt(None, "keyword options passed to the reward factory", factory=dict)


@dataclass(frozen=True)
class DataConfig:
    prompts: str = opt("shapes:train", "training prompts: shapes:train | a .txt (one per line) | "
                       "a GenEval-style .jsonl")
    eval_prompts: str = opt("shapes:heldout", "prompts for periodic sample grids / evaluation")
    num_eval_prompts: int = opt(8, "how many eval prompts go into the periodic sample grid", min=0)
    num_validation_prompts: int = opt(48, "eval prompts (× 4 images) behind output.validate_every's reward", min=1)
    tag_weights: dict = opt(None, "how often training prompts (pretraining: scenes) of each GenEval tag are "
                            "drawn, relative to 1 (tags not named, and prompts without a tag, weigh 1); "
                            "e.g. {single_object: 0.25}",
                            factory=dict)
    caption_fidelity: dict = opt(None, "pretrain: share of counting / position training scenes that show "
                                 "their caption's count / relation (the rest show another): the base's "
                                 "headroom. Unset: engine/pretrain.py's CAPTION_FIDELITY", factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    algorithm: str = opt("maskfocus", "what to optimise",
                         choices=("maskfocus", "mask-grpo", "pretrain"))
    iterations: int = opt(100, "optimiser iterations (rollout batches)", min=1)
    prompts_per_iter: int = opt(8, "prompts per iteration (global, across ranks)", min=1)
    group_size: int = opt(4, "G, images per prompt; advantages are normalised within a group", min=1)
    micro_batch: int = opt(16, "images per forward/backward in the loss (memory knob)", min=1)
    advantage_std: str = opt("population", "the std in A = (r − mean) / (std + 1e-4) over a group: population "
                             "(÷ G) or unbiased (÷ G − 1, torch.std's default, as both papers' training code; at "
                             "G = 2 its advantages are 1/√2 as large, so the KL weighs more)",
                             choices=("population", "unbiased"))
    inner_epochs: int = opt(1, "optimiser passes over one rollout batch (>1 makes clipping bite)", min=1)
    lr: float = opt(1e-4, "AdamW learning rate", min=0)
    betas: tuple = opt((0.9, 0.999), "AdamW betas", length=2, min=0, max=0.999999)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0)
    weight_decay_on: str = opt("all", "which trained weights decay: all, or matrices only (biases, norm scales "
                               "and every other 1-D parameter free, as Mask-GRPO's training code does)",
                               choices=("all", "matrices"))
    warmup: int = opt(0, "linear warm-up iterations", min=0)
    lr_schedule: str = opt("constant", "after warm-up", choices=("constant", "cosine"))
    grad_clip: float = opt(1.0, "max global grad norm (0 = off)", min=0)
    kl_beta: float = opt(0.01, "β of the KL to the frozen reference (maskfocus estimator; see kl_estimator)", min=0)
    kl_max: float = opt(0.0, "cap on each token's k3 KL value (0 = uncapped, the paper's; verl caps at 10): "
                        "one token the policy stopped sampling can otherwise dominate a clipped update", min=0)
    kl_estimator: str = opt("k3", "maskfocus KL to the reference: k3 (the paper's, on the image's tokens) | "
                            "full (exact KL over the codebook at each masked position: no sampling noise, "
                            "no blow-up on tokens only explored rollouts drew)", choices=("k3", "full"))
    clip_low: float = opt(0.1, "ε_low of the asymmetric ratio clip (below 1: the ratio's floor is 1 − ε_low)",
                          min=0, max=0.999)
    clip_high: float = opt(0.2, "ε_high of the asymmetric ratio clip", min=0)
    reduction_steps: int = opt(0, "mask-grpo: optimise only the first R steps (0 = all T)", min=0)
    remask_term: bool = opt(False, "mask-grpo: add log P(re-masked tokens fall below the cut-off); needs "
                            "loss_guidance under CFG (the cut-offs are guided confidences)")
    loss_guidance: bool = opt(False, "score the loss with the rollout's CFG (else the conditional branch only, "
                              "as the official MaskFocus code does; under CFG the KL blew up in every probe)")
    seed: int = opt(0, "global seed (prompts, rollouts, step selection)")
    mixed_precision: str = opt("no", "accelerate mixed precision", choices=("no", "bf16", "fp16"))
    lora_rank: int = opt(0, "LoRA rank via peft (0 = full fine-tuning)", min=0)
    rollout_dtype: str = opt("fp32", "weights dtype of the rollout copy of the policy (bf16: ~1.2-1.8x faster "
                             "sampling where bf16 is native — GPUs since Ampere, CPUs with AVX-512 BF16 / AMX — "
                             "and ~5x slower where it is emulated, e.g. AVX2-only CPUs; auto: bf16 where native and "
                             "fine-tuning is full, else fp32; the loss still runs on the fp32 master weights, "
                             "re-cast after every optimiser step)", choices=("fp32", "bf16", "auto"))
    ema_decay: float = opt(0.0, "exponential moving average of the weights (0 = off): checkpoints' model "
                           "weights (what evaluate / sample --checkpoint / export read) are the average, the "
                           "raw policy goes to policy.safetensors for --resume; rollouts use the raw policy. "
                           "Decay warms up as min(d, (1+i)/(10+i)) at iteration i", min=0, max=0.9999)
    time_budget_minutes: float = opt(0.0, "stop (and checkpoint) after this much wall time, counted over "
                                     "the whole run (a resumed run gets what is left); 0 = no limit; for "
                                     "equal-budget comparisons", min=0)
    # supervised pretraining of the built-in model
    batch_size: int = opt(64, "pretrain: scenes per optimiser step", min=1)
    prompt_dropout: float = opt(0.1, "pretrain: probability of the empty prompt (enables CFG)", min=0, max=1)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = opt("runs/maskfocus", "run folder: checkpoints/, metrics.jsonl, samples/, reward.png")
    checkpoint_every: int = opt(10, "iterations between checkpoints", min=1)
    keep_last: int = opt(3, "checkpoints kept (older ones are deleted; 0 = keep every one)", min=0)
    sample_every: int = opt(0, "iterations between eval sample grids (0 = only at the end)", min=0)
    validate_every: int = opt(0, "iterations between a validation reward: eval prompts sampled with the standard "
                              "step (no routing, as `evaluate` samples), scored by the rewards; 0 = off", min=0)
    log_with: tuple = opt((), "experiment trackers fed through accelerate besides metrics.jsonl (each needs its own "
                          "package): rows as scalars at step = iteration, the recipe as config, sample grids as "
                          "images (TensorBoard, W&B, SwanLab); TensorBoard writes to OUT/trackers/",
                          choices=TRACKERS, factory=tuple)
    tracker_project: str | None = opt(None, "project / experiment name in the trackers (null: the run folder's name)")


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig = opt(None, "which model to train", factory=ModelConfig)
    sampler: SamplerConfig = opt(None, "rollout sampling settings", factory=SamplerConfig)
    eval_sampler: SamplerConfig | None = opt(None, "sampling for eval grids and validation (default: sampler, no "
                                             "routing; null fields take sampler's)")
    critical: CriticalConfig = opt(None, "critical-step selection", factory=CriticalConfig)
    routing: RoutingConfig = opt(None, "dynamic routing of rollouts", factory=RoutingConfig)
    rewards: tuple = opt((), "reward components (list of {name, weight, options})")
    data: DataConfig = opt(None, "prompt sources", factory=DataConfig)
    train: TrainConfig = opt(None, "optimisation", factory=TrainConfig)
    output: OutputConfig = opt(None, "where results go", factory=OutputConfig)


# --------------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to an annotated type; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            if value is None:
                raise ConfigError(f"{where}: the section is empty (give its keys below it, or remove the line)")
            raise ConfigError(f"{where}: expected a mapping of keys, got {value!r}")
        return build(tp, value, where)
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and bad values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}' (valid keys here: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        f = fields[name]
        if name == "rewards":
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a list of {{name, weight, options}}")
            kwargs[name] = tuple(build(RewardConfig, r if isinstance(r, dict) else {"name": r},
                                       f"{key}[{i}]") for i, r in enumerate(value))
            continue
        meta = f.metadata
        if value is False and "no" in (meta.get("choices") or ()):  # YAML 1.1 reads a bare `no` as false
            value = "no"
        listed = hints[name] is tuple and meta.get("choices")  # a list of choices: one may be given bare
        if listed and isinstance(value, str):
            value = [value]
        v = _convert(value, hints[name], key)
        _check_finite(v, key)
        if meta.get("length") is not None and isinstance(v, tuple):  # a fixed-length tuple of numbers
            if len(v) != meta["length"]:
                raise ConfigError(f"{key}: expected {meta['length']} values, got {len(v)} ({list(v)})")
            v = tuple(_convert(x, float, f"{key}[{i}]") for i, x in enumerate(v))
            _check_finite(v, key)
            for i, x in enumerate(v):
                if meta.get("min") is not None and x < meta["min"] or meta.get("max") is not None and x > meta["max"]:
                    raise ConfigError(f"{key}[{i}]: {x} is outside {meta.get('min')}…{meta.get('max')}")
        if listed:
            for x in v:
                if x not in meta["choices"]:
                    raise ConfigError(f"{key}: {x!r} is not one of {', '.join(map(str, meta['choices']))}")
        elif meta.get("choices") and v not in meta["choices"]:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(map(str, meta['choices']))}")
        if meta.get("min") is not None and isinstance(v, (int, float)) and v < meta["min"]:
            raise ConfigError(f"{key}: {v} is below the minimum {meta['min']}")
        if meta.get("max") is not None and isinstance(v, (int, float)) and v > meta["max"]:
            raise ConfigError(f"{key}: {v} is above the maximum {meta['max']}")
        kwargs[name] = v
    return cls(**kwargs)


def _check_finite(v: Any, key: str) -> None:
    """NaN / inf pass every min/max comparison, so they are refused here, once for all numbers."""
    import math
    values = v if isinstance(v, tuple) else (v,)
    if any(isinstance(x, float) and not math.isfinite(x) for x in values):
        raise ConfigError(f"{key}: {v!r} is not a finite number")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here; merged ones (<<: *anchor) may be overridden
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # a merge, or a complex key: the base constructor handles (or refuses) those
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one "
                                  "section (keep one)")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, _seen: tuple = ()) -> dict:
    """Read a recipe with its ``base:`` chain resolved (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        if _seen:  # a base: of another recipe
            raise ConfigError(f"{_seen[-1]}: its base: recipe {path} was not found (base: paths are relative to "
                              "the recipe that names them)")
        raise ConfigError(f"recipe not found: {path} (give the path to a .yaml recipe)")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{path} {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the recipe as UTF-8)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the file name of another recipe (e.g. base: geneval.yaml), got "
                          f"{base!r}")
    if base is not None:
        parent = read_yaml((path.parent / base), _seen + (path.resolve(),))
        data = _merge(parent, data)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML: 3, 1e-4, true, [1, 2]). ``a.b=`` (nothing) is the
    empty string, as a shell user means it (YAML would read null, which for ``sampler.negative_prompt`` means
    the family default: the opposite); ``a.b=null`` is null."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-5")
        key, raw = item.split("=", 1)
        if not key.strip() or "" in key.strip().split("."):
            raise ConfigError(f"--set {item!r}: the key is empty or has an empty part; e.g. --set train.lr=1e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:  # copy on the way down: the caller's dicts and lists stay untouched
            slot = _index(p, node, key) if isinstance(node, list) else p
            child = node[slot] if isinstance(node, list) else node.get(p)
            child = dict(child) if isinstance(child, dict) else list(child) if isinstance(child, list) else \
                {"name": child} if isinstance(child, str) and isinstance(node, list) else {}  # "- brightness"
            node[slot] = child
            node = child
        node[_index(parts[-1], node, key) if isinstance(node, list) else parts[-1]] = value
    return data


def _index(part: str, items: list, key: str) -> int:
    """A list position in a --set key (``rewards.0.options.weights``)."""
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"--set {key}: {part!r} is not a position in that list (0…{len(items) - 1}); or replace "
                          f"the whole list, e.g. --set 'rewards=[{{name: clip, options: {{...}}}}]'")
    return int(part)


def load_recipe(path: str | Path, overrides: list[str] | tuple = ()) -> Recipe:
    """Recipe file (+ overrides) → validated ``Recipe``; errors name the key and the file."""
    data = apply_overrides(read_yaml(Path(path)), list(overrides))
    try:
        return build(Recipe, data)
    except (TypeError, ValueError) as e:
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        # a --set key with a typo (or a bad value) is the command line's fault, not the file's
        if any(str(e).startswith(f"{k}:") for k in keys):
            raise ConfigError(f"--set {e}") from None
        given = [k for k in keys if f"'{k}'" in str(e)]
        raise ConfigError(f"--set {given[-1]}: {e}" if given else f"{path}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Recipe → plain dict (for checkpoints, model cards, metrics headers)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts → ``a.b.c`` keys (lists and scalars are leaves): recipe diffs, model-card metrics."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def value_at(obj: Any, key: str) -> Any:
    """A dotted recipe key's value, e.g. ``value_at(recipe, "train.lr")``."""
    for part in key.split("."):
        obj = None if obj is None else getattr(obj, part)  # inside an unset optional section: None
    return obj


def explain(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every field, recursively (for ``--explain``)."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        optional = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]  # e.g. SamplerConfig | None
        if dataclasses.is_dataclass(tp) or optional:
            rows.append((key, "None" if optional else "", f.metadata.get("help", "")))
            rows.extend(explain(optional[0] if optional else tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        help_ = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_ += f" [{'|'.join(map(str, f.metadata['choices']))}]"
        rows.append((key, repr(default), help_))
    return rows
