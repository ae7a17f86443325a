"""`maskfocus profile-steps` (not implemented yet)."""

import click


@click.command("profile-steps", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def profile_steps(args: tuple) -> None:
    """Not implemented yet."""
    raise ValueError("'maskfocus profile-steps' is not implemented yet")
