"""Commands that run a model for people: the HTTP server and the terminal chat."""

from __future__ import annotations

import os

import typer

from sftlab.cli.base import app, console, fail, quiet
from sftlab.errors import SftlabError


@app.command()
def serve(model: str = typer.Argument(..., help="Model (packaged name, folder, .gguf, hub id)."),
          adapter: str = typer.Option(None, help="LoRA adapter to apply."),
          host: str = typer.Option("127.0.0.1", help="Bind address (default: this machine only)."),
          port: int = typer.Option(8000, help="Port, 1-65535."),
          name: str = typer.Option(None, help="Model name to report."),
          api_key_env: str = typer.Option(None, help="Require the key held in this environment variable."),
          max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask for."),
          max_queue: int = typer.Option(64, help="Requests that may wait for the model; more get 503 + Retry-After."),
          batch_size: int = typer.Option(8, help="Waiting requests with equal sampling parameters generated together.")
          ) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions incl. streaming, /v1/models, /health)."""
    quiet()
    import uvicorn

    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path
    from sftlab.serve.server import check_limits, create_app, listen_socket

    try:
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise SftlabError(f"--api-key-env {api_key_env}: that environment variable is not set")
        check_limits(max_tokens, max_queue, batch_size)
        sock = listen_socket(host, port)  # before the model loads: a taken port fails in a second, not a minute
        gen = load_transformers_generator(resolve_model_path(model), adapter=adapter, model_id=name or model,
                                          batch_size=batch_size)
        app_ = create_app(gen, name or model, api_key=key, max_tokens_limit=max_tokens, max_queue=max_queue)
        console.print(f"serving {name or model} on http://{host}:{port}/v1")
        uvicorn.Server(uvicorn.Config(app_, log_level="warning")).run(sockets=[sock])
    except SftlabError as e:
        fail(e)


@app.command()
def chat(model: str = typer.Argument(..., help="Model (packaged name, folder, .gguf, hub id)."),
         adapter: str = typer.Option(None, help="LoRA adapter to apply."),
         max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.0)) -> None:
    """Interactive terminal chat with the saved chat template; /reset, /system TEXT, /exit."""
    quiet()
    import math
    import sys

    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path
    from sftlab.serve.chat import chat_loop

    def read(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        if max_new_tokens < 1:  # checked before the model loads
            raise SftlabError(f"--max-new-tokens {max_new_tokens}: must be an integer of at least 1")
        if not math.isfinite(temperature) or temperature < 0:
            raise SftlabError(f"--temperature {temperature}: must be a finite number >= 0 (0: greedy)")
        gen = load_transformers_generator(resolve_model_path(model), adapter=adapter, model_id=model)
        if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 (a Latin-1 file piped in) become U+FFFD,
            sys.stdin.reconfigure(errors="replace")  # not a decode error or a lone surrogate the tokenizer crashes on
        chat_loop(gen, read, write, max_new_tokens=max_new_tokens, temperature=temperature)
    except SftlabError as e:
        fail(e)
