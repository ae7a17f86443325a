"""`maskfocus export CHECKPOINT --to DIR`: a standalone model folder with a model card."""

from __future__ import annotations

import click

from maskfocus_cli.cli.common import emit, ensure_writable_dir, remove_if_left_empty, stderr


@click.command("export")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.option("--to", "to", required=True, metavar="DIR", help="New folder for the exported model.")
@click.option("--format", "fmt", default="safetensors", show_default=True, type=click.Choice(["safetensors"]),
              help="Weights format.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Weights dtype of the export.")
@click.option("--model", "model", default=None, metavar="SPEC",
              help="The base model, if it has moved since training (e.g. amused:/models/amused-256); default: "
                   "the one the checkpoint records.")
def export(checkpoint, to, fmt, dtype, model) -> None:
    """Turn a training checkpoint (runs/X/checkpoints/step-N) into a model folder.

    \b
    Built-in model:  loadable by --model shapes:DIR
    Real models:     the original folder layout with the fine-tuned transformer swapped in
    The folder's README.md records base model, algorithm, recipe and final metrics.
    """
    from maskfocus_cli.io.export import export_checkpoint
    remove_if_left_empty(to)  # a failed export leaves no empty --to behind
    ensure_writable_dir(to, "--to")
    facts = export_checkpoint(checkpoint, to, dtype, model)
    stderr.print(f"[green]exported[/] {checkpoint} → {to}")
    emit(facts)
