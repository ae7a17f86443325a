"""Error types the CLI reports as one line + exit code 2 (besides ValueError and OS errors)."""


class UserError(Exception):
    """Something outside the program the user must fix (a server down, weights missing...)."""
