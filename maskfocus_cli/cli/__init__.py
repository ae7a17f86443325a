"""The `maskfocus` command: a thin click shell over the engine.

Every subcommand lives in its own module; user errors (``ValueError`` and
friends raised by the engine with a readable message) become one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from maskfocus_cli import __version__
from maskfocus_cli.errors import UserError

USER_ERRORS = (ValueError, UserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


class App(click.Group):
    """Click group that turns user errors into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare subcommand: its help is the answer
        except click.UsageError as e:  # a mistyped option or command: one line too, not usage + hint + error
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {' '.join(e.format_message().split())} (see '{where} --help')", err=True)
            ctx.exit(2)
        except USER_ERRORS as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="maskfocus")
def main() -> None:
    """RL post-training for masked generative text-to-image models (MaskFocus, Mask-GRPO).

    \b
    maskfocus sample "a photo of a red circle" --n 4 --out OUT
    maskfocus profile-steps --prompts prompts.txt --out PROFILE
    maskfocus train recipes/shapes-maskfocus.yaml
    maskfocus evaluate --bench shapes --out EVAL
    maskfocus export runs/X/checkpoints/step-100 --to MODEL

    Machine-readable results go to stdout as JSON lines; tables and progress go to stderr.
    """


def _register() -> None:
    from maskfocus_cli.cli import evaluate, export, profile, sample, train
    main.add_command(sample.sample)
    main.add_command(profile.profile_steps)
    main.add_command(train.train)
    main.add_command(evaluate.evaluate)
    main.add_command(export.export)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
