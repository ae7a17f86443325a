"""`maskfocus sample`: prompts → PNGs, one JSON line per image on stdout."""

from __future__ import annotations

import re
from pathlib import Path

import click
import torch

from maskfocus_cli.cli.common import (MAX_SEED, ROUTING_HELP, CheckedInt, check_seed_room, emit, ensure_writable_dir,
                                      model_options, progress, read_prompts, remove_if_left_empty, sampler_options,
                                      settings_from, stderr, training_settings_note)


def image_path(out: Path, layout: str, prompt_index: int, image_index: int) -> Path:
    if layout == "geneval":
        from maskfocus_cli.bench.layout import geneval_sample_path
        return geneval_sample_path(out, prompt_index, image_index)
    return out / f"{prompt_index:05d}-{image_index:04d}.png"


def geneval_metadata(prompt: str) -> dict:
    """The GenEval metadata row written for a plain prompt: the shapes world's parse of it (tag, include,
    exclude), so `evaluate --bench shapes --images` can score the folder; just the prompt otherwise."""
    from maskfocus_cli.shapes.world import parse_prompt
    try:
        return parse_prompt(prompt)
    except ValueError:
        return {"prompt": prompt}


_FLAT_PNG = re.compile(r"[0-9]{5,}-[0-9]{4,}\.png")


def _ours(p: Path) -> bool:
    """Written by a sample run: a flat image, grid.png, or a GenEval prompt folder (00000/)."""
    if p.is_dir():
        return re.fullmatch(r"[0-9]{5,}", p.name) is not None and \
            ((p / "metadata.jsonl").is_file() or (p / "samples").is_dir())
    return p.name == "grid.png" or _FLAT_PNG.fullmatch(p.name) is not None


def check_no_earlier_run(out: Path) -> None:
    """Refuse an --out holding images of an earlier run: a smaller run would overwrite only some of
    them, and evaluate --images (or anyone reading the folder) would take the stale rest as ours."""
    found = sorted(p.name for p in out.iterdir() if _ours(p))
    if found:
        raise ValueError(f"--out {out} already holds images of an earlier run (e.g. {found[0]}): choose a new "
                         "folder or empty it, so stale images cannot pass for this run's")


@click.command("sample")
@click.argument("prompt_args", nargs=-1, metavar="[PROMPT]...")
@click.option("--prompts", "prompts_file", default=None, metavar="FILE|-",
              help="Prompt file (one per line, or GenEval .jsonl rows), '-' for stdin.")
@model_options
@sampler_options
@click.option("--n", "n", default=1, show_default=True, type=int, help="Images per prompt.")
@click.option("--seed", default=0, show_default=True, type=CheckedInt(0, MAX_SEED),
              help="Seed of image 0; image j uses seed+j (a repeated prompt continues with new seeds).")
@click.option("--batch-size", default=64, show_default=True, type=CheckedInt(1), help="Images per forward batch.")
@click.option("--out", "out", default="samples", show_default=True, metavar="DIR", help="Output folder.")
@click.option("--layout", default="flat", show_default=True, type=click.Choice(["flat", "geneval"]),
              help="flat: OUT/<prompt>-<image>.png; geneval: OUT/<00000>/samples/<0000>.png + metadata.jsonl "
                   "(GenEval rows from a .jsonl --prompts file, else parsed from shapes-world prompts).")
@click.option("--grid", is_flag=True, help="Also write OUT/grid.png, a contact sheet of every image.")
@click.option("--routing", is_flag=True,
              help="Sample with MaskFocus's entropy-based dynamic routing (as in training rollouts); "
                   + ROUTING_HELP + ".")
def sample(prompt_args, prompts_file, model_spec, checkpoint, device, dtype, steps, cfg, schedule,
           temperature, gumbel, negative_prompt, n, seed, batch_size, out, layout, grid, routing) -> None:
    """Generate images for PROMPTs and print one JSON line per image.

    \b
    maskfocus sample "a photo of a red circle left of a blue square" --n 4 --out OUT
    printf 'a photo of two green triangles\\n' | maskfocus sample --prompts - --out OUT | jq .path
    """
    from maskfocus_cli.engine.generate import generate, make_jobs
    from maskfocus_cli.engine.sampling import mask_counts
    from maskfocus_cli.io.images import contact_sheet, save_png
    from maskfocus_cli.models.loading import load_model

    prompts, metas = read_prompts(prompt_args, prompts_file)
    if n < 1:
        raise ValueError(f"--n must be at least 1 (got {n})")
    settings = settings_from(model_spec, steps, cfg, schedule, temperature, gumbel, negative_prompt)
    check_seed_room(seed, prompts, n)
    remove_if_left_empty(out)
    out_dir = ensure_writable_dir(out)
    check_no_earlier_run(out_dir)
    adapter = load_model(model_spec, checkpoint, device, dtype)
    mask_counts(adapter.num_tokens, settings.steps, settings.schedule)  # more steps than tokens: one line, now
    given = {"steps": steps, "cfg": cfg, "gumbel": gumbel, "negative_prompt": negative_prompt}
    if (said := training_settings_note(checkpoint, settings, lambda name: given[name] is not None)) is not None:
        stderr.print(said, highlight=False, soft_wrap=True)
    adapter.encode_prompts(sorted(set(prompts) | {settings.negative_prompt}))  # bad prompts: before any sampling
    from maskfocus_cli.engine.routing import make_router
    router = make_router(routing)
    if layout == "geneval":
        from maskfocus_cli.bench.layout import write_geneval_metadata
        unscorable = 0
        for i, (p, m) in enumerate(zip(prompts, metas)):
            row = m if m is not None else geneval_metadata(p)
            unscorable += set(row) == {"prompt"}
            write_geneval_metadata(out_dir, i, row)
        if unscorable:  # evaluate --images refuses such folders later: say so now
            stderr.print(f"note: {unscorable} of {len(prompts)} prompts are not shapes-world GenEval prompts, so "
                         "their metadata holds only the prompt and `evaluate --images` cannot score them (give "
                         "GenEval metadata rows with --prompts FILE.jsonl)", highlight=False, soft_wrap=True)
    jobs = make_jobs(prompts, n, seed, metas)
    sheet = []
    with progress() as bar:
        task = bar.add_task("sampling", total=len(jobs))
        for batch in generate(adapter, jobs, settings, batch_size, router):
            for k, job in enumerate(batch.jobs):
                path = image_path(out_dir, layout, job.prompt_index, job.image_index)
                save_png(batch.images[k], path)
                row = {"path": str(path), "prompt": job.prompt, "seed": job.seed, "steps": settings.steps,
                       "cfg": settings.guidance_scale, "schedule": schedule, "temperature": temperature,
                       "gumbel": settings.gumbel_temperature,
                       **({"negative_prompt": settings.negative_prompt} if settings.negative_prompt else {}),
                       "model": model_spec, "dtype": dtype}
                if checkpoint:
                    row["checkpoint"] = str(checkpoint)
                if router is not None:  # what regenerates a routed image: its batch's composition
                    row.update(routing=True, batch_size=batch_size)
                if batch.explore_fraction is not None:
                    row["explore_fraction"] = round(float(batch.explore_fraction[k]), 4)
                emit(row)
            if grid:
                sheet.append(batch.images)
            bar.advance(task, len(batch.jobs))
    if grid:
        images = torch.cat(sheet)
        save_png(contact_sheet(images, ncols=n if n > 1 else None, scale=2 if images.shape[-1] <= 128 else 1),
                 out_dir / "grid.png")
