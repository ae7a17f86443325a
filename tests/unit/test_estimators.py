"""engine/estimators.py: the recipe names the strategy; each strategy chooses its steps and its loss."""

from __future__ import annotations

import pytest
import torch

from maskfocus_cli.config import Recipe, build
from maskfocus_cli.engine.estimators import (MaskFocusEstimator, MaskGRPOEstimator, UpdateContext,
                                             make_estimator)
from maskfocus_cli.engine.sampling import SamplerSettings


class _OneRank:
    process_index, num_processes = 0, 1


def recipe(**train) -> Recipe:
    return build(Recipe, {"train": train})


def ctx(steps: int) -> UpdateContext:
    return UpdateContext(adapter=None, net=None, reference=None, acc=_OneRank(),
                         settings=SamplerSettings(steps=steps), seed=0)


def test_mask_grpo_scores_every_step_or_the_first_r():
    est = make_estimator(recipe(algorithm="mask-grpo"), adapter=None, steps=12)
    assert isinstance(est, MaskGRPOEstimator) and not est.uses_reference
    assert est.choose_steps(ctx(12), sub=None, it=0).tolist() == list(range(12))
    est = make_estimator(recipe(algorithm="mask-grpo", reduction_steps=5), adapter=None, steps=12)
    assert est.choose_steps(ctx(12), sub=None, it=0).tolist() == [0, 1, 2, 3, 4]


def test_maskfocus_keeps_a_reference_only_with_a_kl_term_and_checks_k():
    r = build(Recipe, {"train": {"algorithm": "maskfocus", "kl_beta": 0.05}, "critical": {"selector": "random"}})
    est = make_estimator(r, adapter=None, steps=16)
    assert isinstance(est, MaskFocusEstimator) and est.uses_reference and est.embedder is None
    r0 = build(Recipe, {"train": {"kl_beta": 0.0}, "critical": {"selector": "random"}})
    assert not make_estimator(r0, adapter=None, steps=16).uses_reference
    big_k = build(Recipe, {"critical": {"selector": "random", "k": 20}})
    with pytest.raises(ValueError, match="critical.k = 20 is larger than sampler.steps = 16"):
        make_estimator(big_k, adapter=None, steps=16)


def test_random_selector_draws_k_distinct_steps_alike_for_the_same_seed_and_iteration():
    r = build(Recipe, {"critical": {"selector": "random", "k": 3}})
    est = make_estimator(r, adapter=None, steps=16)

    class Sub:  # the selector needs no trajectory, only the batch size
        final = torch.zeros(4, 8, dtype=torch.long)
    a, b = est.choose_steps(ctx(16), Sub(), it=7), est.choose_steps(ctx(16), Sub(), it=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3 and max(a.tolist()) <= 13  # candidates 0…T−3
    assert any(est.choose_steps(ctx(16), Sub(), it=i).tolist() != a.tolist() for i in range(8, 12))


def test_pretraining_has_no_policy_update_estimator():
    with pytest.raises(ValueError, match="no policy-update estimator"):
        make_estimator(recipe(algorithm="pretrain"), adapter=None, steps=16)
