"""Each model family's own sampler settings: what its official code samples with by default.

``sample``, ``profile-steps`` and ``evaluate`` use them wherever --steps / --cfg / --gumbel are not given, so
a real model is sampled the way it was published (aMUSEd at the built-in world's 16 steps and CFG 3 would
draw worse images and score below its published numbers). Known from the spec alone (``family:PATH``), so
options are resolved and checked before any weights load. Every family here samples tokens at temperature 1
on a cosine mask schedule, the options' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskfocus_cli.models.loading import parse_spec


#: the negative prompt of Meissonic's official inference scripts (viiika/Meissonic inference.py), which MaskFocus's
#: rollouts and evaluations use too; its pipeline's own default is "" (plain unconditional)
MEISSONIC_NEGATIVE_PROMPT = (
    "worst quality, normal quality, low quality, low res, blurry, distortion, text, watermark, logo, banner, "
    "extra digits, cropped, jpeg artifacts, signature, username, error, sketch, duplicate, ugly, monochrome, "
    "horror, geometry, mutation, disgusting, bad anatomy, bad proportions, bad quality, deformed, disconnected "
    "limbs, out of frame, out of focus, dehydrated, disfigured, extra arms, extra limbs, extra hands, fused "
    "fingers, gross proportions, long neck, jpeg, malformed limbs, mutated, mutated hands, mutated limbs, missing "
    "arms, missing fingers, picture frame, poorly drawn hands, poorly drawn face, collage, pixel, pixelated, "
    "grainy, color aberration, amputee, autograph, bad illustration, beyond the borders, blank background, body "
    "out of frame, boring background, branding, cut off, dismembered, disproportioned, distorted, draft, "
    "duplicated features, extra fingers, extra legs, fault, flaw, grains, hazy, identifying mark, improper scale, "
    "incorrect physiology, incorrect ratio, indistinct, kitsch, low resolution")


@dataclass(frozen=True)
class FamilySampler:
    steps: int  #: unmasking steps T
    guidance_scale: float  #: CFG w, in the family's own form (models/base.py ``apply_guidance``)
    gumbel_temperature: float  #: start of the annealed confidence noise τ_t
    source: str  #: where the numbers come from
    negative_prompt: str = ""  #: CFG's unconditional branch ("" = plain unconditional)


FAMILY_SAMPLERS: dict[str, FamilySampler] = {
    "shapes": FamilySampler(16, 3.0, 2.0, "the built-in world's pretraining and RL recipes"),
    "amused": FamilySampler(12, 10.0, 2.0, "diffusers AmusedPipeline defaults (temperature (2, 0))"),
    "meissonic": FamilySampler(64, 9.0, 2.0, "Meissonic's inference.py (its pipeline's own default is 48 steps "
                                             "and no negative prompt; MaskFocus's GenEval runs use CFG 5)",
                               MEISSONIC_NEGATIVE_PROMPT),
    "showo": FamilySampler(50, 5.0, 1.0, "Show-o's README for 512 px text-to-image (w = 5 in its (1+w)c - wu "
                                         "form; Mask-GRPO evaluates with the same)"),
}


def family_sampler(spec: str) -> FamilySampler:
    """The sampler defaults of the family a model spec names (the spec is checked here too)."""
    family, _ = parse_spec(spec)
    return FAMILY_SAMPLERS[family]


def defaults_help() -> str:
    """One line for --help: each family's default of the three options."""
    names = {"shapes": "shapes", "amused": "aMUSEd", "meissonic": "Meissonic", "showo": "Show-o"}
    return "; ".join(f"{names[f]} {d.steps} / {d.guidance_scale:g} / {d.gumbel_temperature:g}"
                     for f, d in FAMILY_SAMPLERS.items())
