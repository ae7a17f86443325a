"""`maskfocus profile-steps`: which sampling steps are critical for this model and step count.

Table on stderr, one JSON line per (prompt, step) on stdout, OUT/profile.png and
OUT/summary.json (the recommended critical steps).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import click

from maskfocus_cli.cli.common import (MAX_SEED, ROUTING_HELP, CheckedInt, check_seed_room, emit, ensure_writable_dir,
                                      model_options, plural, progress, read_prompts, remove_if_left_empty,
                                      sampler_options, settings_from, stderr)


def profile_table(result, title: str = ""):
    """Rich table: one row per step, recommended critical steps starred."""
    from rich.table import Table
    crit = set(result.critical_steps.tolist())
    freq = result.selection_frequency.tolist()
    n_prompts = len(result.prompts)
    table = Table(title=title or "step profile", show_edge=False, header_style="bold")
    for name in ("step", "mask ratio", "mean entropy", "similarity", "gain", "selected", "critical"):
        table.add_column(name, justify="right")
    rows = zip(result.mask_ratio, result.mean_entropy.tolist(), result.mean_similarity.tolist(),
               result.mean_gain.tolist(), freq)
    for t, (r, h, s, g, f) in enumerate(rows):
        star = "★" if t in crit else ""
        style = "bold red" if t in crit else None
        table.add_row(str(t), f"{r:.3f}", f"{h:.3f}", f"{s:.4f}", f"{g:.4f}", f"{f}/{n_prompts}", star,
                      style=style)
    return table


@click.command("profile-steps")
@click.argument("prompt_args", nargs=-1, metavar="[PROMPT]...")
@click.option("--prompts", "prompts_file", default=None, metavar="FILE|-",
              help="Prompt file (one per line, or GenEval .jsonl rows), '-' for stdin.")
@model_options
@sampler_options
@click.option("--n", "n", default=4, show_default=True, type=int,
              help="Images per prompt; the gain of their mean similarity picks the prompt's steps (as in training).")
@click.option("--seed", default=0, show_default=True, type=CheckedInt(0, MAX_SEED),
              help="Seed of image 0; image j uses seed+j (a repeated prompt continues with new seeds).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Images per forward batch.")
@click.option("--embed", default="codebook", show_default=True, type=click.Choice(["codebook", "pixels", "clip"]),
              help="Embedding of x̂0 for the step similarity: VQ codebook vectors, decoded pixels, or CLIP.")
@click.option("--clip-model", default="ViT-B-32", show_default=True, help="open_clip architecture for --embed clip.")
@click.option("--clip-weights", default=None, metavar="PATH",
              help="Local open_clip weights file for --embed clip (nothing is downloaded).")
@click.option("--top-k", "top_k", default=3, show_default=True, type=int, help="Critical steps to pick.")
@click.option("--routing", is_flag=True,
              help="Profile rollouts sampled with entropy-based dynamic routing; " + ROUTING_HELP + ".")
@click.option("--strip", "strip_prompts", default=4, show_default=True, type=click.IntRange(0, 16),
              help="Prompts shown in the x̂0 image strip of profile.png (0 = none).")
@click.option("--out", "out", default="profile", show_default=True, metavar="DIR", help="Output folder.")
def profile_steps(prompt_args, prompts_file, model_spec, checkpoint, device, dtype, steps, cfg, schedule,
                  temperature, gumbel, negative_prompt, n, seed, batch_size, embed, clip_model, clip_weights, top_k,
                  routing, strip_prompts, out) -> None:
    """Profile per-step information gain and entropy; print one JSON line per (prompt, step).

    \b
    maskfocus profile-steps --prompts prompts.txt --steps 16 --top-k 3 --out PROFILE
    maskfocus profile-steps "a photo of a red circle" --n 8 --out P | jq 'select(.critical)'
    """
    from maskfocus_cli.engine.critical import candidate_steps, make_embedder
    from maskfocus_cli.engine.profile import check_profile_options, profile_steps as run_profile
    from maskfocus_cli.io.checkpoint import atomic_write_json
    from maskfocus_cli.io.profile_plot import write_profile_plot
    from maskfocus_cli.models.loading import load_model

    prompts, _ = read_prompts(prompt_args, prompts_file)
    settings = settings_from(model_spec, steps, cfg, schedule, temperature, gumbel, negative_prompt)
    check_profile_options(settings.steps, top_k, n, batch_size)
    check_seed_room(seed, list(prompts), n)
    if embed == "clip":  # fail on missing CLIP weights before loading any model
        if clip_weights is None:
            make_embedder("clip", None, clip_model, None)  # raises the how-to message, touches nothing
        if not Path(clip_weights).is_file():
            raise ValueError(f"--clip-weights {clip_weights}: file not found (a local open_clip weights file)")
    remove_if_left_empty(out)  # a failed run leaves no empty folder behind
    out_dir = ensure_writable_dir(out)
    adapter = load_model(model_spec, checkpoint, device, dtype)
    adapter.encode_prompts(sorted(set(prompts) | {settings.negative_prompt}))  # bad prompts: before any sampling
    try:
        embedder = make_embedder(embed, adapter, clip_model, clip_weights)
    except (RuntimeError, OSError, pickle.UnpicklingError, KeyError) as e:  # open_clip's loading errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"--embed clip: cannot load open_clip {clip_model!r} from {clip_weights}: {first} "
                         "(check --clip-model names the weights' architecture)") from None
    from maskfocus_cli.engine.routing import make_router
    router = make_router(routing)

    def on_prompt(prof) -> None:  # stream each prompt's rows as soon as it is done
        for row in prof.rows():
            emit(row)

    with progress() as bar:
        task = bar.add_task("profiling", total=len(prompts) * n)
        result = run_profile(adapter, prompts, settings, embedder, top_k=top_k, n=n, seed=seed,
                             batch_size=batch_size, router=router, strip_prompts=strip_prompts,
                             on_prompt=on_prompt, on_batch=lambda k: bar.advance(task, k))

    facts = {"model": model_spec, "embed": embed, "dtype": dtype}  # bf16 samples differ from fp32 ones
    if checkpoint:
        facts["checkpoint"] = str(checkpoint)
    if routing:  # routed images depend on their batch's composition
        facts["batch_size"] = batch_size
    summary = result.summary(**facts, images_per_prompt=n, seed=seed,
                             cfg=settings.guidance_scale, schedule=schedule, temperature=temperature,
                             gumbel=settings.gumbel_temperature, negative_prompt=settings.negative_prompt,
                             routing=routing)
    atomic_write_json(out_dir / "summary.json", summary)
    size = f"{plural(len(prompts), 'prompt')} × {plural(n, 'image')}"
    write_profile_plot(result, out_dir / "profile.png",
                       title=f"{model_spec}: T={settings.steps}, {size}, embed={embed}"
                             + (", dynamic routing" if routing else ""))
    stderr.print(profile_table(result, title=f"step profile ({size}, embed={embed}{', routing' if routing else ''})"))
    conc = summary["gain_concentration"]
    last = candidate_steps(settings.steps, top_k) - 1  # 0..T-3, or every step when top-k leaves no other choice
    stderr.print(f"recommended critical steps (top-{top_k} of the mean gain over steps 0..{last}): "
                 f"{summary['critical_steps']}"
                 + (f" — {conc:.0%} of the total gain" if conc is not None else ""))
    stderr.print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'profile.png'}")
