"""`maskfocus evaluate` (not implemented yet)."""

import click


@click.command("evaluate", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args: tuple) -> None:
    """Not implemented yet."""
    raise ValueError("'maskfocus evaluate' is not implemented yet")
