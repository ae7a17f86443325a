"""GRPO core against hand-computed values: advantages, surrogate, KL, both estimators' gradients."""

import math

import pytest
import torch

from maskfocus_cli.engine.grpo import (categorical_kl, clipped_surrogate, group_advantages, k3_kl,
                                       log_prob_below_cutoff, mask_grpo_step_loss, maskfocus_step_loss,
                                       random_remask)
from maskfocus_cli.engine.sampling import SamplerSettings, step_log_probs
from maskfocus_cli.models.base import StepInfo


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 4.0])
    adv = group_advantages(r, torch.ones(6, dtype=torch.bool), 2)
    # group 0: mean .5 std .5 -> ±1/(1+2e-4); group 1: all equal -> dropped; group 2: mean 3, std 1
    e = 1e-4
    torch.testing.assert_close(adv.values, torch.tensor([.5 / (.5 + e), -.5 / (.5 + e), 0, 0, -1 / (1 + e),
                                                         1 / (1 + e)]))
    assert adv.keep.tolist() == [True, True, False, False, True, True]
    assert adv.zero_std_groups == 1 and adv.groups == 3


def test_unbiased_advantages_divide_by_n_minus_one_as_torch_std():
    r = torch.tensor([1.0, 3.0, 0.0, 1.0, 2.0, float("nan")])
    valid = torch.isfinite(r)
    adv = group_advantages(r, valid, 3, unbiased=True)
    # group 0 {1, 3, 0}: mean 4/3, Σ(r − mean)² = 1/9 + 25/9 + 16/9 = 42/9, ÷ 2 -> std √(7/3);
    # group 1 {1, 2} (the NaN left out): mean 1.5, Σ = 0.5, ÷ 1 -> std √0.5
    s0, s1, e = (7 / 3) ** 0.5, 0.5 ** 0.5, 1e-4
    want = [(-1 / 3) / (s0 + e), (5 / 3) / (s0 + e), (-4 / 3) / (s0 + e), -0.5 / (s1 + e), 0.5 / (s1 + e), 0.0]
    torch.testing.assert_close(adv.values, torch.tensor(want))
    g0 = torch.tensor([1.0, 3.0, 0.0])
    torch.testing.assert_close(adv.values[:3], (g0 - g0.mean()) / (g0.std() + e))  # what the papers' code computes
    assert adv.keep.tolist() == [True] * 5 + [False]


def test_invalid_rewards_leave_the_group_statistics():
    r = torch.tensor([1.0, float("nan"), 3.0, 0.0, 0.0, 7.0])
    valid = torch.isfinite(r)
    adv = group_advantages(r, valid, 3)
    # group 0 uses {1, 3}: mean 2, std 1; the NaN sample is dropped
    torch.testing.assert_close(adv.values[:3], torch.tensor([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)]))
    assert adv.keep.tolist()[:3] == [True, False, True]
    assert torch.isfinite(adv.values).all()


def test_group_size_one_is_rejected():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), torch.ones(4, dtype=torch.bool), 1)


def test_clipped_surrogate_bounds():
    ratio = torch.tensor([0.5, 0.95, 1.5, 1.5, 0.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    out = clipped_surrogate(ratio, adv, clip_low=0.1, clip_high=0.2)
    # A>0: min(rA, clip(r)A) -> r=.5: min(.5, .9)=.5 ; r=.95 -> .95 ; r=1.5 -> min(1.5, 1.2)=1.2
    # A<0: r=1.5 -> min(-1.5, -1.2) = -1.5 ; r=.5 -> min(-.5, -.9) = -.9
    torch.testing.assert_close(out, -torch.tensor([0.5, 0.95, 1.2, -1.5, -0.9]))


def test_k3_kl_zero_iff_equal_and_positive():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(k3_kl(lp, lp), torch.zeros(3))
    d = torch.tensor([0.3, -0.7, 1.2])
    torch.testing.assert_close(k3_kl(lp, lp + d), torch.exp(d) - d - 1)
    assert (k3_kl(lp, lp + d) > 0).all()


def test_random_remask_counts_and_determinism():
    final = torch.zeros(3, 10, dtype=torch.long)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    m1, m2 = random_remask(final, 4, gens()), random_remask(final, 4, gens())
    assert torch.equal(m1, m2) and m1.sum(1).tolist() == [4, 4, 4]
    assert not torch.equal(m1[0], m1[1])


def _setup(toy):
    final = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1]])
    cond, uncond = toy.encode_prompts(["a", "b"]), toy.encode_prompts(["", ""])
    settings = SamplerSettings(steps=4, guidance_scale=2.0)
    return final, cond, uncond, settings


def test_maskfocus_gradient_equals_advantage_weighted_logprob_gradient(toy):
    final, cond, uncond, settings = _setup(toy)
    masked = torch.tensor([[True, True, False, True], [False, True, True, False]])
    adv = torch.tensor([0.7, -1.3])
    step = StepInfo(1, 4, 0.75)
    net = toy.transformer
    res = maskfocus_step_loss(toy, net, None, final, masked, cond, uncond, step, adv, settings, kl_beta=0.0)
    g_loss = torch.autograd.grad(res.loss_sum, list(net.parameters()))
    # by hand: ratio = 1, so loss = -sum_i A_i * mean_{masked j} log p(final_ij)
    inp = torch.where(masked, torch.full_like(final, toy.mask_id), final)
    lp = step_log_probs(toy, inp, cond, uncond, step, settings).gather(-1, final[..., None])[..., 0]
    target = -(adv * (lp * masked).sum(1) / masked.sum(1)).sum()
    g_hand = torch.autograd.grad(target, list(net.parameters()))
    for a, b in zip(g_loss, g_hand):
        torch.testing.assert_close(a, b)
    assert res.kl_sum == 0.0 and res.clip_count == 0


def test_maskfocus_kl_is_zero_against_an_identical_reference(toy):
    import copy
    final, cond, uncond, settings = _setup(toy)
    masked = torch.ones_like(final, dtype=torch.bool)
    ref = copy.deepcopy(toy.transformer)
    res = maskfocus_step_loss(toy, toy.transformer, ref, final, masked, cond, uncond, StepInfo(0, 4, 1.0),
                              torch.tensor([1.0, -1.0]), settings, kl_beta=0.5)
    assert res.kl_sum == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():  # a different reference gives a positive KL
        for p in ref.parameters():
            p.add_(0.3)
    res2 = maskfocus_step_loss(toy, toy.transformer, ref, final, masked, cond, uncond, StepInfo(0, 4, 1.0),
                               torch.tensor([1.0, -1.0]), settings, kl_beta=0.5)
    assert res2.kl_sum > 0


def test_maskfocus_ratio_clipping_with_stale_old_logprobs(toy):
    final, cond, uncond, settings = _setup(toy)
    masked = torch.ones_like(final, dtype=torch.bool)
    old = torch.full(final.shape, -50.0)  # π_old tiny -> ratio huge -> clipped for A > 0
    res = maskfocus_step_loss(toy, toy.transformer, None, final, masked, cond, uncond, StepInfo(0, 4, 1.0),
                              torch.tensor([1.0, 1.0]), settings, old_logp=old, kl_beta=0.0,
                              clip_low=0.2, clip_high=0.2)
    assert res.clip_count == res.elements == 8
    # clipped branch has no gradient
    grads = torch.autograd.grad(res.loss_sum, list(toy.transformer.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    assert float(res.loss_sum.detach()) == pytest.approx(-2 * 1.2)


def test_mask_grpo_transition_logprob_by_hand(toy):
    _, cond, uncond, settings = _setup(toy)
    m = toy.mask_id
    state = torch.tensor([[m, m, m, m], [m, 2, m, m]])
    x0 = torch.tensor([[0, 1, 2, 3], [4, 2, 0, 1]])
    nxt = torch.tensor([[0, m, m, 3], [m, 2, 0, m]])
    newly = (state == m) & (nxt != m)
    adv = torch.tensor([1.0, -2.0])
    step = StepInfo(1, 4, 0.75)
    res = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, torch.zeros(2), cond, uncond, step,
                              adv, settings)
    lp_all = step_log_probs(toy, state, cond, uncond, step, settings)
    lp = lp_all.gather(-1, x0[..., None])[..., 0]
    expected_lp = torch.stack([lp[0, 0] + lp[0, 3], lp[1, 2]])
    torch.testing.assert_close(res.logp, expected_lp.detach())
    g = torch.autograd.grad(res.loss_sum, list(toy.transformer.parameters()))
    g_hand = torch.autograd.grad(-(adv * expected_lp).sum(), list(toy.transformer.parameters()))
    for a, b in zip(g, g_hand):
        torch.testing.assert_close(a, b)


def _first_transition(toy):
    """A blank state, the x̂0 guesses and the next state: the first step of two images."""
    m = toy.mask_id
    state = torch.full((2, 4), m)
    x0 = torch.tensor([[0, 1, 2, 3], [4, 2, 0, 1]])
    nxt = torch.tensor([[0, m, m, 3], [m, 2, 0, m]])
    return state, x0, nxt, nxt != m


def test_mask_grpo_remask_term_is_a_real_function_of_the_threshold(toy):
    _, cond, uncond, settings = _setup(toy)
    m = toy.mask_id
    state, x0, nxt, newly = _first_transition(toy)
    step = StepInfo(0, 4, 1.0)
    kw = dict(cond=cond, uncond=uncond, step=step, adv=torch.ones(2), settings=settings, remask_term=True)
    lo = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, threshold=torch.full((2,), -2.2), **kw)
    hi = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, threshold=torch.full((2,), -1.5), **kw)
    base = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, threshold=torch.zeros(2),
                               **{**kw, "remask_term": False})
    # a higher cut-off leaves more probability mass below it: larger (less negative) re-mask term
    assert (hi.logp >= lo.logp).all() and (hi.logp > lo.logp).any() and (base.logp >= hi.logp).all()
    lp_all = step_log_probs(toy, state, cond, uncond, step, settings)
    stayed = nxt == m
    mass = (lp_all.exp() * (lp_all < -2.2)).sum(-1).clamp_min(1e-12).log()
    torch.testing.assert_close(lo.logp - base.logp, (mass * stayed).sum(1).detach())


def test_log_prob_below_cutoff_by_hand_with_and_without_confidence_noise():
    p = torch.tensor([0.5, 0.3, 0.2])
    logp = p.log()[None, None]  # one image, one token
    thr, tau = torch.tensor([-1.0]), 2.0
    # Σ_x p(x) · exp(−exp(−(thr − log p(x)) / τ)), term by term
    hand = sum(px * math.exp(-math.exp(-(-1.0 - math.log(px)) / tau)) for px in (0.5, 0.3, 0.2))
    assert float(log_prob_below_cutoff(logp, thr, tau)) == pytest.approx(math.log(hand), rel=1e-6)
    # without noise: the mass of the tokens whose log-prob is below the cut-off (0.3 and 0.2; log .5 > −1)
    assert float(log_prob_below_cutoff(logp, thr, 0.0)) == pytest.approx(math.log(0.5), rel=1e-6)


def test_log_prob_below_cutoff_matches_sampling_the_noisy_confidence():
    # what the sampler does: x̂0 ~ p, confidence = log p(x̂0) + τ·Gumbel; how often is it below the cut-off?
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.25, 0.1, 0.05])
    thr, tau, n = 1.5, 1.4, 400_000
    x = torch.multinomial(p, n, replacement=True, generator=gen)
    g = -torch.log(-torch.log(torch.rand(n, generator=gen).clamp(1e-12, 1 - 1e-12)))
    freq = float(((p.log()[x] + tau * g) < thr).double().mean())
    exact = float(log_prob_below_cutoff(p.log()[None, None], torch.tensor([thr]), tau).exp())
    assert exact == pytest.approx(freq, abs=3e-3)  # the MC standard error is < 1e-3
    assert 0.05 < exact < 0.95  # a cut-off above every log-prob is not "everything is below" under noise


def test_mask_grpo_remask_term_has_a_gradient_when_the_cutoff_includes_noise(toy):
    _, cond, uncond, settings = _setup(toy)
    state, x0, nxt, newly = _first_transition(toy)
    step = StepInfo(0, 4, 1.0)
    # early steps' cut-offs sit above every log-prob (τ_t·Gumbel lifts them); compared with raw log-probs the
    # term was log 1 = 0 with no gradient; with the noise in the probability it is a real function
    kw = dict(cond=cond, uncond=uncond, step=step, adv=torch.ones(2), settings=settings)
    thr = torch.full((2,), 2.0)
    plain = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, thr, **kw)
    no_noise = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, thr, remask_term=True, **kw)
    noisy = mask_grpo_step_loss(toy, toy.transformer, state, nxt, x0, newly, thr, remask_term=True,
                                gumbel_tau=2.0, **kw)
    torch.testing.assert_close(no_noise.logp, plain.logp)  # τ = 0: every token is below: log 1
    assert (noisy.logp < plain.logp - 0.1).all()
    g = torch.autograd.grad(noisy.loss_sum - plain.loss_sum, list(toy.transformer.parameters()),
                            allow_unused=True)
    assert sum(float(x.abs().sum()) for x in g if x is not None) > 1e-4


def test_reward_by_tag_averages_valid_rewards_per_tag():
    from maskfocus_cli.engine.metrics import reward_by_tag
    rewards = torch.tensor([1.0, 0.0, 0.5, 7.0, 0.25])
    valid = torch.tensor([True, True, True, False, True])
    metas = [{"tag": "counting"}, {"tag": "counting"}, {"tag": "position"}, {"tag": "position"}, None]
    assert reward_by_tag(rewards, valid, metas) == {"counting": 0.5, "position": 0.5}


def test_k3_cap_bounds_the_value_and_zeroes_the_capped_gradient():
    lp = torch.tensor([-1.0, -30.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    kl = k3_kl(lp, ref, max_value=10.0)
    d = -0.5
    torch.testing.assert_close(kl.detach(), torch.tensor([math.exp(d) - d - 1, 10.0]))
    kl.sum().backward()
    # d/dlogp of exp(ref − logp) − (ref − logp) − 1 is 1 − exp(ref − logp); 0 where capped
    torch.testing.assert_close(lp.grad, torch.tensor([1 - math.exp(d), 0.0]))
    assert torch.equal(k3_kl(lp, ref), k3_kl(lp, ref, 0.0))  # 0 = uncapped (the paper's)


def test_maskfocus_kl_cap_removes_the_kl_gradient_but_logs_the_kl(toy):
    import copy
    final, cond, uncond, settings = _setup(toy)
    masked = torch.ones_like(final, dtype=torch.bool)
    ref = copy.deepcopy(toy.transformer)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3)
    args = (toy, toy.transformer, ref, final, masked, cond, uncond, StepInfo(0, 4, 1.0), torch.tensor([1.0, -1.0]),
            settings)
    params = list(toy.transformer.parameters())
    tiny_cap = maskfocus_step_loss(*args, kl_beta=0.5, kl_max=1e-12)  # every token capped: KL term constant
    no_kl = maskfocus_step_loss(*args, kl_beta=0.0)
    uncapped = maskfocus_step_loss(*args, kl_beta=0.5)
    for a, b in zip(torch.autograd.grad(tiny_cap.loss_sum, params), torch.autograd.grad(no_kl.loss_sum, params)):
        torch.testing.assert_close(a, b)
    assert tiny_cap.kl_sum == pytest.approx(uncapped.kl_sum) and uncapped.kl_sum > 0  # logged uncapped


def test_categorical_kl_by_hand_and_its_gradient():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.25, 0.5])
    lp = p.log().requires_grad_(True)
    kl = categorical_kl(lp[None], q.log()[None])
    # 0.5 ln 2 + 0.25 ln 1 + 0.25 ln 0.5 = 0.25 ln 2
    torch.testing.assert_close(kl, torch.tensor([0.25 * math.log(2)]))
    assert categorical_kl(q.log()[None], q.log()[None]).item() == pytest.approx(0.0, abs=1e-7)
    kl.sum().backward()
    # d/dlogp_i of Σ e^{logp} (logp − logq) = p_i (logp_i − logq_i + 1)
    torch.testing.assert_close(lp.grad, p * (p.log() - q.log() + 1))


def test_maskfocus_full_kl_is_zero_at_the_reference_and_positive_away(toy):
    import copy
    final, cond, uncond, settings = _setup(toy)
    masked = torch.ones_like(final, dtype=torch.bool)
    args = (toy, toy.transformer, None, final, masked, cond, uncond, StepInfo(0, 4, 1.0), torch.tensor([1.0, -1.0]),
            settings)
    same = maskfocus_step_loss(*args[:2], copy.deepcopy(toy.transformer), *args[3:], kl_beta=0.5,
                               kl_estimator="full")
    no_kl = maskfocus_step_loss(*args, kl_beta=0.0)
    assert same.kl_sum == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(same.loss_sum, no_kl.loss_sum)
    ref = copy.deepcopy(toy.transformer)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3)
    away = maskfocus_step_loss(*args[:2], ref, *args[3:], kl_beta=0.5, kl_estimator="full")
    lp = step_log_probs(toy, final.masked_fill(masked, toy.mask_id), cond, uncond, StepInfo(0, 4, 1.0), settings)
    lr = step_log_probs(toy, final.masked_fill(masked, toy.mask_id), cond, uncond, StepInfo(0, 4, 1.0), settings,
                        net=ref)
    want = (lp.exp() * (lp - lr)).sum(-1).mean(1).sum().detach()
    assert away.kl_sum == pytest.approx(float(want), rel=1e-5) and away.kl_sum > 0
    with pytest.raises(ValueError, match="kl_estimator"):
        maskfocus_step_loss(*args[:2], ref, *args[3:], kl_beta=0.5, kl_estimator="k2")


def _shifted_reference(toy, by: float = 0.3):
    import copy
    ref = copy.deepcopy(toy.transformer)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(by)
    return ref


def test_maskfocus_kl_term_by_hand_and_it_pulls_toward_the_reference(toy):
    """With A = 0 the loss is β · mean_masked k3(π_ref‖π_θ): value, gradient and direction by hand."""
    final, cond, uncond, settings = _setup(toy)
    masked = torch.tensor([[True, False, True, True], [True, True, False, False]])
    ref = _shifted_reference(toy)
    step, beta = StepInfo(1, 4, 0.75), 0.5
    params = list(toy.transformer.parameters())
    res = maskfocus_step_loss(toy, toy.transformer, ref, final, masked, cond, uncond, step, torch.zeros(2),
                              settings, kl_beta=beta)
    inp = final.masked_fill(masked, toy.mask_id)
    lp = step_log_probs(toy, inp, cond, uncond, step, settings).gather(-1, final[..., None])[..., 0]
    with torch.no_grad():
        lr = step_log_probs(toy, inp, cond, uncond, step, settings, net=ref).gather(-1, final[..., None])[..., 0]
    d = lr - lp  # log π_ref − log π_θ: k3 = e^d − d − 1 (the argument order matters: e^{−d} + d − 1 differs)
    per_sample = ((torch.exp(d) - d - 1) * masked).sum(1) / masked.sum(1)
    torch.testing.assert_close(res.loss_sum, beta * per_sample.sum())
    assert res.kl_sum == pytest.approx(float(per_sample.sum().detach()), rel=1e-5)
    grads = torch.autograd.grad(res.loss_sum, params)
    for a, b in zip(grads, torch.autograd.grad(beta * per_sample.sum(), params)):
        torch.testing.assert_close(a, b)
    # a small gradient step on the loss moves the policy toward the reference: the KL falls
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(0.05 * g)
    after = maskfocus_step_loss(toy, toy.transformer, ref, final, masked, cond, uncond, step, torch.zeros(2),
                                settings, kl_beta=beta)
    assert after.kl_sum < res.kl_sum


class _NaNAtKnown:
    """Wraps an adapter: logits at known (unmasked) positions are NaN, as the adapter protocol allows."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def call_transformer(self, net, tokens, cond, step):
        out = self.inner.call_transformer(net, tokens, cond, step)
        return out.masked_fill((tokens != self.inner.mask_id)[..., None], float("nan"))

    def logits(self, tokens, cond, step, uncond=None, guidance_scale=0.0, net=None):
        return type(self.inner).logits(self, tokens, cond, step, uncond, guidance_scale, net)


def test_unspecified_logits_at_known_positions_do_not_reach_either_loss(toy):
    final, cond, uncond, settings = _setup(toy)
    nan_toy = _NaNAtKnown(toy)
    masked = torch.tensor([[True, False, True, True], [False, True, True, False]])
    ref = _shifted_reference(toy)
    res = maskfocus_step_loss(nan_toy, toy.transformer, ref, final, masked, cond, uncond, StepInfo(1, 4, 0.75),
                              torch.tensor([1.0, -1.0]), settings, kl_beta=0.1)
    assert torch.isfinite(res.loss_sum) and math.isfinite(res.kl_sum)
    m = toy.mask_id
    state = torch.tensor([[m, 1, m, m], [m, 2, m, m]])
    nxt = torch.tensor([[0, 1, m, 3], [m, 2, 0, m]])
    newly = (state == m) & (nxt != m)
    res = mask_grpo_step_loss(nan_toy, toy.transformer, state, nxt, final, newly, torch.full((2,), -1.5), cond,
                              uncond, StepInfo(1, 4, 0.75), torch.tensor([1.0, -1.0]), settings, remask_term=True)
    assert torch.isfinite(res.loss_sum) and torch.isfinite(res.logp).all()


def test_mask_grpo_default_clip_is_asymmetric_0_1_below_0_2_above(toy):
    _, cond, uncond, settings = _setup(toy)
    state, x0, nxt, newly = _first_transition(toy)
    args = (toy, toy.transformer, state, nxt, x0, newly, torch.zeros(2), cond, uncond, StepInfo(0, 4, 1.0))
    lp = mask_grpo_step_loss(*args, torch.ones(2), settings).logp

    def clipped(ratio: float, adv: float) -> float:
        return mask_grpo_step_loss(*args, torch.full((2,), adv), settings,
                                   old_logp=lp - math.log(ratio)).clip_count

    # ratio 1.15 is inside [0.9, 1.2], 1.25 above it, 0.85 below it (a symmetric 0.2 would keep 0.85)
    assert clipped(1.15, 1.0) == 0 and clipped(1.25, 1.0) == 2 and clipped(0.85, -1.0) == 2


def test_weight_decay_on_matrices_frees_every_1d_weight_as_mask_grpo_s_optimiser_does():
    from maskfocus_cli.engine.settings import param_groups
    net = torch.nn.ModuleDict({"proj": torch.nn.Linear(2, 2), "norm": torch.nn.LayerNorm(2),
                               "embeddings": torch.nn.Embedding(3, 2), "frozen": torch.nn.Linear(2, 2)})
    net["frozen"].requires_grad_(False)
    groups = param_groups(net.named_parameters(), 0.02, "matrices")
    by_id = {id(p): n for n, p in net.named_parameters()}
    assert [(sorted(by_id[id(p)] for p in g["params"]), g["weight_decay"]) for g in groups] == [
        (["embeddings.weight", "proj.weight"], 0.02), (["norm.bias", "norm.weight", "proj.bias"], 0.0)]
    everything = param_groups(net.named_parameters(), 0.02, "all")
    assert [(len(g["params"]), g["weight_decay"]) for g in everything] == [(5, 0.02)]  # the frozen layer is out
    # AdamW with the groups: a free weight is unchanged by a zero-gradient step, a decayed one shrinks by lr·wd
    opt = torch.optim.AdamW(groups, lr=0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(net["proj"].bias, before["proj.bias"]) and torch.equal(net["norm"].weight, before["norm.weight"])
    assert torch.allclose(net["proj"].weight, before["proj.weight"] * (1 - 0.5 * 0.02))


def test_rollout_dtype_auto_is_bf16_only_where_it_is_native_and_the_copy_can_exist(monkeypatch):
    """Emulated bf16 (an AVX2-only CPU) sampled 5x slower than fp32: auto must not pick it there."""
    from maskfocus_cli.engine import weight_copies as wc
    cpu = torch.device("cpu")
    monkeypatch.setattr(wc, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert wc.resolve_rollout_dtype("auto", cpu, lora=False) == "bf16"
    assert wc.resolve_rollout_dtype("auto", cpu, lora=True) == "fp32"  # LoRA has no copy to cast
    monkeypatch.setattr(wc, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert wc.resolve_rollout_dtype("auto", cpu, lora=False) == "bf16"
    monkeypatch.setattr(wc, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert wc.resolve_rollout_dtype("auto", cpu, lora=False) == "fp32"
    assert wc.resolve_rollout_dtype("bf16", cpu, lora=False) == "bf16"  # an explicit choice stands
    assert wc.resolve_rollout_dtype("fp32", cpu, lora=False) == "fp32"
    assert isinstance(wc.cpu_flags(), set)
