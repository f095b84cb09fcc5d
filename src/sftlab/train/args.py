"""How a TrainConfig becomes transformers' TrainingArguments: precision flags and a warmup given as a ratio."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from sftlab.models.loading import fast_bf16
from sftlab.train.config import TrainConfig


def precision_flags(precision: str) -> dict[str, bool]:
    """bf16 autocast where it is fast (a CPU with AVX512-BF16/AMX multiplies bf16 ~2-4x faster than fp32; one
    without emulates it, 4x slower), master weights fp32."""
    if precision == "auto" and torch.cuda.is_available():
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif precision == "auto":
        precision = "bf16" if fast_bf16("cpu") else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """TrainingArguments with the warmup as a share of the run: transformers 5 takes only `warmup_steps`, read as a
    ratio below 1 and as a step count from 1 on (so a ratio of 1.0 would mean one step)."""

    warmup_ratio: float = field(default=0.0, metadata={"help": "Share of the optimizer steps spent warming up."})

    def get_warmup_steps(self, num_training_steps: int) -> int:
        return math.ceil(num_training_steps * self.warmup_ratio)


def training_arguments(cfg: TrainConfig, run_dir: Path, device_type: str,
                       flags: dict[str, bool]) -> SFTTrainingArguments:
    """Every Trainer setting of a run: checkpoints under the run folder, sftlab's own logging and progress."""
    return SFTTrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        optim=cfg.optim,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device_type == "cpu",
        report_to=cfg.report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        dataloader_num_workers=0,
        **flags,
    )
