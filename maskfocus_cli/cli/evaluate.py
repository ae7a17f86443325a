"""`maskfocus evaluate`: generate (or read) benchmark images, score them, print the paper's table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from click.core import ParameterSource

from maskfocus_cli.cli.common import MAX_SEED, ROUTING_HELP, CheckedInt, check_seed_room, emit, ensure_writable_dir, \
    ensure_writable_file, model_options, progress, remove_if_left_empty, sampler_options, settings_from, stderr, \
    training_settings_note

BENCHES = ("geneval", "t2i-compbench", "shapes")
T2I_SCORED = ("color", "shape", "texture", "spatial", "non_spatial", "numeracy", "complex")
DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_BLIP = "Salesforce/blip-vqa-capfilt-large"
DEFAULT_CLIP_ARCH = {"geneval": "ViT-L-14", "t2i-compbench": "ViT-B-32"}  # GenEval colours; T2I CLIPScore
#: parameter → flag of the options that only mean something when generating
GENERATE_ONLY = {"model_spec": "--model", "checkpoint": "--checkpoint", "dtype": "--dtype", "n": "--n",
                 "seed": "--seed", "steps": "--steps", "cfg": "--cfg", "schedule": "--schedule",
                 "temperature": "--temperature", "gumbel": "--gumbel", "negative_prompt": "--negative-prompt",
                 "batch_size": "--batch-size",
                 "num_prompts": "--num-prompts", "prompt_seed": "--prompt-seed", "prompt_file": "--metadata/--prompts",
                 "routing": "--routing"}


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def _bar_callback(bar, label: str):
    """(done, total) progress callback driving one rich task created on the first call."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "task" not in state:  # the bar appears with its first task: an error before it prints one line
            bar.start()
            state["task"] = bar.add_task(label, total=total)
        bar.update(state["task"], completed=done, total=total)
    return update


@click.command("evaluate")
@click.option("--bench", required=True, type=click.Choice(BENCHES),
              help="geneval | t2i-compbench | shapes (GenEval rules on the built-in shapes world).")
@click.option("--images", "images_dir", default=None, metavar="DIR",
              help="Score-only: an images folder in the bench's official layout (from any tool); nothing is "
                   "generated.")
@click.option("--metadata", "--prompts", "prompt_file", default=None, metavar="PATH",
              help="Prompt file: GenEval evaluation_metadata.jsonl (geneval, shapes) or {category}_val.txt "
                   "(t2i-compbench, one --category). Default: cached official file, downloaded on first use; "
                   "shapes: held-out shapes prompts.")
@click.option("--category", "categories", multiple=True, type=click.Choice(T2I_SCORED),
              help="T2I-CompBench category, repeatable (default: all seven scored ones, or with --images the "
                   "ones the folder holds; 3d_spatial needs a depth model).")
@model_options
@sampler_options
@click.option("--n", "n", default=None, type=int,
              help="Images per prompt [default: 4 for geneval/shapes, 10 for t2i-compbench].")
@click.option("--seed", default=0, show_default=True, type=CheckedInt(0, MAX_SEED),
              help="Seed of image 0; image j uses seed+j (a repeated prompt continues with new seeds).")
@click.option("--batch-size", default=64, show_default=True, type=CheckedInt(1), help="Images per sampling batch.")
@click.option("--score-batch-size", default=16, show_default=True, type=CheckedInt(1),
              help="Images per scoring batch when reading --images.")
@click.option("--num-prompts", default=192, show_default=True, type=int,
              help="shapes: number of held-out prompts (tag-balanced).")
@click.option("--prompt-seed", default=0, show_default=True, type=int, help="shapes: seed of the prompt draw.")
@click.option("--detector", "detector_path", default=DEFAULT_DETECTOR, show_default=True, metavar="PATH",
              help="Mask2Former COCO instance-segmentation folder (geneval; t2i spatial/numeracy/complex).")
@click.option("--clip", "clip", default="openai", show_default=True, metavar="PATH|TAG",
              help="open_clip folder (open_clip_config.json + weights), checkpoint file, or pretrained tag "
                   "(tags download). geneval: colour classifier; t2i-compbench: CLIPScore.")
@click.option("--clip-arch", default=None, metavar="NAME",
              help="open_clip architecture for a --clip file or tag [default: ViT-L-14 geneval, ViT-B-32 t2i].")
@click.option("--blip", "blip_path", default=DEFAULT_BLIP, show_default=True, metavar="PATH",
              help="BLIP-VQA model folder (t2i-compbench color/shape/texture/complex).")
@click.option("--complex-spatial", default=None, metavar="PATH",
              help="t2i-compbench complex: complex_val_spatial.txt (default: cached official file).")
@click.option("--complex-action", default=None, metavar="PATH",
              help="t2i-compbench complex: complex_val_action.txt (default: cached official file).")
@click.option("--out", "out", default=None, metavar="DIR",
              help="Output folder: images (official layout), results.jsonl, summary.json, run.json "
                   "[default: eval-<bench>; with --images: the images folder].")
@click.option("--compare", "compare", default=None, metavar="SUMMARY",
              help="summary.json of another run: print both side by side with deltas.")
@click.option("--routing", is_flag=True,
              help="Sample as MaskFocus rollouts do (entropy-based dynamic routing): how much the exploratory "
                   "step costs the reward. Benchmarks score the standard sampler; this is a diagnostic; "
                   + ROUTING_HELP + " (recorded).")
@click.option("--fresh", is_flag=True,
              help="Start over instead of resuming: discard the earlier run in --out (its images, results.jsonl, "
                   "summary.json; with --images only its results).")
@click.option("--markdown", "markdown", default=None, metavar="FILE",
              help="Also write the table (and the --compare deltas) as markdown, with the command that made it.")
@click.pass_context
def evaluate(ctx, bench, images_dir, prompt_file, categories, model_spec, checkpoint, device, dtype, steps, cfg,
             schedule, temperature, gumbel, negative_prompt, n, seed, batch_size, score_batch_size, num_prompts,
             prompt_seed, detector_path, clip, clip_arch, blip_path, complex_spatial, complex_action, out, compare,
             routing, fresh, markdown) -> None:
    """Score a model (or a folder of images) on GenEval, T2I-CompBench or the shapes bench.

    Generate-and-score: images from --model go to --out in the official layout
    (GenEval: OUT/<00000>/samples/<0000>.png + metadata.jsonl; T2I-CompBench:
    OUT/<category>/samples/{prompt}_{idx:06}.png), every image is scored into
    OUT/results.jsonl (one row per image: correct/score, reason, detections) and
    OUT/summary.json. Score-only: --images DIR (same layouts). A re-run resumes:
    images already in results.jsonl are skipped.

    stdout gets exactly one JSON line, the summary (as in summary.json); the
    table, progress and images/s go to stderr.

    \b
    maskfocus evaluate --bench shapes --out EVAL
    maskfocus evaluate --bench shapes --images EVAL --out RESCORED --compare EVAL/summary.json
    maskfocus evaluate --bench geneval --images GENEVAL_IMAGES --detector m2f/ --clip clip-vit-l-14/
    maskfocus evaluate --bench t2i-compbench --category color --model meissonic:DIR --blip blip-vqa/
    """
    from maskfocus_cli.bench import report, runner
    from maskfocus_cli.bench.geneval import GenEvalThresholds
    from maskfocus_cli.models.loading import absolute_path, resolve_device

    if n is not None and n < 1:
        raise ValueError(f"--n must be at least 1 (got {n})")
    if images_dir is not None:
        clash = [flag for name, flag in GENERATE_ONLY.items() if _given(ctx, name)]
        if clash:
            verb = "only apply" if len(clash) > 1 else "only applies"
            raise ValueError(f"--images scores existing images; {', '.join(clash)} {verb} when generating "
                             f"(drop them or drop --images)")
        if not Path(images_dir).is_dir():  # checked before --out (default: this folder) is created
            problem = "not a folder" if Path(images_dir).exists() else "no such folder"
            raise ValueError(f"--images {images_dir}: {problem} (pass the folder of images to score)")
    if categories and bench != "t2i-compbench":
        raise ValueError("--category is for --bench t2i-compbench")
    draw = [flag for name, flag in (("num_prompts", "--num-prompts"), ("prompt_seed", "--prompt-seed"))
            if _given(ctx, name)]
    if draw and (bench != "shapes" or prompt_file is not None):  # they would be ignored: every prompt is run
        source = "the --metadata file" if prompt_file is not None else f"the {bench} prompt list"
        raise ValueError(f"{' and '.join(draw)} draw from the built-in held-out shapes prompts; {source} is used "
                         "whole (pass a shorter --metadata file for a quick check)")
    other = report.read_summary(compare) if compare else None  # a bad --compare fails before any work
    if other is not None and other.get("bench") != bench:
        raise ValueError(f"--compare {compare} is a {other.get('bench')!r} run; this is a {bench!r} run: compare runs "
                         "of the same bench")
    n = n or runner.DEFAULT_N[bench]
    cats = list(categories) or list(T2I_SCORED)
    if images_dir is not None and bench == "t2i-compbench" and not categories:
        # score-only: the categories the folder holds, so only their scorers need weights
        cats = [c for c in T2I_SCORED if (Path(images_dir) / c).is_dir()] or cats
    generating = images_dir is None

    # prompts first: a malformed prompt file should fail before any model loads
    note = None
    if generating:
        settings = settings_from(model_spec, steps, cfg, schedule, temperature, gumbel, negative_prompt)
        if bench == "t2i-compbench":
            if prompt_file is not None and len(cats) != 1:
                raise ValueError("--prompts selects one category's prompt file: pass exactly one --category")
            from maskfocus_cli.bench.prompts import load_t2i_compbench
            prompts = {c: load_t2i_compbench(c, prompt_file) for c in cats}
        elif bench == "geneval":
            from maskfocus_cli.bench.prompts import GENEVAL_COLORS, load_geneval_metadata
            metadata = load_geneval_metadata(prompt_file, colors=GENEVAL_COLORS)
        else:
            metadata = _shapes_metadata(prompt_file, num_prompts, prompt_seed)
            if prompt_file is None and num_prompts % 6:
                note = _unbalanced_tags_note(metadata, num_prompts)
        for listed in (prompts.values() if bench == "t2i-compbench" else [[m["prompt"] for m in metadata]]):
            check_seed_room(seed, list(listed), n)  # T2I-CompBench numbers each category's images afresh
    out = out or images_dir or f"eval-{bench}"
    remove_if_left_empty(out)  # a failed run leaves no empty folder behind
    out_dir = ensure_writable_dir(out)
    if markdown:  # written last: a bad path must not cost the whole evaluation
        remove_if_left_empty(Path(markdown).parent)
        ensure_writable_file(markdown, "--markdown")

    # what this run is, before anything loads: an --out holding another run's results is refused first
    dev = str(resolve_device(device))
    thr = GenEvalThresholds()
    arch = clip_arch or DEFAULT_CLIP_ARCH.get(bench)
    if bench == "shapes":
        scorer_info = {"detector": "shapes", "thresholds": dataclasses.asdict(thr)}
    elif bench == "geneval":
        scorer_info = {"detector": absolute_path(detector_path), "clip": absolute_path(clip), "clip_arch": arch,
                       "thresholds": dataclasses.asdict(thr)}
    else:
        scorer_info = {"blip": absolute_path(blip_path), "detector": absolute_path(detector_path),
                       "clip": absolute_path(clip), "clip_arch": arch}
    run_info = {"bench": bench, "scorer": scorer_info}
    if generating:
        from maskfocus_cli.models.loading import absolute_spec
        # absolute paths: a resume from another working directory (a requeued job) is the same run
        model_info = {"model": absolute_spec(model_spec),
                      "checkpoint": absolute_path(checkpoint) if checkpoint else None, "dtype": dtype}
        run_info["generator"] = {**model_info, **runner.generation_facts(settings, n, seed, batch_size, routing)}
    if not fresh:
        runner.check_same_run(out_dir, run_info)

    # scorer: weights load (or fail with how to supply them) before anything is generated
    if bench == "shapes":
        from maskfocus_cli.shapes.detector import ShapesDetector
        detector = ShapesDetector()
    elif bench == "geneval":
        detector = runner.geneval_detector(detector_path, clip, arch, device=dev, score_threshold=thr.score,
                                           max_per_class=thr.max_objects)
    else:
        from maskfocus_cli.bench.t2i_compbench import build_scorers
        scorers = build_scorers(cats, blip_path, detector_path, clip, arch, dev, complex_spatial, complex_action)

    if generating:
        from maskfocus_cli.engine.routing import make_router
        from maskfocus_cli.engine.sampling import mask_counts
        from maskfocus_cli.models.loading import load_model
        adapter = load_model(model_spec, checkpoint, device, dtype)
        mask_counts(adapter.num_tokens, settings.steps, settings.schedule)  # more steps than tokens: fail now
        if (said := training_settings_note(checkpoint, settings, lambda name: _given(ctx, name))) is not None:
            stderr.print(said, highlight=False, soft_wrap=True)
        generation = runner.Generation(adapter, settings, n=n, seed=seed, batch_size=batch_size,
                                       router=make_router(routing))

    bar = progress()
    try:
        cb = _bar_callback(bar, "generating + scoring" if generating else "scoring")
        if not generating and bench == "t2i-compbench":
            _, summary = runner.score_t2i_dir(images_dir, scorers, out=out_dir, scorer_info=scorer_info,
                                              batch_size=score_batch_size, fresh=fresh, on_progress=cb)
        elif not generating:
            _, summary = runner.score_geneval_dir(images_dir, detector, out=out_dir, bench=bench, thresholds=thr,
                                                  scorer_info=scorer_info, batch_size=score_batch_size,
                                                  fresh=fresh, on_progress=cb)
        elif bench == "t2i-compbench":
            _, summary = runner.run_t2i_compbench(out_dir, prompts, scorers, generation, scorer_info=scorer_info,
                                                  model_info=model_info, fresh=fresh, on_progress=cb)
        else:
            _, summary = runner.run_geneval_like(out_dir, metadata, detector, generation, bench=bench,
                                                 thresholds=thr, scorer_info=scorer_info, model_info=model_info,
                                                 fresh=fresh, on_progress=cb)
    finally:
        if bar.live.is_started:  # stopping a bar that never started would print an empty line
            bar.stop()

    stderr.print(report.summary_table(summary))
    if (line := report.pass_line(summary)) is not None:
        stderr.print(line)
    if (line := report.precision_line(summary)) is not None:
        stderr.print(line, highlight=False)
    if note:  # beside the table it qualifies
        stderr.print(note, highlight=False, soft_wrap=True)
    rate = summary.get("images_per_second_scored")
    fresh_n = summary.get("newly_scored", 0)
    resumed = summary.get("images", 0) - fresh_n
    stderr.print(f"scored {fresh_n} images" + (f" at {rate:.1f} images/s" if rate else "")
                 + (f"; {resumed} reused from {out_dir / runner.RESULTS}" if resumed else "")
                 + f"; summary in {out_dir / runner.SUMMARY}")
    labels = (_short(out_dir), _short(Path(compare))) if other is not None else None  # terminal and markdown
    if other is not None:
        stderr.print(report.compare_table(summary, other, labels))
        if differ := report.sample_differences(summary, other):
            from rich.markup import escape
            stderr.print(f"[yellow]note: the runs' samples differ ({escape('; '.join(differ))}): the Δ row mixes "
                         "the model's change with the samples'", highlight=False)
    if markdown:
        import shlex
        import sys
        from maskfocus_cli.io.checkpoint import atomic_write_bytes
        command = "maskfocus " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
        atomic_write_bytes(markdown, report.markdown_table(summary, command, other, labels).encode())
    emit(summary)


def _short(path: Path) -> str:
    """A run's name for the compare table: its folder name (OUT for OUT/summary.json)."""
    path = Path(path)
    return (path.parent if path.name == "summary.json" else path).resolve().name or str(path)


def _unbalanced_tags_note(metadata: list[dict], num_prompts: int) -> str:
    """Overall is the mean over the tags scored: with a --num-prompts the six tags do not share, it is not
    the six-tag mean other runs report."""
    from collections import Counter

    from maskfocus_cli.bench.geneval import TAGS
    counts = Counter(m["tag"] for m in metadata)
    missing = [t for t in TAGS if not counts[t]]
    what = f"{', '.join(missing)} get{'s' if len(missing) == 1 else ''} no prompts and overall averages the " \
           f"{6 - len(missing)} tags scored" if missing else "the tags get unequal shares"
    return f"note: --num-prompts {num_prompts} does not split over the 6 tags: {what}; use a multiple of 6 to " \
           "compare with other runs"


def _shapes_metadata(prompt_file: str | None, num_prompts: int, prompt_seed: int) -> list[dict]:
    from maskfocus_cli.bench import runner
    if prompt_file is None:
        return runner.shapes_metadata(num_prompts, prompt_seed)
    from maskfocus_cli.bench.prompts import load_geneval_metadata
    from maskfocus_cli.shapes.world import COLORS
    return load_geneval_metadata(prompt_file, colors=COLORS)
