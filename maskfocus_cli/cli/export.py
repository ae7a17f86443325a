"""`maskfocus export` (not implemented yet)."""

import click


@click.command("export", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(args: tuple) -> None:
    """Not implemented yet."""
    raise ValueError("'maskfocus export' is not implemented yet")
