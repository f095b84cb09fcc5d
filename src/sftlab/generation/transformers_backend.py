"""Batched generation with transformers: chat template, left padding, KV cache, template stop tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.data.schema import Conversation
from sftlab.templates.masking import prompt_ids, stop_token_ids


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Generation:
    text: str
    n_tokens: int
    finished: bool  # ended with an end-of-turn/EOS token within the budget

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "n_tokens": self.n_tokens, "finished": self.finished}


class TransformersGenerator:
    """Generate replies for chat prompts, `batch_size` prompts at a time, shortest first."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8,
                 stop_ids: list[int] | None = None) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.stop_ids = stop_ids or stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @torch.no_grad()
    def generate(self, prompts: list[Conversation | list[dict[str, Any]] | str],
                 params: SamplingParams | None = None) -> list[Generation]:
        params = params or SamplingParams()
        encoded = [prompt_ids(self.tokenizer, self._as_messages(p)) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            longest = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[row, longest - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, longest - len(encoded[i]):] = 1
            sample = params.temperature > 0
            if sample:
                torch.manual_seed(params.seed + start)
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=params.max_new_tokens,
                do_sample=sample, temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None, top_k=None, eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id)
            for row, i in enumerate(idx):
                results[i] = self._decode(out[row, longest:].tolist())
        return results  # type: ignore[return-value]

    def _decode(self, new_ids: list[int]) -> Generation:
        finished = False
        for k, t in enumerate(new_ids):
            if t in self.stop_ids:
                new_ids, finished = new_ids[:k], True
                break
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return Generation(text=text.strip(), n_tokens=len(new_ids), finished=finished)

    @staticmethod
    def _as_messages(p: Conversation | list[dict[str, Any]] | str) -> Conversation | list[dict[str, Any]]:
        return [{"role": "user", "content": p}] if isinstance(p, str) else p
