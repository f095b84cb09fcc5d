"""`sftlab data`: check and convert datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sftlab.cli.base import console, data_app, fail, quiet
from sftlab.errors import SftlabError


@data_app.command("check")
def data_check(path: str = typer.Argument(..., help="File, dataset folder or database URL."),
               format: str = typer.Option("auto"), type: str = typer.Option(None),
               query: str = typer.Option(None, help="SQL query (for a database)."),
               on_error: str = typer.Option("skip"),
               model: str = typer.Option(None, help="Also tokenize with this model's template and verify masks."),
               chat_template: str = typer.Option("auto"),
               allow_empty: bool = typer.Option(False, help="An empty source is not an error.")) -> None:
    """Read, validate (and optionally tokenize) a dataset; print counts and every skip reason."""
    quiet()
    from sftlab.data.loading import load_conversations, make_spec

    try:
        convs, report = load_conversations(make_spec(dict(path=path, format=format, type=type, query=query,
                                                          on_error=on_error, allow_empty=allow_empty), "data check"))
        console.print_json(json.dumps(report.to_dict()))
        if model:
            from sftlab.models.causal_lm import load_chat_tokenizer
            from sftlab.models.loading import resolve_model_path
            from sftlab.train.dataset import tokenize_all

            tok = load_chat_tokenizer(resolve_model_path(model), chat_template)[0]
            _, stats = tokenize_all(tok, convs)
            console.print_json(json.dumps(stats.to_dict()))
    except SftlabError as e:
        fail(e)


@data_app.command("convert")
def data_convert(src: str = typer.Argument(..., help="File, dataset folder or database URL."),
                 dst: Path = typer.Argument(..., help="Output: .jsonl (messages), .parquet, or a folder (--out-format "
                                                      "hf)."),
                 format: str = typer.Option("auto"), type: str = typer.Option(None),
                 query: str = typer.Option(None, help="SQL query (for a database)."),
                 on_error: str = typer.Option("raise"),
                 out_format: str = typer.Option("auto", help="jsonl | parquet | hf (a save_to_disk folder); auto: "
                                                             ".parquet is Parquet, anything else JSONL."),
                 overwrite: bool = typer.Option(False, help="Replace DST if it exists (never the input)."),
                 allow_empty: bool = typer.Option(False, help="Write an empty DST when the source has no (valid) "
                                                              "record, instead of an error.")) -> None:
    """Convert any supported source into sftlab's `messages` format: JSONL, Parquet or a HF dataset (atomic write)."""
    from sftlab.data.loading import load_conversations, make_spec, require_records
    from sftlab.data.set_writers import check_set_output, output_format, write_conversations

    try:
        out_format = output_format(dst, out_format)
        check_set_output(dst, out_format, inputs=[src], overwrite=overwrite)
        spec = make_spec(dict(path=src, format=format, type=type, query=query, on_error=on_error,
                              allow_empty=allow_empty), "data convert")
        convs, report = load_conversations(spec)
        if not allow_empty:
            require_records(report)
        n = write_conversations(dst, convs, out_format, keep=[src])
        skipped = ", ".join(f"{r}: {c}" for r, c in report.skipped.most_common())
        console.print(f"wrote {n} conversations to {dst}; skipped {sum(report.skipped.values())}"
                      + (f" ({skipped})" if skipped else ""), markup=False)
    except SftlabError as e:
        fail(e)
