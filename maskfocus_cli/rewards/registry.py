"""Reward registry: names -> factories, plus a dotted-path escape hatch.

A *reward* is a plain callable::

    reward(images: Tensor (B, 3, H, W) float in [0, 1],
           prompts: list[str],
           metadata: list[dict | None]) -> Tensor (B,) float

A *factory* is anything called with keyword options that returns a reward (a
class whose instances are rewards is the usual factory: heavy models load once
in ``__init__`` and every call reuses them).

Built-in rewards are listed by dotted path and imported only when asked for, so
importing this module never pulls in open_clip or transformers.

Dotted paths (``"pkg.module:attr"``) let users plug in their own reward without
touching this package:

* ``attr`` is a **class** -> it is the factory: ``attr(**options)`` is the reward;
* ``attr`` is any other **callable** (a function, or an already-built reward
  object) -> it *is* the reward, used as is; options are then an error (wrap the
  function in a class, or register a factory with ``@register``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

import torch


class RewardFn(Protocol):
    """(images (B,3,H,W) in [0,1], prompts, metadata) -> scores (B,)."""

    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict | None]) -> torch.Tensor: ...


Factory = Callable[..., RewardFn]

#: built-in rewards: name -> "module:factory", imported lazily by ``make_reward``
_BUILTIN: dict[str, str] = {
    "shapes-geneval": "maskfocus_cli.rewards.shapes_geneval:ShapesGenEvalReward",
    "geneval": "maskfocus_cli.rewards.geneval_reward:GenEvalReward",
    "clip": "maskfocus_cli.rewards.clip_score:ClipScore",
    "hpsv2": "maskfocus_cli.rewards.hpsv2:HPSv2Reward",
    "pickscore": "maskfocus_cli.rewards.pickscore:PickScore",
    "http": "maskfocus_cli.rewards.http_reward:HttpReward",
    "brightness": "maskfocus_cli.rewards.simple:Brightness",
}

_REGISTRY: dict[str, Factory] = {}


def register(name: str, *, overwrite: bool = False) -> Callable[[Factory], Factory]:
    """Decorator registering a reward *factory* under ``name``.

    ``make_reward(name, **options)`` then returns ``factory(**options)``. A class is
    a factory; for an option-less function reward write a zero-argument factory
    returning it. Re-registering a taken name is an error unless ``overwrite``.
    """
    if not name or ":" in name:
        raise ValueError(f"invalid reward name {name!r}: use a non-empty name without ':'")

    def deco(factory: Factory) -> Factory:
        if not overwrite and (name in _REGISTRY or name in _BUILTIN):
            raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Names accepted by ``make_reward`` (besides dotted paths), sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def _import_attr(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"bad reward path {path!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for reward {path!r}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {path!r})")
        obj = getattr(obj, part)
    return obj


def _check_options(name: str, factory: Any, options: dict) -> None:
    """A typo'd option is a recipe error like a typo'd key: name it and list the valid ones."""
    import inspect
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items() if k != "self" and p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"reward {name!r}: unknown option {unknown[0]!r} (valid: {', '.join(valid) or 'none'})")


def _build(name: str, factory: Any, options: dict) -> RewardFn:
    _check_options(name, factory, options)
    return factory(**options)


def reward_factory(name: str) -> Any:
    """What ``make_reward(name)`` would call, without calling it: class attributes such as ``needs_metadata``
    can be read before a reward loads its weights. None for an unknown name (make_reward says so)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        return _import_attr(_BUILTIN[name])
    return _import_attr(name) if ":" in name else None


def make_reward(name: str, **options: Any) -> RewardFn:
    """Build a reward from a registered name or a ``"pkg.module:attr"`` dotted path."""
    if name in _REGISTRY:
        return _build(name, _REGISTRY[name], options)
    if name in _BUILTIN:
        return _build(name, _import_attr(_BUILTIN[name]), options)
    if ":" in name:
        obj = _import_attr(name)
        if isinstance(obj, type):
            return _build(name, obj, options)
        if not callable(obj):
            raise ValueError(f"{name!r} is not callable; a dotted reward path must name a class or a callable")
        if options:
            raise ValueError(f"{name!r} is a plain callable and takes no options (got {sorted(options)}); "
                             "make it a class whose __init__ takes the options, or register a factory")
        return obj
    raise ValueError(f"unknown reward {name!r}; available: {', '.join(available())} "
                     "(or a dotted path 'package.module:attr')")


# The composite lives in its own module; re-exported here because callers think of
# "the registry" as the place to get rewards from.
from maskfocus_cli.rewards.composite import (  # noqa: E402  (import after definitions: no cycle)
    CompositeReward, RewardOutput, RewardSpec, parse_specs, summary,
)

__all__ = ["RewardFn", "register", "available", "make_reward", "RewardSpec", "RewardOutput",
           "CompositeReward", "parse_specs", "summary"]
