"""`python -m maskfocus_cli` (what `accelerate launch -m maskfocus_cli` runs)."""

from maskfocus_cli.cli import main

if __name__ == "__main__":
    main()
