"""Entropy-based dynamic routing (DESIGN §3.3) against hand-computed values."""

import math

import pytest
import torch

from maskfocus_cli.engine.routing import EntropyRouter, batch_median, make_router
from maskfocus_cli.engine.sampling import SamplerSettings, denoise_step, make_generators, sample


def per_sample(totals: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy grids (B, 2) whose masked totals are ``totals`` (split evenly over 2 masked tokens)."""
    t = torch.tensor(totals)
    return torch.stack([t / 2, t / 2], 1), torch.ones(len(totals), 2, dtype=torch.bool)


def test_median_odd_even_and_single():
    assert float(batch_median(torch.tensor([3.0, 1.0, 2.0]))) == 2.0
    assert float(batch_median(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == 2.5
    assert float(batch_median(torch.tensor([5.0]))) == 5.0


def test_even_batch_exactly_half_explore():
    ent, masked = per_sample([4.0, 1.0, 3.0, 2.0])  # median 2.5
    assert EntropyRouter().route(ent, masked).explore.tolist() == [False, True, False, True]


def test_gathered_median_is_the_whole_rollout_batch():
    """On one of two ranks: the median is over both ranks' samples, as in one process."""
    ent, masked = per_sample([4.0, 1.0])  # this rank; alone its median is 2.5
    other = torch.tensor([0.5, 0.2])  # the other rank's totals: whole-batch median (0.5 + 1) / 2 = 0.75
    seen = []

    def gather(totals):
        seen.append(totals.clone())
        return torch.cat([totals, other])

    assert EntropyRouter(gather=gather).route(ent, masked).explore.tolist() == [False, False]
    assert EntropyRouter().route(ent, masked).explore.tolist() == [False, True]
    torch.testing.assert_close(seen[0], torch.tensor([4.0, 1.0]))


def test_odd_batch_median_sample_stays_standard():
    ent, masked = per_sample([3.0, 1.0, 2.0, 7.0, 0.5])  # median 2.0: only 1.0 and 0.5 are below
    assert EntropyRouter().route(ent, masked).explore.tolist() == [False, True, False, False, True]


def test_batch_of_one_never_explores():
    ent, masked = per_sample([0.01])
    d = EntropyRouter().route(ent, masked)
    assert d.explore.tolist() == [False]
    assert torch.equal(d.temperature, torch.ones(1, 2))


def test_ties_at_the_median_take_the_standard_step():
    ent, masked = per_sample([1.0, 1.0, 2.0, 2.0])  # median 1.5
    assert EntropyRouter().route(ent, masked).explore.tolist() == [True, True, False, False]
    ent, masked = per_sample([2.0, 2.0, 2.0, 2.0])
    assert not EntropyRouter().route(ent, masked).explore.any()


def test_only_masked_positions_count_towards_the_total():
    ent = torch.tensor([[1.0, 1.0, 5.0], [1.5, 1.0, 0.0]])
    masked = torch.tensor([[True, True, False], [True, True, False]])
    # totals 2.0 and 2.5 (the 5.0 sits on a known token): sample 0 is the low-entropy one
    assert EntropyRouter().route(ent, masked).explore.tolist() == [True, False]


def test_exploratory_temperature_formula_by_hand():
    r = EntropyRouter()
    h = torch.tensor([0.0, 3.0, 3 * math.log(2.0), 30.0])
    # 2.5 exp(-H/3) + 0.7: 3.2, 2.5/e + 0.7, 2.5/2 + 0.7, ~0.7
    expected = torch.tensor([3.2, 2.5 / math.e + 0.7, 1.95, 2.5 * math.exp(-10) + 0.7])
    torch.testing.assert_close(r.temperature(h), expected)
    # custom law: 1.0 exp(-H/2) + 0.5 at H = 2 ln 4 -> 1/4 + 0.5
    torch.testing.assert_close(EntropyRouter(1.0, 2.0, 0.5).temperature(torch.tensor([2 * math.log(4.0)])),
                               torch.tensor([0.75]))


def test_route_temperature_only_on_exploring_rows_and_masked_tokens():
    ent = torch.tensor([[3.0, 0.0, 4.0], [0.0, 4.0, 9.0]])
    masked = torch.tensor([[True, True, False], [True, True, False]])
    d = EntropyRouter().route(ent, masked)  # totals 3 and 4: row 0 explores
    # row 0 masked tokens: H = 3 -> 2.5/e + 0.7, H = 0 -> 3.2; its known token and all of row 1 stay at 1
    assert d.explore.tolist() == [True, False]
    expected = torch.tensor([[2.5 / math.e + 0.7, 3.2, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(d.temperature, expected)


def test_make_router():
    assert make_router(False) is None
    r = make_router(True, 1.0, 2.0, 0.5)
    assert isinstance(r, EntropyRouter) and (r.scale, r.decay, r.floor) == (1.0, 2.0, 0.5)


def test_denoise_step_uses_router_temperature_on_the_same_logits():
    # row 0 nearly uniform (high entropy, standard), row 1 peaked (low entropy, explores)
    logits = torch.tensor([[[0.1, 0.0, 0.0], [0.0, 0.2, 0.0]],
                           [[5.0, 0.0, 0.0], [0.0, 0.0, 6.0]]])
    tokens = torch.full((2, 2), 3)
    noise = torch.full((2, 2, 2), 0.5)
    out = denoise_step(logits, tokens, mask_id=3, n_mask=1, gumbel_tau=0.0, noise=noise, logit_temperature=1.0,
                       router=EntropyRouter())
    assert out.explore.tolist() == [False, True]
    log_p = torch.log_softmax(logits, -1)
    ent = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(out.entropy, ent)  # entropy recorded is the standard step's
    temp = EntropyRouter().temperature(ent[1])
    torch.testing.assert_close(out.temperature[1], temp)
    torch.testing.assert_close(out.temperature[0], torch.ones(2))
    routed = torch.log_softmax(logits[1] / temp[:, None], -1)
    torch.testing.assert_close(out.logprob[1], routed.gather(-1, out.x0[1, :, None]).squeeze(-1))
    torch.testing.assert_close(out.logprob[0], log_p[0].gather(-1, out.x0[0, :, None]).squeeze(-1))
    assert (temp > 1).all()  # confident tokens are flattened


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_sampled_trajectory_routes_like_the_router_says(toy, batch):
    cond = toy.encode_prompts(["a", "b", "c", "d"][:batch])
    uncond = toy.encode_prompts([""] * batch)
    router = EntropyRouter()
    traj = sample(toy, cond, uncond, list(range(batch)), SamplerSettings(steps=3, guidance_scale=2.0),
                  record=True, router=router).trajectory
    for t in range(3):
        expect = router.route(traj.entropy[t], traj.states[t] == toy.mask_id).explore
        assert traj.explore[t].tolist() == expect.tolist()
        assert int(traj.explore[t].sum()) == batch // 2  # distinct entropies: floor(B/2) explore
    assert traj.temperature is not None and traj.temperature.shape == (3, batch, 4)
