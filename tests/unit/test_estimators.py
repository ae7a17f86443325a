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
    est = make_estimator(recipe(algorithm="mask-grpo"), adapter=None, settings=SamplerSettings(steps=12))
    assert isinstance(est, MaskGRPOEstimator) and not est.uses_reference
    assert est.choose_steps(ctx(12), sub=None, it=0).tolist() == list(range(12))
    est = make_estimator(recipe(algorithm="mask-grpo", reduction_steps=5), adapter=None,
                         settings=SamplerSettings(steps=12))
    assert est.choose_steps(ctx(12), sub=None, it=0).tolist() == [0, 1, 2, 3, 4]


def test_maskfocus_keeps_a_reference_only_with_a_kl_term_and_checks_k():
    r = build(Recipe, {"train": {"algorithm": "maskfocus", "kl_beta": 0.05}, "critical": {"selector": "random"}})
    est = make_estimator(r, adapter=None, settings=SamplerSettings(steps=16))
    assert isinstance(est, MaskFocusEstimator) and est.uses_reference and est.embedder is None
    r0 = build(Recipe, {"train": {"kl_beta": 0.0}, "critical": {"selector": "random"}})
    assert not make_estimator(r0, adapter=None, settings=SamplerSettings(steps=16)).uses_reference
    big_k = build(Recipe, {"critical": {"selector": "random", "k": 20}})
    with pytest.raises(ValueError, match="critical.k = 20 is larger than sampler.steps = 16"):
        make_estimator(big_k, adapter=None, settings=SamplerSettings(steps=16))


def test_random_selector_draws_k_distinct_steps_alike_for_the_same_seed_and_iteration():
    r = build(Recipe, {"critical": {"selector": "random", "k": 3}})
    est = make_estimator(r, adapter=None, settings=SamplerSettings(steps=16))

    class Sub:  # the selector needs no trajectory, only the batch size
        final = torch.zeros(4, 8, dtype=torch.long)
    a, b = est.choose_steps(ctx(16), Sub(), it=7), est.choose_steps(ctx(16), Sub(), it=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3 and max(a.tolist()) <= 13  # candidates 0…T−3
    assert any(est.choose_steps(ctx(16), Sub(), it=i).tolist() != a.tolist() for i in range(8, 12))


def test_pretraining_has_no_policy_update_estimator():
    with pytest.raises(ValueError, match="no policy-update estimator"):
        make_estimator(recipe(algorithm="pretrain"), adapter=None, settings=SamplerSettings(steps=16))


def test_mask_grpo_replays_the_rollout_step_noise_in_its_remask_term(tiny_shapes_dir):
    """The term on a real recorded rollout uses the rollout's own τ_t (2.0 at step 0 here): it is the
    noisy-confidence probability, not the always-0 comparison of log-probs with the cut-off."""
    from maskfocus_cli.engine.estimators import Unit
    from maskfocus_cli.engine.grpo import log_prob_below_cutoff
    from maskfocus_cli.engine.sampling import sample, step_info, step_log_probs
    from maskfocus_cli.models.loading import load_model
    adapter = load_model(f"shapes:{tiny_shapes_dir}", device="cpu")
    settings = SamplerSettings(steps=4, guidance_scale=3.0, gumbel_temperature=2.0)
    prompts = ["a red circle", "a blue square"]
    cond, uncond = adapter.encode_prompts(prompts), adapter.encode_prompts(["", ""])
    traj = sample(adapter, cond, uncond, [0, 1], settings, record=True).trajectory
    c = UpdateContext(adapter, adapter.transformer, None, _OneRank(), settings, seed=0)
    loss_settings = SamplerSettings(steps=4, guidance_scale=1.0)

    def logp(remask: bool, t: int) -> torch.Tensor:
        est = MaskGRPOEstimator(0, remask, 0.1, 0.2)
        unit = Unit(0, t, torch.arange(2), torch.arange(2))
        return est.unit_loss(c, traj, unit, cond, uncond, loss_settings, torch.ones(2), 0, None).logp

    for t, tau in ((0, 2.0), (1, 2.0 * 2 / 3)):  # τ_t = linspace(2, 0) over 4 steps: the rollout's own value
        with torch.no_grad():
            all_lp = step_log_probs(adapter, traj.states[t], cond, uncond, step_info(t, 4, adapter.num_tokens,
                                    traj.counts), loss_settings)
        stayed = (traj.states[t] == adapter.mask_id) & (traj.states[t + 1] == adapter.mask_id)
        term = torch.where(stayed, log_prob_below_cutoff(all_lp, traj.threshold[t], tau), torch.zeros(())).sum(1)
        torch.testing.assert_close(logp(True, t) - logp(False, t), term, rtol=1e-4, atol=1e-4)
        assert (term < -1e-3).all()


def test_mask_grpo_remask_term_needs_the_rollout_guidance_in_the_loss(tiny_shapes_dir):
    """The cut-offs are confidences under the rollout's CFG: scoring P(stay masked) with the conditional branch
    alone would compare two different scales, so that combination is refused, and the matching ones build."""
    from maskfocus_cli.models.loading import load_model
    adapter = load_model(f"shapes:{tiny_shapes_dir}", device="cpu")
    guided, plain = SamplerSettings(steps=16, guidance_scale=3.0), SamplerSettings(steps=16, guidance_scale=1.0)

    def r(loss_guidance: bool) -> Recipe:
        return recipe(algorithm="mask-grpo", remask_term=True, loss_guidance=loss_guidance)
    with pytest.raises(ValueError, match="set train.loss_guidance: true"):
        make_estimator(r(False), adapter, guided)
    assert make_estimator(r(True), adapter, guided).remask_term
    assert make_estimator(r(False), adapter, plain).remask_term  # no CFG (w = 1, Meissonic form): same scale
