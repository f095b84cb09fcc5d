"""Batched generation with transformers: chat template, left padding, KV cache, template stop tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from sftlab.data.schema import Conversation
from sftlab.generation.base import (
    GENERATION_CHUNK,
    GENERATION_TOKENS,
    Generation,
    Messages,
    SamplingParams,
    as_messages,
)
from sftlab.models.causal_lm import stop_ids_of
from sftlab.models.scoring import contiguous_head_input, left_pad
from sftlab.templates.masking import prompt_ids


def length_batches(lengths: list[int], max_prompts: int, max_tokens: int, new_tokens: int) -> list[list[int]]:
    """Prompt indices, shortest first, in batches of at most `max_prompts` prompts whose padded rows (longest
    prompt + new tokens, one per prompt) hold at most `max_tokens` tokens; a prompt longer than that goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:  # ascending: the prompt being added is the batch's longest
        last = batches[-1] if batches else None
        if last and len(last) < max_prompts and (len(last) + 1) * (lengths[i] + new_tokens) <= max_tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


def batch_seed(seed: int, rows: list[list[int]]) -> int:
    """A batch's sampling seed, from the run's seed and the batch's prompts: the same batch samples the same again (a
    resumed run), and batches of other prompts draw other random numbers (a seed by position in the call gave
    every call's first batch the same draws, so curation chunks sampled in step)."""
    digest = hashlib.sha256(json.dumps([seed, rows]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class StopWhen(StoppingCriteria):
    """Ends generation early when asked (the client went away)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class TransformersGenerator:
    """Generate replies for chat prompts in batches of similar length (shortest first) so padding stays small:
    at most `batch_size` prompts and `max_batch_tokens` padded tokens each, rows that ended leaving the batch every
    `chunk_tokens` new tokens; outputs come back in prompt order."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8,
                 stop_ids: list[int] | None = None, model_id: str | None = None,
                 max_batch_tokens: int = GENERATION_TOKENS, chunk_tokens: int = GENERATION_CHUNK) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_batch_tokens, self.chunk_tokens = max_batch_tokens, chunk_tokens
        self.stop_ids = stop_ids or stop_ids_of(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.model_id = model_id or str(getattr(model, "name_or_path", "") or model.config.name_or_path)
        self.context_window = getattr(model.config, "max_position_embeddings", None)
        contiguous_head_input(model)

    def encode(self, prompt) -> list[int]:
        """The prompt's ids as training saw them (a Conversation keeps its tools); message text never becomes special
        tokens (generate, serve, chat)."""
        return prompt_ids(self.tokenizer, prompt if isinstance(prompt, Conversation) else as_messages(prompt))

    @torch.no_grad()
    def generate(self, prompts: list[Messages | Conversation], params: SamplingParams | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[list[Generation]]:
        """`should_stop`: checked every step; once true, every reply ends where it is (unfinished)."""
        params = params or SamplingParams()
        stopping = StoppingCriteriaList([StopWhen(should_stop)]) if should_stop else None
        encoded = [self.encode(p) for p in prompts]
        results: list[list[Generation]] = [[] for _ in encoded]
        device = next(self.model.parameters()).device
        for idx in length_batches([len(e) for e in encoded], self.batch_size, self.max_batch_tokens,
                                  params.max_new_tokens):
            ids, mask = left_pad([encoded[i] for i in idx], self.pad_id)  # every prompt ends where generation starts
            if params.temperature > 0:
                torch.manual_seed(batch_seed(params.seed, [encoded[i] for i in idx]))
            rows = self._generate_rows(ids.to(device), mask.to(device), params, stopping)
            for row, i in enumerate(idx):
                results[i].extend(self._decode(new_ids) for new_ids in rows[row * params.n:(row + 1) * params.n])
        return results

    def _generate_rows(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams,
                       stopping: StoppingCriteriaList | None) -> list[list[int]]:
        """Each row's new token ids (prompt by prompt, `params.n` each), `chunk_tokens` at a time with the KV cache
        carried over: between chunks the rows that ended (a stop token, or the budget) leave the batch."""
        sample = params.temperature > 0
        options = {"do_sample": sample, "temperature": params.temperature if sample else None,
                   "top_p": params.top_p if sample else None, "top_k": None, "eos_token_id": self.stop_ids,
                   "pad_token_id": self.pad_id, "stopping_criteria": stopping, "return_dict_in_generate": True}
        stops = torch.tensor(self.stop_ids, device=ids.device)
        start, rows, copies, cache = ids.shape[1], torch.arange(ids.shape[0] * params.n), params.n, None
        done: dict[int, list[int]] = {}
        while True:
            step = min(self.chunk_tokens, params.max_new_tokens - (ids.shape[1] - start))
            out = self.model.generate(input_ids=ids, attention_mask=mask, cache=cache, max_new_tokens=step,
                                      num_return_sequences=copies, **options)
            new = out.sequences[:, ids.shape[1]:]  # fewer than `step` columns: every row ended (or should_stop)
            ended = (torch.isin(new, stops).any(dim=1) | (new.shape[1] < step)
                     | (out.sequences.shape[1] - start >= params.max_new_tokens)).cpu()
            done.update(zip(rows[ended].tolist(), out.sequences[ended.to(ids.device), start:].tolist(), strict=True))
            keep = (~ended).nonzero().flatten()
            if not len(keep):
                return [done[r] for r in range(len(done))]
            rows, keep = rows[keep], keep.to(ids.device)
            mask = torch.cat([mask.repeat_interleave(copies, dim=0), mask.new_ones(len(new), new.shape[1])], dim=1)
            ids, mask, cache, copies = out.sequences[keep], mask[keep], out.cache, 1
            cache.batch_select_indices(keep)

    def _decode(self, new_ids: list[int]) -> Generation:
        finished = False
        for k, t in enumerate(new_ids):
            if t in self.stop_ids:
                new_ids, finished = new_ids[:k], True
                break
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return Generation(text=text.strip(), n_tokens=len(new_ids), finished=finished)

