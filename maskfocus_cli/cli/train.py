"""`maskfocus train` (not implemented yet)."""

import click


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple) -> None:
    """Not implemented yet."""
    raise ValueError("'maskfocus train' is not implemented yet")
