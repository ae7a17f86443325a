"""models/sampler_defaults.py + cli/common.settings_from: options not given come from the model family."""

from __future__ import annotations

import pytest

from maskfocus_cli.cli.common import settings_from
from maskfocus_cli.models.sampler_defaults import FAMILY_SAMPLERS, defaults_help, family_sampler


def test_each_family_samples_as_its_official_code_does():
    # aMUSEd: diffusers AmusedPipeline (12 steps, CFG 10, temperature (2, 0)); Meissonic: inference.py (64, 9);
    # Show-o: README 512 px (50 steps, w = 5, temperature 1.0); the built-in world: its recipes (16, 3, 2)
    got = {f: (d.steps, d.guidance_scale, d.gumbel_temperature) for f, d in FAMILY_SAMPLERS.items()}
    assert got == {"shapes": (16, 3.0, 2.0), "amused": (12, 10.0, 2.0), "meissonic": (64, 9.0, 2.0),
                   "showo": (50, 5.0, 1.0)}
    assert family_sampler("amused:/some/dir") is FAMILY_SAMPLERS["amused"]
    assert "aMUSEd 12 / 10 / 2" in defaults_help() and "Show-o 50 / 5 / 1" in defaults_help()


def test_given_options_win_and_the_rest_come_from_the_family():
    s = settings_from("showo:/m", None, None, "linear", 0.5, None)
    assert (s.steps, s.guidance_scale, s.gumbel_temperature, s.schedule, s.logit_temperature) == \
        (50, 5.0, 1.0, "linear", 0.5)
    s = settings_from("meissonic:/m", 32, 0.0, "cosine", 1.0, 0.0)
    assert (s.steps, s.guidance_scale, s.gumbel_temperature) == (32, 0.0, 0.0)
    assert settings_from("shapes", None, None, "cosine", 1.0, None).steps == 16
    with pytest.raises(ValueError, match="unknown model spec"):
        settings_from("dalle:/m", None, None, "cosine", 1.0, None)


def test_a_recipe_s_null_sampler_fields_take_the_family_s_own_and_set_ones_win():
    from maskfocus_cli.config import Recipe, build
    from maskfocus_cli.engine.settings import sampler_settings
    r = build(Recipe, {"model": {"spec": "amused:/m"}, "sampler": {"steps": 24}})
    s = sampler_settings(r.sampler, r.model.spec)
    assert (s.steps, s.guidance_scale, s.gumbel_temperature) == (24, 10.0, 2.0)
    s = sampler_settings(build(Recipe, {}).sampler, "shapes")
    assert (s.steps, s.guidance_scale, s.gumbel_temperature) == (16, 3.0, 2.0)


def test_the_recipe_help_quotes_the_family_defaults_it_resolves_to():
    from maskfocus_cli.config import SamplerConfig
    helps = {f.name: f.metadata["help"] for f in __import__("dataclasses").fields(SamplerConfig)}
    for family, name in (("amused", "aMUSEd"), ("meissonic", "Meissonic"), ("showo", "Show-o")):
        d = FAMILY_SAMPLERS[family]
        assert f"{name} {d.steps}" in helps["steps"] and f"{name} {d.guidance_scale:g}" in helps["guidance_scale"]


def test_a_partial_eval_sampler_inherits_the_rollout_sampler_before_the_family():
    from maskfocus_cli.config import Recipe, build
    from maskfocus_cli.engine.settings import sampler_settings
    r = build(Recipe, {"model": {"spec": "meissonic:/m"}, "sampler": {"steps": 64, "guidance_scale": 5.0},
                       "eval_sampler": {"steps": 32}})
    s = sampler_settings(r.eval_sampler, r.model.spec, r.sampler)
    assert (s.steps, s.guidance_scale, s.gumbel_temperature) == (32, 5.0, 2.0)  # CFG 5 as the rollouts, not 9


def test_runs_saved_with_explicit_sampler_values_resume_with_the_same_values_left_null():
    """Before the fields could be null a recipe saved 16 / 3.0 / 2.0; the same recipe re-read now has null
    there. Both sample alike, so the resume check sees no change, and a real change is still seen."""
    from maskfocus_cli.engine.run_folder import recipe_changes
    saved = {"model": {"spec": "shapes"}, "sampler": {"steps": 16, "guidance_scale": 3.0, "gumbel_temperature": 2.0}}
    now = {"model": {"spec": "shapes"}, "sampler": {"steps": None, "guidance_scale": None, "gumbel_temperature": None}}
    assert recipe_changes(saved, now) == []
    assert recipe_changes(saved, {**now, "sampler": {**now["sampler"], "guidance_scale": 4.0}}) == \
        ["sampler.guidance_scale: 3.0 → 4.0"]  # (eval grids may change on resume)
