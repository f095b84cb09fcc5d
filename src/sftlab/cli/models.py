"""Model commands: merge-and-export a LoRA adapter, list the packaged models."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.base import app, console, fail, quiet
from sftlab.errors import SftlabError


@app.command()
def export(adapter: Path = typer.Argument(..., help="LoRA adapter folder (e.g. runs/x/final)."),
           out: Path = typer.Argument(..., help="Where to write the merged model (a folder; a .gguf file with "
                                                "--format gguf)."),
           base: str = typer.Option(None, help="Base model; default: the one the adapter was trained on."),
           format: str = typer.Option("hf", help="hf (a checkpoint folder) | gguf (one file for llama.cpp, Ollama)."),
           gguf_type: str = typer.Option("f16", help="GGUF tensor type: f32 | f16 | bf16 | q8_0."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in OUT (only a "
                                                                     "folder `sftlab export` created, or a GGUF "
                                                                     "file).")) -> None:
    """Merge a LoRA adapter into its base model: a standard HF checkpoint (transformers, vLLM) or a GGUF file."""
    quiet()
    from sftlab.errors import ConfigError
    from sftlab.models.export import export_merged
    from sftlab.models.gguf_export import export_gguf

    try:
        if format not in ("hf", "gguf"):
            raise ConfigError(f"--format {format}: expected hf or gguf")
        written = (export_gguf(adapter, out, base, gguf_type, overwrite=overwrite) if format == "gguf"
                   else export_merged(adapter, out, base, overwrite=overwrite))
        console.print(f"merged model written to {written}")
    except SftlabError as e:
        fail(e)


@app.command()
def models() -> None:
    """List the packaged (offline) models."""
    from sftlab.models.packaged import PACKAGED

    for name, (pkg, desc) in PACKAGED.items():
        console.print(f"[bold]{name}[/]  ({pkg}): {desc}")
