"""Response-only loss: the mean NLL of response tokens over the whole (accumulated) batch.

Normalisation: every optimizer step minimises  sum_{response tokens t} -log p(t) / N,  where N counts the
response tokens of *all* micro-batches of that step (Trainer passes it as `num_items_in_batch`). Long and
short responses weigh per token, not per sequence, and gradient accumulation gives the same gradient as
one big batch.

The fast path runs the decoder once, then applies the output layer only at response positions, in chunks:
with a 262k vocabulary the full-sequence logits tensor is the largest cost of a small model, and prompt
positions never need it. It is checked against the model's own loss before it is trusted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from sftlab.templates.masking import IGNORE_INDEX


def unwrap_causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers CausalLM inside PEFT/accelerate wrappers."""
    while hasattr(model, "module"):  # DDP / accelerate
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def response_nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of NLL over response tokens, number of response tokens), logits only where needed."""
    lm = unwrap_causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    y = target[keep]
    head = lm.get_output_embeddings()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk_size):
        logits = head(h[i:i + chunk_size]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        total = total + F.cross_entropy(logits, y[i:i + chunk_size], reduction="sum")
    return total, keep.sum()


def reference_nll(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantity through the model's own forward and full logits (the slow, obvious way)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, (target != IGNORE_INDEX).sum()


def fast_loss_matches(model: torch.nn.Module, batch: dict[str, torch.Tensor], rtol: float = 1e-3) -> bool:
    """True when the fast path reproduces the model's own loss on `batch` (it may not, e.g. for models
    that scale logits in ways we do not know about). Runs in eval mode: no dropout, so it draws nothing from
    the RNG and a resumed run stays bit-identical to an uninterrupted one."""
    was_training = model.training
    model.eval()
    try:
        return _fast_loss_matches(model, batch, rtol)
    finally:
        model.train(was_training)


def _fast_loss_matches(model: torch.nn.Module, batch: dict[str, torch.Tensor], rtol: float) -> bool:
    with torch.no_grad():
        try:
            fast, n = response_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        except Exception:
            return False
        ref, m = reference_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return bool(n == m and torch.isclose(fast, ref, rtol=rtol, atol=1e-3 * max(1, int(n))))
