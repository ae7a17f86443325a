"""The step maths of DESIGN §3.1 against hand-computed values."""

import copy
import math

import pytest
import torch

from maskfocus_cli.engine.sampling import (SamplerSettings, denoise_step, draw_noise, make_generators, mask_counts,
                                           mask_ratio, sample, sample_categorical)
from maskfocus_cli.models.base import apply_guidance, guidance_active


def test_cosine_mask_counts_by_hand():
    # floor(64 cos(pi/8)) = 59, floor(64 cos(pi/4)) = 45, floor(64 cos(3pi/8)) = 24, last step 0
    assert mask_counts(64, 4, "cosine") == [64, 59, 45, 24, 0]


def test_linear_mask_counts_by_hand():
    assert mask_counts(64, 4, "linear") == [64, 48, 32, 16, 0]


def test_mask_counts_strictly_decreasing_and_more_steps_than_tokens_refused():
    # N=8, T=8: floor(8 cos(pi/16))=7, then floor(8 cos(pi/8))=7 -> capped at 6, 6 -> 5, ... 1 (floor gives 1) -> 0
    assert mask_counts(8, 8, "cosine") == [8, 7, 6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="at most 4 steps"):  # some step would unmask nothing
        mask_counts(4, 8, "cosine")


def test_single_step_unmasks_everything():
    assert mask_counts(16, 1) == [16, 0]


def test_mask_ratio_values():
    assert mask_ratio(0, 2, "cosine") == pytest.approx(math.cos(math.pi / 4))
    assert mask_ratio(1, 2, "cosine") == pytest.approx(0.0, abs=1e-6)  # float32, like diffusers
    assert mask_ratio(0, 4, "linear") == 0.75


def test_guidance_forms_by_hand():
    c, u = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # meissonic: u + w (c - u) = [1 + 3*1, 1 + 3*(-1)]
    assert torch.equal(apply_guidance(c, u, 3.0, "meissonic"), torch.tensor([4.0, -2.0]))
    # show-o: (1 + w) c - w u = [4*2 - 3, 0 - 3]
    assert torch.equal(apply_guidance(c, u, 3.0, "showo"), torch.tensor([5.0, -3.0]))
    assert not guidance_active(1.0, "meissonic") and guidance_active(3.0, "meissonic")
    assert not guidance_active(0.0, "showo")


def test_inverse_cdf_sampling_by_hand():
    log_p = torch.log(torch.tensor([[[0.2, 0.5, 0.3]] * 3]))
    u = torch.tensor([[0.1, 0.6, 0.95]])
    assert sample_categorical(log_p, u).tolist() == [[0, 1, 2]]


def test_denoise_step_greedy_remask_by_hand():
    # 4 masked positions, K = 3; without Gumbel noise the least confident tokens get re-masked.
    mask_id = 3
    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
    logits = probs.log()
    tokens = torch.full((1, 4), mask_id)
    noise = torch.zeros(2, 1, 4)  # u = 0 picks the first token with nonzero mass
    noise[0] = torch.tensor([[0.5, 0.5, 0.5, 0.5]])  # -> tokens 0, 1 (cdf .4 .7), 1, 2 (cdf .2 .4 1)
    out = denoise_step(logits, tokens, mask_id, n_mask=2, gumbel_tau=0.0, noise=noise)
    assert out.x0.tolist() == [[0, 1, 1, 2]]
    # confidences: log .9, log .3, log .8, log .6 -> re-mask positions 1 (0.3) and 3 (0.6)
    assert out.tokens.tolist() == [[0, mask_id, 1, mask_id]]
    assert out.newly.tolist() == [[True, False, True, False]]
    assert out.logprob[0].tolist() == pytest.approx([math.log(.9), math.log(.3), math.log(.8), math.log(.6)],
                                                    rel=1e-5)
    expected_h = [-(p * p.log()).sum().item() for p in probs[0]]
    assert out.entropy[0].tolist() == pytest.approx(expected_h, rel=1e-5)
    assert out.threshold.item() == pytest.approx(math.log(0.8), rel=1e-5)


def test_known_tokens_are_never_remasked():
    torch.manual_seed(0)
    mask_id, n, k = 7, 32, 7
    for trial in range(50):
        tokens = torch.randint(0, k, (3, n))
        masked = torch.rand(3, n) < 0.6
        masked[:, :2] = True
        tokens[masked] = mask_id
        n_masked = int(masked.sum(1).min())
        n_mask = max(1, n_masked // 2)
        logits = torch.randn(3, n, k) * 3
        out = denoise_step(logits, tokens, mask_id, n_mask, gumbel_tau=5.0, noise=torch.rand(2, 3, n))
        known = ~masked
        assert torch.equal(out.tokens[known], tokens[known])
        assert torch.equal(out.x0[known], tokens[known])
        assert ((out.tokens == mask_id).sum(1) == n_mask).all()
        assert (out.entropy[known] == 0).all()


def test_trajectory_bookkeeping(toy):
    settings = SamplerSettings(steps=3, guidance_scale=2.0)
    cond, uncond = toy.encode_prompts(["a", "b"]), toy.encode_prompts(["", ""])
    res = sample(toy, cond, uncond, [0, 1], settings, record=True)
    tr = res.trajectory
    assert tr.states.shape == (3, 2, 4)
    # every position is unmasked exactly once, the final grid has no mask
    assert torch.equal(tr.newly.sum(0), torch.ones(2, 4, dtype=torch.long))
    assert (tr.final != toy.mask_id).all()
    assert torch.equal(tr.final, res.tokens)
    assert (tr.states[0] == toy.mask_id).all()
    for t in range(3):
        assert ((tr.states[t] == toy.mask_id).sum(1) == tr.counts[t]).all()
        # x̂0 agrees with the state wherever the state is known
        known = tr.states[t] != toy.mask_id
        assert torch.equal(tr.x0[t][known], tr.states[t][known])
    # tokens unmasked at step t are the ones x̂0 proposed then
    for t in range(3):
        assert torch.equal(tr.final[tr.newly[t]], tr.x0[t][tr.newly[t]])


def test_plain_sampling_returns_no_trajectory(toy):
    res = sample(toy, toy.encode_prompts(["a"]), None, [0], SamplerSettings(steps=2))
    assert res.trajectory is None


def test_seeded_images_do_not_depend_on_the_batch(toy):
    settings = SamplerSettings(steps=4, guidance_scale=3.0)
    prompts, seeds = ["a", "b", "c", "a"], [3, 4, 5, 9]
    batched = sample(toy, toy.encode_prompts(prompts), toy.encode_prompts([""] * 4), seeds, settings).tokens
    for i in range(4):
        alone = sample(toy, toy.encode_prompts([prompts[i]]), toy.encode_prompts([""]), [seeds[i]], settings)
        assert torch.equal(alone.tokens[0], batched[i])


def test_noise_is_per_image():
    a = draw_noise(make_generators([1, 2]), 5)
    b = draw_noise(make_generators([2]), 5)
    assert a.shape == (2, 2, 5) and torch.equal(a[:, 1], b[:, 0])


def test_settings_reject_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        SamplerSettings(steps=0)


def forward_batch_sizes(toy) -> list[int]:
    """Make ``toy``'s transformer record the batch size of every forward; returns the record."""
    calls: list[int] = []
    orig = toy.transformer.forward

    def counting(tokens, ids):
        calls.append(tokens.shape[0])
        return orig(tokens, ids)

    toy.transformer.forward = counting
    return calls


def test_cfg_is_one_batched_forward(toy):
    calls = forward_batch_sizes(toy)
    sample(toy, toy.encode_prompts(["a", "b"]), toy.encode_prompts(["", ""]), [0, 1],
           SamplerSettings(steps=3, guidance_scale=3.0))
    assert calls == [4, 4, 4]


def test_unwrap_module_sees_through_ddp_and_peft_style_wrappers():
    from torch import nn

    from maskfocus_cli.models.base import unwrap_module
    core = nn.Linear(2, 2)

    class DDPLike(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    class PeftLike(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.inner = m

        def get_base_model(self):
            return self.inner

    assert unwrap_module(core) is core
    assert unwrap_module(DDPLike(PeftLike(core))) is core
    assert unwrap_module(PeftLike(DDPLike(core))) is core


def test_sampling_runs_prompt_only_work_once(toy):
    """``prepare_cond`` runs once per run for cond and uncond (not per step), and every
    forward sees what it added."""
    from maskfocus_cli.engine.sampling import sample
    prepared, seen = [], []
    call = toy.call_transformer

    def prepare(cond, net=None):
        prepared.append(net)
        return {**cond, "extra": cond["ids"] * 0}

    def forward(net, tokens, cond, step):
        seen.append("extra" in cond)
        return call(net, tokens, {"ids": cond["ids"]}, step)

    toy.prepare_cond, toy.call_transformer = prepare, forward
    cond, uncond = toy.encode_prompts(["a", "b"]), toy.encode_prompts(["", ""])
    other = copy.deepcopy(toy.transformer)
    sample(toy, cond, uncond, [1, 2], SamplerSettings(steps=4, guidance_scale=3.0), net=other)
    assert prepared == [other, other] and len(seen) == 4 and all(seen)
    assert set(cond) == set(uncond) == {"ids"}  # the caller's dicts are left alone
    prepared.clear()
    sample(toy, cond, uncond, [1, 2], SamplerSettings(steps=4, guidance_scale=1.0))
    assert prepared == [None]  # no guidance: the unconditional branch is never run, nor prepared


def test_distinct_rows_by_hand():
    from maskfocus_cli.engine.sampling import distinct_rows
    cond = {"ids": torch.tensor([[1, 2], [3, 4], [1, 2], [0, 0]]), "w": torch.tensor([[.5], [.5], [.5], [.5]])}
    first, inverse = distinct_rows([cond, {"ids": torch.zeros(4, 1, dtype=torch.long)}])
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2]
    # a row differing in the second cond only (e.g. another negative prompt) is distinct
    first, inverse = distinct_rows([cond, {"ids": torch.tensor([[0], [0], [7], [0]])}])
    assert first.tolist() == [0, 1, 2, 3] and inverse.tolist() == [0, 1, 2, 3]


def test_first_step_scores_each_distinct_prompt_once(toy):
    """Step 0 reads all-[MASK] grids, so a group of G images of one prompt is one row there."""
    calls = forward_batch_sizes(toy)
    prompts = ["a", "b", "a", "a"]
    res = sample(toy, toy.encode_prompts(prompts), toy.encode_prompts([""] * 4), [0, 1, 2, 3],
                 SamplerSettings(steps=3, guidance_scale=3.0), record=True)
    assert calls == [4, 8, 8]  # (2 distinct prompts) × (cond, uncond), then every row
    assert res.trajectory.x0[0, 0].tolist() != res.trajectory.x0[0, 2].tolist()  # own noise per image
