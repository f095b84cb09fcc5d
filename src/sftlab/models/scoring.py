"""Per-example mean token NLL under a causal LM: the primitive behind perplexity and IFD quality scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


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
