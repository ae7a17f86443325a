"""Critical-step selection (DESIGN §3.2) against hand-computed values on a 2x2-token toy."""

import math

import pytest
import torch

from maskfocus_cli.engine.critical import (AllSelector, ClipEmbedder, CodebookEmbedder, FirstSelector,
                                           InfoGainSelector, LastSelector, PixelEmbedder, RandomSelector,
                                           UniformSelector, information_gain, make_embedder, make_selector,
                                           select_steps, shared_gain, step_similarity, trajectory_gain)
from maskfocus_cli.engine.sampling import Trajectory

# Fixed codebook (K = 6, C = 3): cosines between grids are sums of small integers.
CODEBOOK = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [2, 0, 0], [0, 0, 2]])


@pytest.fixture
def fixed(toy):
    toy.codebook = CODEBOOK.clone()
    return toy


def hand_trajectory() -> Trajectory:
    """T = 3 steps, B = 2 images, N = 4 tokens; only x0 and final matter for the gain."""
    x0 = torch.tensor([
        [[1, 1, 1, 1], [0, 0, 0, 0]],  # step 0
        [[0, 1, 1, 0], [2, 2, 2, 2]],  # step 1
        [[0, 1, 2, 0], [3, 3, 3, 3]],  # step 2 = final grid
    ])
    final = x0[-1].clone()
    T, B, N = x0.shape
    z = torch.zeros(T, B, N)
    return Trajectory(states=torch.full((T, B, N), 6), x0=x0, newly=z.bool(), entropy=z, logprob=z,
                      threshold=torch.zeros(T, B), explore=torch.zeros(T, B, dtype=torch.bool), final=final,
                      counts=[4, 2, 1, 0])


# Image 0: final [0,1,2,0], |e_final|^2 = 4.
#   step 0 [1,1,1,1]: dot = 0+1+0+0 = 1, |e|^2 = 4 -> 1/4
#   step 1 [0,1,1,0]: dot = 1+1+0+1 = 3            -> 3/4
#   step 2 = final                                  -> 1
# Image 1: final [3,3,3,3] (each [1,1,0]), |e_final|^2 = 8.
#   step 0 [0,0,0,0]: dot = 4, |e|^2 = 4 -> 4/sqrt(32) = 1/sqrt(2)
#   step 1 [2,2,2,2]: dot = 0            -> 0
#   step 2 = final                        -> 1
HAND_SIM = torch.tensor([[0.25, 0.75, 1.0], [1 / math.sqrt(2), 0.0, 1.0]])
# g_t = |s_{t+1} - s_t| with s_3 = 1
HAND_GAIN = torch.tensor([[0.5, 0.25, 0.0], [1 / math.sqrt(2), 1.0, 0.0]])


def test_codebook_similarity_by_hand(fixed):
    traj = hand_trajectory()
    s = step_similarity(traj.x0, traj.final, CodebookEmbedder(fixed))
    assert s.shape == (2, 3)
    torch.testing.assert_close(s, HAND_SIM, atol=1e-6, rtol=0)


def test_trajectory_gain_by_hand(fixed):
    s, g = trajectory_gain(hand_trajectory(), CodebookEmbedder(fixed))
    torch.testing.assert_close(s, HAND_SIM, atol=1e-6, rtol=0)
    torch.testing.assert_close(g, HAND_GAIN, atol=1e-6, rtol=0)


def test_information_gain_formula_with_implicit_final_one():
    s = torch.tensor([[0.2, 0.5, 0.4], [0.9, 0.3, 1.0]])
    # [|.5-.2|, |.4-.5|, |1-.4|], [|.3-.9|, |1-.3|, |1-1|]
    torch.testing.assert_close(information_gain(s), torch.tensor([[0.3, 0.1, 0.6], [0.6, 0.7, 0.0]]))


def test_codebook_embedder_is_flattened_code_vectors(fixed):
    e = CodebookEmbedder(fixed)(torch.tensor([[0, 1, 2, 3]]))
    # (1, C=3, 2, 2) flattened channel-major: channel 0 of tokens 0..3, then channel 1, then channel 2
    assert e.tolist() == [[1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0]]


def test_pixel_similarity_by_hand(toy):
    # sigmoid(+ln3) = 0.75, sigmoid(-ln3) = 0.25: decoded pixels are 0.75 or 0.25 in all channels,
    # so after the fixed shift by -0.5 every pixel is +-0.25 and cosines count agreeing quadrants.
    l3 = math.log(3.0)
    toy.codebook = torch.tensor([[l3, l3, l3], [-l3, -l3, -l3]] + [[0.0, 0.0, 0.0]] * 4)
    embed = PixelEmbedder(toy)
    final = torch.tensor([[0, 0, 1, 1]] * 3)
    x0 = torch.tensor([[[0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0]]])  # same, half agree, all flipped
    s = step_similarity(x0, final, embed)
    torch.testing.assert_close(s, torch.tensor([[1.0], [0.0], [-1.0]]), atol=1e-6, rtol=0)
    e = embed(torch.tensor([[0, 0, 0, 1]]))
    assert e.shape == (1, 3 * 8 * 8)
    # three bright quadrants, one dark: 0.75 * 0.25 + 0.25 * -0.25 = 0.125
    assert float(e.mean()) == pytest.approx(0.125)


# --------------------------------------------------------------------------- clip embedder
def tiny_clip():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=8,
                          vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
                          text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


def test_clip_embedder_with_tiny_model_matches_manual_preprocessing(toy):
    clip = tiny_clip()
    emb = ClipEmbedder(toy, clip_model=clip, batch_size=2)
    assert emb.size == 16
    tokens = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1], [2, 2, 2, 2]])
    e = emb(tokens)
    assert e.shape == (3, 8)
    img = torch.nn.functional.interpolate(toy.decode(tokens), size=(16, 16), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = clip.encode_image((img - mean) / std)
    torch.testing.assert_close(e, ref, atol=1e-5, rtol=1e-5)
    # chunking (batch_size=2 over 3 grids) gives the same vectors as one big batch
    torch.testing.assert_close(ClipEmbedder(toy, clip_model=clip, batch_size=64)(tokens), e, atol=1e-5, rtol=1e-5)


def test_clip_similarity_of_final_grid_is_one(toy):
    emb = ClipEmbedder(toy, clip_model=tiny_clip())
    traj = hand_trajectory()
    s, g = trajectory_gain(traj, emb)
    torch.testing.assert_close(s[:, -1], torch.ones(2), atol=1e-5, rtol=0)
    assert g[:, -1].abs().max() < 1e-5


def test_clip_without_weights_says_how_to_provide_them(toy):
    with pytest.raises(ValueError, match="--clip-weights PATH"):
        make_embedder("clip", toy)
    with pytest.raises(ValueError, match="file not found"):
        make_embedder("clip", toy, clip_weights="/nonexistent/open_clip_model.bin")


def test_unknown_embedder_and_selector_names():
    with pytest.raises(ValueError, match="codebook, pixels or clip"):
        make_embedder("vae", None)
    with pytest.raises(ValueError, match="info-gain"):
        make_selector("best")


# --------------------------------------------------------------------------- selectors
G = torch.Generator().manual_seed(0)


def test_top_k_picks_largest_gains_sorted_by_step():
    gain = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.05, 0.4])
    # steps T−2, T−1 (4, 5) are no candidates (official): top-3 of steps 0–3
    assert InfoGainSelector().select(6, 3, gain, G).tolist() == [1, 2, 3]
    assert InfoGainSelector().select(6, 1, gain, G).tolist() == [1]
    # ... unless k leaves no other choice: then every step competes
    assert InfoGainSelector().select(6, 5, gain, G).tolist() == [0, 1, 2, 3, 5]


def test_ties_go_to_the_earlier_step():
    gain = torch.tensor([0.2, 0.5, 0.5, 0.1, 0.5])
    assert InfoGainSelector().select(5, 2, gain, G).tolist() == [1, 2]
    assert InfoGainSelector().select(5, 1, gain, G).tolist() == [1]
    assert InfoGainSelector().select(5, 4, torch.zeros(5), G).tolist() == [0, 1, 2, 3]


def test_fixed_selectors_length_and_order():
    assert FirstSelector().select(10, 3, None, G).tolist() == [0, 1, 2]
    assert LastSelector().select(10, 3, None, G).tolist() == [7, 8, 9]
    # centres of 3 bins of [0, 10): floor(10/6), floor(5), floor(25/3) = 1, 5, 8
    assert UniformSelector().select(10, 3, None, G).tolist() == [1, 5, 8]
    assert UniformSelector().select(4, 4, None, G).tolist() == [0, 1, 2, 3]
    assert AllSelector().select(5, 2, None, G).tolist() == [0, 1, 2, 3, 4]


def test_random_selector_sorted_distinct_and_seeded():
    a = RandomSelector().select(20, 5, None, torch.Generator().manual_seed(3))
    b = RandomSelector().select(20, 5, None, torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()
    assert len(a) == 5 and len(set(a.tolist())) == 5
    assert a.tolist() == sorted(a.tolist()) and 0 <= int(a.min()) and int(a.max()) < 20
    assert RandomSelector().select(6, 6, None, G).tolist() == list(range(6))


def test_random_steps_are_drawn_from_the_info_gain_candidates():
    """Like info-gain, the random ablation never spends a step on T−2 / T−1 (16 steps: 0-13) while k
    leaves a choice, but draws every candidate; with k > T−2 the last two are allowed."""
    drawn = set()
    for seed in range(300):
        drawn |= set(RandomSelector().select(16, 3, None, torch.Generator().manual_seed(seed)).tolist())
    assert drawn == set(range(14))
    assert sorted({int(t) for s in range(50) for t in RandomSelector().select(4, 3, None,
                   torch.Generator().manual_seed(s))}) == [0, 1, 2, 3]


@pytest.mark.parametrize("cls", [InfoGainSelector, RandomSelector, UniformSelector, FirstSelector, LastSelector])
def test_k_out_of_range_is_a_user_error(cls):
    gain = torch.rand(4)
    with pytest.raises(ValueError, match="cannot pick 5 critical steps out of 4"):
        cls().select(4, 5, gain, G)
    with pytest.raises(ValueError, match="at least 1"):
        cls().select(4, 0, gain, G)


def test_batch_vs_sample_reduction_by_hand():
    sel = InfoGainSelector()
    gain = torch.cat([HAND_GAIN, torch.zeros(2, 2)], 1)  # T = 5: steps 0-2 are candidates
    # batch mean gain = [(0.5 + 0.7071)/2, (0.25 + 1)/2, 0, 0, 0] = [0.6036, 0.625, 0, 0, 0] -> step 1
    assert select_steps(sel, 5, 1, gain, "batch", G).tolist() == [1]
    # per image: image 0 peaks at step 0, image 1 at step 1
    per = select_steps(sel, 5, 1, gain, "sample", G)
    assert per.shape == (2, 1) and per.tolist() == [[0], [1]]
    assert select_steps(sel, 5, 2, gain, "sample", G).tolist() == [[0, 1], [0, 1]]


def test_reduction_errors():
    with pytest.raises(ValueError, match="batch or sample"):
        select_steps(InfoGainSelector(), 3, 1, HAND_GAIN, "prompt", G)
    with pytest.raises(ValueError, match="per-sample gains"):
        select_steps(InfoGainSelector(), 3, 1, None, "sample", G)


def test_gain_free_selectors_ignore_gain_under_batch_reduction():
    assert select_steps(LastSelector(), 3, 2, None, "batch", G).tolist() == [1, 2]


def test_sample_reduction_with_gain_free_selector():
    out = select_steps(FirstSelector(), 3, 2, None, "sample", G, batch_size=3)
    assert out.shape == (3, 2) and out[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="batch size"):
        select_steps(FirstSelector(), 3, 2, None, "sample", G)


def test_pixel_similarity_of_a_uniform_final_image_is_one(toy):
    final = torch.tensor([[2, 2, 2, 2]])
    s, g = trajectory_gain(Trajectory(states=final[None], x0=final[None], newly=final[None].bool(),
                                      entropy=final[None].float(), logprob=final[None].float(),
                                      threshold=torch.zeros(1, 1), explore=torch.zeros(1, 1, dtype=torch.bool),
                                      final=final, counts=[4, 0]), PixelEmbedder(toy))
    assert float(s[0, -1]) == pytest.approx(1.0) and float(g[0, -1]) == pytest.approx(0.0, abs=1e-6)


def test_shared_gain_is_the_gain_of_the_mean_similarity():
    # image 0 dips at step 1 and recovers; image 1 rises steadily. Mean s = [0.5, 0.6, 0.9, 0.95, 0.97]
    sim = torch.tensor([[0.6, 0.4, 0.9, 0.95, 0.97], [0.4, 0.8, 0.9, 0.95, 0.97]])
    torch.testing.assert_close(shared_gain(sim), torch.tensor([0.1, 0.3, 0.05, 0.02, 0.03]))
    # the mean of per-image gains ([0.2, 0.5, ...] and [0.4, 0.1, ...] -> [0.3, 0.3, ...]) would pick step 0
    per_image = information_gain(sim).mean(0)
    assert select_steps(InfoGainSelector(), 5, 1, per_image[None], "batch", G).tolist() == [0]
    assert select_steps(InfoGainSelector(), 5, 1, shared_gain(sim)[None], "batch", G).tolist() == [1]


def test_identical_grids_have_similarity_exactly_one_in_many_dimensions():
    """float32 cosine over ~12k dimensions gave 1.000009 for identical grids, and a gain where there is none."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(512, 192, generator=gen) * 3.0 + 1.0

    def embed(tokens):  # (B, N) → (B, N·192) codebook vectors, flattened
        return table[tokens].flatten(1)

    final = torch.randint(0, 512, (3, 64), generator=gen)
    x0 = torch.stack([torch.randint(0, 512, (3, 64), generator=gen), final])
    s = step_similarity(x0, final, embed)
    assert torch.equal(s[:, 1], torch.ones(3)) and (s <= 1.0).all()
    assert torch.equal(information_gain(s)[:, 1], torch.zeros(3))
