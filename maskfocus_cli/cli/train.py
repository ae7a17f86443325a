"""`maskfocus train RECIPE.yaml`: MaskFocus / Mask-GRPO / ablations / built-in pretraining."""

from __future__ import annotations

import signal

import click

from maskfocus_cli.cli.common import emit, plural, silence_stdout, stderr


class TrainCommand(click.Command):
    """`--set train.lr 1e-5` (a space for the '=') would be click's 'unexpected extra argument (1e-5)'
    and a usage block; name the --set that needs the '=' instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click consumes the list it parses
        try:
            return super().parse_args(ctx, args)
        except click.UsageError:
            for flag, value in zip(given, given[1:]):
                if flag == "--set" and "=" not in value:
                    raise ValueError(f"--set {value!r}: expected KEY=VALUE (no spaces around '='), e.g. "
                                     "--set train.lr=1e-5") from None
            raise


@click.command("train", cls=TrainCommand)
@click.argument("recipe", required=False, metavar="[RECIPE.yaml]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set train.lr=1e-5 (repeatable).")
@click.option("--resume", default=None, metavar="latest|PATH",
              help="Continue from the newest checkpoint of the run folder, or from a checkpoint folder.")
@click.option("--out", default=None, metavar="DIR", help="Run folder (overrides output.dir).")
@click.option("--explain", is_flag=True, help="List every recipe field with its default and meaning, then exit; "
              "with a RECIPE, also the value it resolves to (base: and --set applied).")
def train(recipe, overrides, resume, out, explain) -> None:
    """Train with a recipe; one JSON line per iteration on stdout, live progress on stderr.

    \b
    maskfocus train recipes/shapes-maskfocus.yaml
    maskfocus train recipes/shapes-mask-grpo.yaml --set train.iterations=50 --out runs/mg
    maskfocus train recipes/shapes-maskfocus.yaml --resume latest
    accelerate launch --multi_gpu --num_processes 2 -m maskfocus_cli train recipes/geneval.yaml
    """
    from maskfocus_cli.config import Recipe, explain as explain_rows, load_recipe

    if explain:
        from rich.table import Table
        if recipe is None:
            table = Table("key", "default", "meaning", title="recipe fields")
            for key, default, help_ in explain_rows(Recipe):
                table.add_row(key, default, help_)
        else:  # what the recipe resolves to (base: inheritance and --set applied), beside the defaults
            import dataclasses

            from maskfocus_cli.config import value_at
            cfg = load_recipe(recipe, list(overrides))
            table = Table("key", str(recipe), "default", "meaning", title="recipe fields (bold: set by the recipe)")
            for key, default, help_ in explain_rows(Recipe):
                v = value_at(cfg, key)
                unset = "." in key and value_at(cfg, key.rsplit(".", 1)[0]) is None  # in an unset optional section
                value = "" if dataclasses.is_dataclass(v) or unset else repr(v)  # a section heading: blank
                changed = value not in ("", default)
                table.add_row(key, f"[bold]{value}[/bold]" if changed else value, default, help_)
        import shutil
        import sys

        from rich.console import Console
        # the table is what was asked for: stdout (pipe it to grep); wide enough not to cut the help text
        width = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns)
        Console(file=sys.stdout, width=width).print(table)
        return
    if recipe is None:
        raise ValueError("give a recipe: maskfocus train recipes/shapes-maskfocus.yaml (see --explain)")
    overrides = list(overrides) + ([f"output.dir={out}"] if out else [])
    cfg = load_recipe(recipe, overrides)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from maskfocus_cli.engine.trainer import Trainer
    from maskfocus_cli.io.plots import reward_curve

    trainer = Trainer(cfg, log=lambda m: stderr.print(f"[yellow]{m}"))
    trainer.start(resume)  # folder / resume problems: a one-line error before any progress output
    # SIGTERM (Slurm pre-emption, `kill`) and a first Ctrl-C: finish the iteration, checkpoint, exit 143 / 130
    # — resumable; a second Ctrl-C aborts at once
    main = trainer.acc.is_main_process
    stopped_by: list[int] = []

    def on_signal(signum, _frame) -> None:
        if signum == signal.SIGINT and trainer.stop_requested:
            raise KeyboardInterrupt
        if signum == signal.SIGINT and main:
            stderr.print("[yellow]Ctrl-C: stopping after this iteration with a checkpoint (Ctrl-C again aborts now)")
        stopped_by.append(signum)
        trainer.stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=stderr, disable=not main) as bar:
        task = bar.add_task(cfg.train.algorithm, total=cfg.train.iterations, info="")

        last_validation = ""
        stdout_open = True

        def emit_row(row: dict) -> None:
            """A closed stdout (``| head -1``) must not kill hours of training: drop the rows, keep going."""
            nonlocal stdout_open
            if not stdout_open:
                return
            try:
                emit(row)
            except BrokenPipeError:
                stdout_open = False
                silence_stdout()
                trainer.log("stdout was closed (the pipe's reader exited): training goes on; every row is in "
                            f"{trainer.run_dir / 'metrics.jsonl'}")

        def on_iteration(row: dict) -> None:
            nonlocal last_validation
            if "validation" in row:
                last_validation = f"  validation {_fmt(row['validation']['reward']['mean'])}"
            if "reward" in row:
                info = f"reward {_fmt(row['reward']['mean'])}{last_validation}  loss {row['loss']:+.4f}  " \
                       f"steps {steps_text(row['steps'])}"
            else:
                info = f"loss {row['loss']:.4f}  acc {row['token_accuracy']:.3f}  " \
                       f"objects {row.get('object_accuracy', float('nan')):.3f}"
            bar.update(task, completed=row["iteration"] + 1, info=info)
            if main:
                emit_row(row)

        try:
            history = trainer.run(resume=resume, on_iteration=on_iteration)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        bar.update(task, completed=trainer.state.iteration)
    if trainer.terminated:  # a signal after the last iteration changes nothing: the run ends as usual
        if main and history:  # the curve so far: a pre-empted run is looked at too
            reward_curve(history, trainer.run_dir / "reward.png", title=f"{cfg.train.algorithm} · {recipe}")
        trainer.close()  # as below
        stderr.print(f"terminated after {plural(trainer.state.iteration, 'iteration')}; continue with "
                     f"--resume latest --out {trainer.run_dir}")
        raise SystemExit(130 if stopped_by and stopped_by[0] == signal.SIGINT else 143)
    if main:
        trainer.sample_grid("final")
        if history:
            reward_curve(history, trainer.run_dir / "reward.png", title=f"{cfg.train.algorithm} · {recipe}")
        stderr.print(f"[green]done[/]: {plural(trainer.state.iteration, 'iteration')} → {trainer.run_dir}")
    trainer.close()  # every rank waits for rank 0's grid, then the process group goes down while Python is alive


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"  # None: no valid reward that iteration


def steps_text(steps: list[int]) -> str:
    """Trained steps, runs shortened (``0-15``, ``3-5,13``): Mask-GRPO's full list of 16 pushed
    the reward off a terminal line."""
    parts: list[str] = []
    for t in sorted(steps):
        if parts and parts[-1][1] == t - 1:
            parts[-1][1] = t
        else:
            parts.append([t, t])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts) or "-"
