"""transformers' Trainer with sftlab's loss: response tokens only, per-token normalised, fast path verified."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from sftlab.models.compile import compiler_error_summary, eager, is_compiler_error, uncompile_layers
from sftlab.train.callbacks import TokenCounter
from sftlab.train.dataset import LengthBucketSampler, SFTDataset
from sftlab.train.distributed import all_processes_agree
from sftlab.train.loss import RESPONSE_LOSS, fast_loss_matches, install_response_loss

log = logging.getLogger(__name__)


class SFTLabTrainer(Trainer):
    """Trainer whose loss is sum(response NLL) / (response tokens in the whole accumulated batch)."""

    def __init__(self, *args, counter: TokenCounter | None = None, fast_loss: bool = True,
                 compile_loss: bool | str = "auto", compiled_layers: list[torch.nn.Module] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counter = counter or TokenCounter()
        self.fast_loss = fast_loss
        self.compile_loss = compile_loss
        self.compiled_layers = list(compiled_layers or [])
        self._first_step_done = False
        self._fast_loss_checked = not fast_loss
        if fast_loss:  # before accelerate wraps the model: the fast loss then runs inside the wrappers' forward
            install_response_loss(self.model, compile=compile_loss)
        # Both losses divide by Trainer's num_items_in_batch: have it counted (over micro-batches and processes:
        # average_tokens_across_devices), and not divide again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    def _get_train_sampler(self, train_dataset=None):
        """`group_by_length`: sftlab's bucketing sampler (less padding than transformers' grouping), seeded per
        epoch so that a resumed run replays every epoch's order exactly."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, SFTDataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthBucketSampler(dataset.lengths, self.args.train_batch_size, seed=seed)
        return super()._get_train_sampler(train_dataset)

    def _check_fast_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        self._fast_loss_checked = True
        # Same precision as training: both paths see the same rows; bf16 needs a looser tolerance.
        low_precision = self.args.bf16 or self.args.fp16 or any(
            p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())
        with self.accelerator.autocast(), eager():  # a one-off check: no inference graph to compile
            ok = fast_loss_matches(model, inputs, rtol=1e-2 if low_precision else 1e-4)
        ok = all_processes_agree(ok, self.args.device)  # every process must take the same path
        if not ok:
            log.warning("fast response-only loss does not match the model's own loss for this architecture; "
                        "using the model's full logits instead")
        self.fast_loss = ok

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The first step compiles the layers; if the compiler fails (no C++ compiler, an unsupported op), say
        so once, go back to eager and redo the step (no gradient was accumulated before it)."""
        if self._first_step_done or not self.compiled_layers:
            return super().training_step(model, inputs, num_items_in_batch)
        counted = self.counter.snapshot()
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except Exception as e:
            if not is_compiler_error(e):
                raise
            log.warning("compiling the decoder layers failed (%s); training eagerly", compiler_error_summary(e))
            uncompile_layers(self.compiled_layers)
            self.compiled_layers = []
            model.zero_grad(set_to_none=True)
            self.counter.restore(counted)
            loss = super().training_step(model, inputs, num_items_in_batch)
        self._first_step_done = True
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's own compute_loss, with the fast path selected in the model's forward: the loss is
        sum(response NLL) / num_items_in_batch, and Trainer scales it for DDP's gradient averaging."""
        mask, labels = inputs["attention_mask"], inputs["labels"]
        if model.training:
            self.counter.tokens += int(mask.sum())
            self.counter.trained += int((labels[:, 1:] != -100).sum())
            self.counter.computed += mask.numel()
        if not self._fast_loss_checked:
            self._check_fast_loss(model, inputs)
        if self.fast_loss:
            inputs = {**inputs, RESPONSE_LOSS: True}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
