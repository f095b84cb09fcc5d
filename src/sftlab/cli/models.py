"""Model commands: merge-and-export a LoRA adapter, list the packaged models."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.base import app, console, fail, quiet
from sftlab.errors import SftlabError


@app.command()
def export(adapter: Path = typer.Argument(..., help="LoRA adapter folder (e.g. runs/x/final)."),
           out: Path = typer.Argument(..., help="Where to write the merged model."),
           base: str = typer.Option(None, help="Base model; default: the one the adapter was trained on."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in OUT (only a "
                                                                     "folder `sftlab export` created).")) -> None:
    """Merge a LoRA adapter into its base model: a standard HF checkpoint for transformers or vLLM."""
    quiet()
    from sftlab.models.export import export_merged

    try:
        console.print(f"merged model written to {export_merged(adapter, out, base, overwrite=overwrite)}")
    except SftlabError as e:
        fail(e)


@app.command()
def models() -> None:
    """List the packaged (offline) models."""
    from sftlab.models.packaged import PACKAGED

    for name, (pkg, desc) in PACKAGED.items():
        console.print(f"[bold]{name}[/]  ({pkg}): {desc}")
