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


def test_meissonic_s_guidance_runs_against_its_scripts_negative_prompt_and_others_against_none():
    from maskfocus_cli.models.sampler_defaults import MEISSONIC_NEGATIVE_PROMPT
    assert MEISSONIC_NEGATIVE_PROMPT.startswith("worst quality, normal quality, low quality")
    assert settings_from("meissonic:/m", None, None, "cosine", 1.0, None).negative_prompt == MEISSONIC_NEGATIVE_PROMPT
    assert settings_from("meissonic:/m", None, None, "cosine", 1.0, None, "").negative_prompt == ""  # turned off
    assert settings_from("amused:/m", None, None, "cosine", 1.0, None).negative_prompt == ""
    assert settings_from("shapes", None, None, "cosine", 1.0, None, "a red circle").negative_prompt == "a red circle"
    from maskfocus_cli.config import Recipe, build
    from maskfocus_cli.engine.settings import sampler_settings
    r = build(Recipe, {"model": {"spec": "meissonic:/m"}})
    assert sampler_settings(r.sampler, r.model.spec).negative_prompt == MEISSONIC_NEGATIVE_PROMPT


def test_runs_recorded_before_negative_prompts_still_resume_and_compare(tmp_path):
    import json

    from maskfocus_cli.bench.report import sample_differences
    from maskfocus_cli.bench.runner import check_same_run
    old_sampler = {"steps": 4, "guidance_scale": 3.0, "schedule": "cosine", "logit_temperature": 1.0,
                   "gumbel_temperature": 2.0}
    (tmp_path / "run.json").write_text(json.dumps({"bench": "shapes", "generator": {"sampler": old_sampler}}))
    check_same_run(tmp_path, {"bench": "shapes", "generator": {"sampler": {**old_sampler, "negative_prompt": ""}}})
    with pytest.raises(ValueError, match="different run"):
        check_same_run(tmp_path, {"bench": "shapes",
                                  "generator": {"sampler": {**old_sampler, "negative_prompt": "a red circle"}}})
    assert sample_differences({"sampler": old_sampler}, {"sampler": {**old_sampler, "negative_prompt": ""}}) == []


def test_a_meissonic_run_saved_before_negative_prompts_resumes_only_with_none():
    """Its recipe has no negative_prompt key and it sampled against "": resuming with the new default (the
    scripts' list) would change what it computes, so that is the change reported; "" continues it."""
    from maskfocus_cli.engine.run_folder import recipe_changes
    saved = {"model": {"spec": "meissonic:/m"}, "sampler": {"steps": 64, "guidance_scale": 5.0,
                                                            "gumbel_temperature": 2.0}}
    now = {"model": {"spec": "meissonic:/m"}, "sampler": {**saved["sampler"], "negative_prompt": None}}
    assert [c.split(":")[0] for c in recipe_changes(saved, now)] == ["sampler.negative_prompt"]
    assert recipe_changes(saved, {**now, "sampler": {**now["sampler"], "negative_prompt": ""}}) == []
