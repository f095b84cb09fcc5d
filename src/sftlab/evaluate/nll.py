"""Held-out response NLL / perplexity: response tokens only, per-token mean over the whole set."""

from __future__ import annotations

import math

import torch

from sftlab.data.schema import Conversation
from sftlab.models.scoring import PadCollator, reference_nll
from sftlab.templates.masking import tokenize_conversation


@torch.no_grad()
def heldout_response_nll(model, tokenizer, convs: list[Conversation], batch_size: int = 4,
                         max_length: int = 1024) -> dict[str, float]:
    """{"nll": mean per response token, "ppl": exp(nll), "tokens": count, "examples": count} over a held-out set
    (training's `train.loss.response_nll` is the per-batch sum behind the loss)."""
    examples = [e for e in (tokenize_conversation(tokenizer, c, "last", max_length, "truncate") for c in convs) if e]
    collate = PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[i:i + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        s, n = reference_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float(s)
        count += int(n)
    model.train(was_training)
    nll = total / max(count, 1)
    return {"nll": round(nll, 4), "ppl": round(math.exp(min(nll, 50)), 3), "tokens": count, "examples": len(examples)}
