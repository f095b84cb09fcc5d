"""NLL under a causal LM: per example (perplexity and IFD quality scores), summed over padded batches (held-out
response NLL, the training loss's reference); next-token probabilities for judges."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sftlab.templates.masking import IGNORE_INDEX

IGNORE = IGNORE_INDEX


@torch.no_grad()
def per_example_nll(model, examples: list[tuple[list[int], list[int]]], pad_id: int = 0,
                    batch_size: int = 8) -> list[float | None]:
    """Mean NLL over the labelled tokens of each (input_ids, labels) pair; None where nothing is labelled.
    Batches are length-sorted so padding stays small; results come back in input order."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out: list[float | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(examples[i][0]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):
            x, y = examples[i]
            ids[row, :len(x)] = torch.tensor(x)
            labels[row, :len(y)] = torch.tensor(y)
            mask[row, :len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target = labels[:, 1:].to(device)
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        counts = (target != IGNORE).sum(1)
        sums = nll.sum(1)
        for row, i in enumerate(idx):
            out[i] = float(sums[row] / counts[row]) if counts[row] > 0 else None
    model.train(was_training)
    return out


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every row ending at the last position: where the next token is read."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, longest - len(r):] = torch.tensor(r)
        mask[j, longest - len(r):] = 1
    return ids, mask


def single_token_ids(tokenizer, texts: list[str], what: str) -> list[int]:
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    if any(len(x) != 1 for x in ids):
        raise ValueError(f"{what} needs a tokenizer with one token for each of {texts}")
    return [x[0] for x in ids]


def contiguous_head_input(model) -> None:
    """Hand the output head a contiguous input. generate() feeds it a slice (the last position of each prompt);
    with frozen weights (a PEFT model, a merged adapter) PyTorch's CPU matmul then copies the whole head weight
    once per row: 12.8 s instead of 36 ms for gemma-3's 262k-token head at batch 16, about half of all generation
    time in the demo's evaluation."""
    get_head = getattr(model, "get_output_embeddings", None)  # any model with generate() may be served
    head = get_head() if get_head else None
    if head is None or getattr(head, "_sftlab_contiguous_input", False):
        return
    head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    head._sftlab_contiguous_input = True


@torch.no_grad()
def next_token_probs(model, rows: list[list[int]], candidates: list[int], pad_id: int = 0,
                     batch_size: int = 8) -> torch.Tensor:
    """[len(rows), len(candidates)]: the model's next-token distribution after each row, renormalised over the
    candidate tokens (a rating digit, an "A"/"B" verdict). One forward pass per row, no generation."""
    device = next(model.parameters()).device
    contiguous_head_input(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # batches of similar lengths: less padding
    out = torch.empty(len(rows), len(candidates))
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([rows[i] for i in idx], pad_id)  # the last position is every row's next token
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1]
        out[idx] = torch.softmax(logits[:, candidates].float(), dim=-1).cpu()
    return out


@dataclass
class PadCollator:
    """Right-pad to the longest sequence of the batch; padding never carries loss."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            attention[i, :k] = 1
        labels[:, 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def reference_nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, token count) of the labelled tokens through the model's own forward and full logits: the slow,
    obvious way, the reference for training's fast loss and the held-out response NLL of evaluation."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, (target != IGNORE_INDEX).sum()
