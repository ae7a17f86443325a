"""Reward registry, dotted paths, composite weighting, NaN quarantine and summaries."""

import math
import textwrap
import warnings

import pytest
import torch

from maskfocus_cli.rewards import (
    CompositeReward, NonFiniteRewardWarning, RewardSpec, available, make_reward, parse_specs, register, summary,
)
from maskfocus_cli.rewards.simple import Brightness


def const_images(values):
    """One flat image per value, every pixel equal to it: brightness == value."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()


class Fixed:
    """Returns the given scores whatever the input (test reward)."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.calls = 0

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        return self.scores.clone()


# --- registry ---------------------------------------------------------------------------------

def test_available_lists_builtins():
    names = available()
    for n in ["shapes-geneval", "clip", "hpsv2", "pickscore", "http", "brightness"]:
        assert n in names
    assert names == sorted(names)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as e:
        make_reward("no-such-reward")
    msg = str(e.value)
    assert "no-such-reward" in msg and "hpsv2" in msg and "shapes-geneval" in msg


def test_register_factory_and_duplicate():
    @register("test-registry-fixed")
    def factory(value=1.0):
        return lambda images, prompts, metadata: torch.full((images.shape[0],), float(value))

    assert "test-registry-fixed" in available()
    r = make_reward("test-registry-fixed", value=3.0)
    assert r(const_images([0.0, 1.0]), ["a", "b"], [None, None]).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="already registered"):
        register("test-registry-fixed")(factory)
    with pytest.raises(ValueError, match="already registered"):
        register("clip")(factory)
    register("test-registry-fixed", overwrite=True)(lambda: (lambda i, p, m: torch.zeros(i.shape[0])))
    assert make_reward("test-registry-fixed")(const_images([0.5]), ["a"], [None]).tolist() == [0.0]


def test_register_rejects_colon_names():
    with pytest.raises(ValueError, match="without ':'"):
        register("a:b")


def test_builtin_brightness_with_options():
    r = make_reward("brightness", target=0.25)
    assert torch.allclose(r(const_images([0.25, 0.75, 0.0]), ["x"] * 3, [None] * 3),
                          torch.tensor([1.0, 0.5, 0.75]))
    with pytest.raises(ValueError, match="target"):
        make_reward("brightness", target=2)


def test_dotted_path_class_is_factory():
    r = make_reward("maskfocus_cli.rewards.simple:Brightness", target=1.0)
    assert isinstance(r, Brightness) and r.target == 1.0


def test_dotted_path_function_is_reward(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent("""
        import torch
        def darkness(images, prompts, metadata):
            return 1 - images.mean(dim=(1, 2, 3))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    r = make_reward("my_rewards_mod:darkness")
    assert torch.allclose(r(const_images([0.25]), ["x"], [None]), torch.tensor([0.75]))
    with pytest.raises(ValueError, match="plain callable"):
        make_reward("my_rewards_mod:darkness", scale=2)


@pytest.mark.parametrize("path, match", [
    ("maskfocus_cli.rewards.nonexistent_mod:Thing", "cannot import"),
    ("maskfocus_cli.rewards.simple:Nope", "no attribute"),
    ("maskfocus_cli.rewards.simple:", "bad reward path"),
])
def test_dotted_path_errors(path, match):
    with pytest.raises(ValueError, match=match):
        make_reward(path)


# --- specs ------------------------------------------------------------------------------------

def test_parse_specs_forms():
    specs = parse_specs(["clip", {"name": "hpsv2", "weight": 0.5, "options": {"weights": "x.pt"}},
                         RewardSpec("http", 2.0)])
    assert specs == [RewardSpec("clip"), RewardSpec("hpsv2", 0.5, {"weights": "x.pt"}), RewardSpec("http", 2.0)]
    assert parse_specs("clip") == [RewardSpec("clip", 1.0, {})]


@pytest.mark.parametrize("bad", [{"name": "clip", "wieght": 2}, {"weight": 1}, {"name": "clip", "options": [1]},
                                 3, []])
def test_parse_specs_rejects(bad):
    with pytest.raises(ValueError):
        parse_specs(bad)


# --- composite --------------------------------------------------------------------------------

def test_weighted_sum_and_components():
    a, b = Fixed([1.0, 2.0, 3.0]), Fixed([10.0, 0.0, -10.0])
    comp = CompositeReward([RewardSpec("a", 0.5), RewardSpec("b", 2.0)], rewards=[a, b])
    out = comp(const_images([0, 0, 0]), ["p"] * 3)
    # total = 0.5*a + 2*b = [0.5+20, 1+0, 1.5-20]
    assert out.total.tolist() == [20.5, 1.0, -18.5]
    assert out.components["a"].tolist() == [1.0, 2.0, 3.0]
    assert out.components["b"].tolist() == [10.0, 0.0, -10.0]
    assert out.valid.all() and out.n_invalid == 0


def test_composite_builds_from_registry():
    comp = CompositeReward([{"name": "brightness", "weight": 2.0}, "brightness"])
    out = comp(const_images([0.25, 0.5]), ["a", "b"], [None, None])
    assert comp.keys == ["brightness", "brightness#2"]
    assert out.total.tolist() == [0.75, 1.5]


def test_nan_and_inf_are_flagged_and_zeroed():
    good = Fixed([1.0, 1.0, 1.0, 1.0])
    bad = Fixed([2.0, float("nan"), float("inf"), 4.0])
    comp = CompositeReward([RewardSpec("good", 1.0), RewardSpec("bad", 1.0)], rewards=[good, bad])
    with pytest.warns(NonFiniteRewardWarning, match=r"'bad' returned 2 non-finite"):
        out = comp(const_images([0, 0, 0, 0]), ["p"] * 4)
    assert out.valid.tolist() == [True, False, False, True]
    assert torch.isfinite(out.total).all()
    assert out.total.tolist() == [3.0, 1.0, 1.0, 5.0]
    assert math.isnan(out.components["bad"][1])  # raw value kept for inspection
    assert out.nonfinite == {"good": 0, "bad": 2} and out.n_invalid == 2
    with pytest.warns(NonFiniteRewardWarning):
        comp(const_images([0, 0, 0, 0]), ["p"] * 4)
    assert comp.invalid_counts == {"good": 0, "bad": 4}


def test_zero_weight_component_is_log_only():
    comp = CompositeReward([RewardSpec("main", 1.0), RewardSpec("probe", 0.0)],
                           rewards=[Fixed([1.0, 2.0]), Fixed([float("nan"), 5.0])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = comp(const_images([0, 0]), ["p", "q"])
    assert out.valid.tolist() == [True, True]
    assert out.total.tolist() == [1.0, 2.0]
    assert out.nonfinite["probe"] == 1


def test_composite_input_checks():
    comp = CompositeReward([RewardSpec("a")], rewards=[Fixed([1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match=r"returned shape \(3,\), expected \(2,\)"):
        comp(const_images([0, 0]), ["p", "q"])
    with pytest.raises(ValueError, match="prompts"):
        comp(const_images([0, 0]), ["p"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        comp(torch.zeros(2, 4, 4), ["p", "q"])
    with pytest.raises(ValueError, match="non-finite weight"):
        CompositeReward([RewardSpec("a", float("nan"))], rewards=[Fixed([1.0])])
    with pytest.raises(ValueError, match="2 reward callables for 1 specs"):
        CompositeReward([RewardSpec("a")], rewards=[Fixed([1.0]), Fixed([1.0])])


def test_scores_do_not_carry_autograd_or_inference_flags():
    def grad_reward(images, prompts, metadata):
        return images.mean(dim=(1, 2, 3)) * torch.ones(1, requires_grad=True)

    comp = CompositeReward([RewardSpec("g")], rewards=[grad_reward])
    out = comp(const_images([0.5]), ["p"])
    assert not out.total.requires_grad and not out.total.is_inference()
    # usable as an advantage against a graph tensor
    w = torch.ones(1, requires_grad=True)
    (w * out.total).sum().backward()
    assert w.grad.tolist() == [0.5]


def test_summary_hand_computed():
    comp = CompositeReward([RewardSpec("a", 1.0), RewardSpec("b", 1.0)],
                           rewards=[Fixed([1.0, 3.0, 5.0]), Fixed([0.0, float("nan"), 2.0])])
    with pytest.warns(NonFiniteRewardWarning):
        out = comp(const_images([0, 0, 0]), ["p"] * 3)
    s = summary(out)
    # valid samples 0 and 2: totals 1 and 7 -> mean 4, population std 3
    assert s["reward/total_mean"] == pytest.approx(4.0) and s["reward/total_std"] == pytest.approx(3.0)
    # a over all three: mean 3, std sqrt(8/3)
    assert s["reward/a_mean"] == pytest.approx(3.0) and s["reward/a_std"] == pytest.approx(math.sqrt(8 / 3))
    # b over its finite entries 0 and 2
    assert s["reward/b_mean"] == pytest.approx(1.0) and s["reward/b_std"] == pytest.approx(1.0)
    assert s["reward/invalid"] == 1.0 and s["reward/b_nonfinite"] == 1.0 and s["reward/a_nonfinite"] == 0.0
    one = summary(CompositeReward([RewardSpec("a")], rewards=[Fixed([2.0])])(const_images([0]), ["p"]),
                  prefix="")
    assert one["total_std"] == 0.0 and one["a_mean"] == 2.0
