"""`sftlab chat`: a terminal chat with the saved template and stop tokens, streaming tokens as they come."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from transformers import TextIteratorStreamer

from sftlab.generation.transformers_backend import TransformersGenerator

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def chat_loop(gen: TransformersGenerator, read: Callable[[str], str], write: Callable[[str], None],
              max_new_tokens: int = 256, temperature: float = 0.0) -> list[dict[str, str]]:
    """Run until /exit or end of input; returns the final conversation (for tests and logs)."""
    system: str | None = None
    history: list[dict[str, str]] = []
    write(HELP + "\n")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = []
            write("(conversation reset)\n")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history = []
            write(f"(system prompt {'set' if system else 'cleared'}; conversation reset)\n")
            continue
        history.append({"role": "user", "content": text})
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        write("assistant> ")
        reply = _stream_reply(gen, msgs, write, max_new_tokens, temperature)
        write("\n")
        history.append({"role": "assistant", "content": reply})
    return ([{"role": "system", "content": system}] if system else []) + history


def _stream_reply(gen: TransformersGenerator, msgs, write, max_new_tokens: int, temperature: float) -> str:
    streamer = TextIteratorStreamer(gen.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([gen.encode(msgs)], device=next(gen.model.parameters()).device)
    sample = temperature > 0
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                  do_sample=sample, temperature=temperature if sample else None, top_k=None, top_p=None,
                  streamer=streamer, eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)
    thread = threading.Thread(target=lambda: gen.model.generate(**kwargs), daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        write(piece)
    thread.join()
    return "".join(pieces).strip()
