"""`sftlab chat`: a terminal chat with the saved template and stop tokens, streaming tokens as they come."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import StoppingCriteriaList, TextStreamer

from sftlab.generation.base import SamplingParams
from sftlab.generation.transformers_backend import StopWhen, TransformersGenerator

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


class _CallbackStreamer(TextStreamer):
    """Hands each decoded piece to a callback in the generating thread: no second thread that could die
    silently and leave the reader waiting forever."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def stream_reply(gen: TransformersGenerator, prompt_ids: list[int], params: SamplingParams,
                 on_text: Callable[[str], None], should_stop: Callable[[], bool] | None = None) -> tuple[int, bool]:
    """Generate one reply, passing text pieces to `on_text` as they are decoded; returns (new tokens, whether
    it ended with a stop token). Runs in the caller's thread, so an engine error is raised to the caller."""
    ids = torch.tensor([prompt_ids], device=next(gen.model.parameters()).device)
    sample = params.temperature > 0
    stopping = StoppingCriteriaList([StopWhen(should_stop)]) if should_stop else None
    out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_new_tokens,
                             do_sample=sample, temperature=params.temperature if sample else None,
                             top_p=params.top_p if sample else None, top_k=None,
                             streamer=_CallbackStreamer(gen.tokenizer, on_text), stopping_criteria=stopping,
                             eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    stops = [k for k, t in enumerate(new) if t in gen.stop_ids]
    return (stops[0] if stops else len(new)), bool(stops)


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
        if text == "/system" or text.startswith("/system "):  # "/systematic ..." is a message
            system = text[len("/system"):].strip() or None
            history = []
            write(f"(system prompt {'set' if system else 'cleared'}; conversation reset)\n")
            continue
        turn = {"role": "user", "content": text}
        prompt = gen.encode(([{"role": "system", "content": system}] if system else []) + history + [turn])
        if not _fits(prompt, gen, write):
            continue
        history.append(turn)
        write("assistant> ")
        window = gen.context_window  # the reply gets what the window leaves (_fits made sure some is left)
        budget = min(max_new_tokens, window - len(prompt)) if window else max_new_tokens
        reply = _reply(gen, prompt, SamplingParams(max_new_tokens=budget, temperature=temperature), write)
        write("" if reply.endswith("\n") else "\n")  # the prompt on a line of its own, no blank line after code
        history.append({"role": "assistant", "content": reply})
    return ([{"role": "system", "content": system}] if system else []) + history


def _reply(gen: TransformersGenerator, prompt: list[int], params: SamplingParams, write: Callable[[str], None]) -> str:
    """Stream one reply to the terminal; return its text for the history exactly as generated (not stripped: the
    first line's indentation and a code block's final newline are the reply, and the next turn's prompt must be the
    conversation the model had)."""
    pieces: list[str] = []

    def show(piece: str) -> None:
        pieces.append(piece)
        write(piece)

    stream_reply(gen, prompt, params, show)
    return "".join(pieces)


def _fits(prompt: list[int], gen: TransformersGenerator, write: Callable[[str], None]) -> bool:
    """A conversation that leaves no room in the context window is refused with the numbers, not generated from."""
    window = getattr(gen, "context_window", None)
    if not window or len(prompt) < window:
        return True
    write(f"(not sent: the conversation would be {len(prompt)} tokens and the model's context window is {window}; "
          "send something shorter or /reset)\n")
    return False
