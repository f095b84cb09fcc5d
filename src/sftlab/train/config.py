"""Training config: one pydantic model, loaded from YAML, unknown keys rejected with a suggestion."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sftlab.data.loading import DataSpec
from sftlab.errors import ConfigError
from sftlab.yamlconfig import apply_overrides, read_yaml_mapping, regex_error

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class LoraSettings(BaseModel):
    """LoRA: W + (alpha/r)·BA on the target modules; the base weights stay frozen."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(16, ge=1, description="Rank of the update BA.")
    alpha: int = Field(32, ge=1, description="Scale numerator: the update is multiplied by alpha/r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", min_length=1, description="'all-linear' (every linear layer but the output head), a list of "
                                                "module names (q_proj, v_proj...) or one regular expression matched "
                                                "against full module names. Checked against the model before "
                                                "training.")
    train_template_tokens: bool = Field(
        False, description="Also train the embedding rows of the special tokens the chat template writes (its turn "
                           "markers), and so the tied output rows; saved in the adapter. A base model never saw "
                           "them: their rows are untrained, almost the same as hundreds of unused tokens', and "
                           "LoRA alone learns slowly to end a turn with them.")

    @field_validator("target_modules")
    @classmethod
    def _names_or_pattern(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not all(x.strip() for x in v):
            raise ValueError("module names may not be empty")
        if isinstance(v, str) and v != "all-linear" and (why := regex_error(v)):
            raise ValueError(f"{v!r} is not a valid regular expression ({why}); list plain names instead")
        return v


class TrainConfig(BaseModel):
    """Everything one SFT run needs. Defaults suit a small model on a CPU and run unchanged on a GPU."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("sft", description="Run name; the run folder defaults to runs/<name>.")
    model: str = Field(description="Packaged name (gemma-3-270m, smollm2-135m-instruct), HF folder, .gguf, hub id.")
    chat_template: str = Field("auto", description="auto: the model's own, else a named one (chatml, gemma).")
    data: list[DataSpec] = Field(min_length=1, description="Training sources, concatenated (a mix).")
    mask_mode: Literal["assistant", "last", "all"] = Field(
        "assistant", description="Loss on all assistant turns, the last one only, or every token.")
    max_length: int = Field(1024, ge=8, description="Longest tokenized example.")
    truncation: Literal["drop", "truncate"] = Field("drop", description="What to do with longer examples.")

    method: Literal["full", "lora"] = Field("lora", description="Full fine-tuning or LoRA.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (used when method is lora).")

    epochs: float = Field(1.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; overrides epochs when > 0 (-1: use epochs).")
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(None, gt=0, description="Default: 2e-4 for LoRA, 2e-5 for full.")
    lr_scheduler: str = Field("cosine", description="Any transformers scheduler name (cosine, linear, constant...).")
    optim: str = Field("adamw_torch", description="Any transformers optimizer name (adamw_torch, sgd, ...).")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of the optimizer steps spent warming up the "
                                                              "learning rate from 0.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay of the optimizer.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds weight init (LoRA), data order and dropout.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where it is fast (a GPU; a CPU with AVX512-BF16 or AMX), else fp32 "
                           "(fp16 on a GPU without bf16); fp32 master weights.")
    lora_base_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="dtype of the frozen base weights under LoRA (LoRA weights stay fp32); auto: bf16 when "
                            "training in bf16.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute activations in backward to save memory; auto: on, except for LoRA on a "
                            "CPU, where memory is plentiful and skipping it is measured to pay (README: Benchmarks).")
    group_by_length: bool = Field(True, description="Batch similar lengths together to waste less padding "
                                                    "(sftlab's length buckets, micro-batches in random order).")
    fast_loss: bool = Field(True, description="Compute logits only at response positions (checked against the "
                                              "model's own loss on the first batch).")
    attn_implementation: str | None = Field(
        "auto", description="Attention kernel passed to transformers (None: its default, SDPA; eager; "
                            "flash_attention_2); auto: eager when the layers are compiled on CPU, else the default.")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each decoder layer, falling back to eager if compiling fails; auto: on "
                            "for models of 100M parameters or more trained on CPU, off on GPUs.")
    compile_loss: bool | Literal["auto"] = Field(
        "auto", description="Fuse the chunked softmax of the response-only loss with torch.compile (eager if "
                            "compiling fails); auto: on CPU for vocabularies of 32k entries or more.")

    output_dir: str | None = Field(None, description="Run folder; default runs/<name>.")
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between two metrics.jsonl lines.")
    save_steps: int = Field(50, ge=1, description="Optimizer steps between two checkpoints (for --resume).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers transformers logs to: tensorboard (into <run>/tb), wandb, mlflow, trackio, "
                    "... (installed ones only), 'all' (every installed one) or 'none'.")

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, dict | str):
            v = [v]
        if not isinstance(v, list):
            return v  # pydantic reports what was expected
        return [{"path": x} if isinstance(x, str) else x for x in v]

    @field_validator("name")
    @classmethod
    def _name_is_not_a_path(cls, v: str) -> str:
        """The run folder is runs/<name>: a name with '/' or '..' would write anywhere on the disk."""
        if not RUN_NAME.fullmatch(v) or ".." in v:
            raise ValueError(f"a run name is a name, not a path: 1-100 letters, digits, '.', '_', '+', '-', starting "
                             f"with a letter or digit, no '..' (got {v!r}); set output_dir to choose the folder")
        return v

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_steps is -1 (train for `epochs`) or a positive number of optimizer steps, not 0")
        return v

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        from transformers.trainer_utils import SchedulerType

        return _one_of(v, [s.value for s in SchedulerType], "learning-rate scheduler")

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from transformers.training_args import OptimizerNames

        return _one_of(v, [o.value for o in OptimizerNames], "optimizer")

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, v: Any) -> Any:
        from transformers.integrations import get_available_reporting_integrations
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        names = [v] if isinstance(v, str) else v
        if not isinstance(names, list) or names == ["none"]:
            return [] if names == ["none"] else v  # pydantic reports a wrong type
        installed = get_available_reporting_integrations()
        if names == ["all"]:
            return installed
        for name in names:
            _one_of(name, list(INTEGRATION_TO_CALLBACK), "report_to tracker")
            if name not in installed:
                raise ValueError(f"report_to '{name}': not installed here (pip install {name}); installed: "
                                 f"{', '.join(installed) or 'none'}")
        return names

    @property
    def use_gradient_checkpointing(self) -> bool:
        if self.gradient_checkpointing == "auto":  # on a GPU, LoRA without it: 1.08x the speed at 5.3x the memory
            import torch

            return self.method == "full" or torch.cuda.is_available()
        return bool(self.gradient_checkpointing)

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.method == "lora" else 2e-5)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def _one_of(value: str, valid: list[str], what: str) -> str:
    """`value` if it is one of `valid`, else a ValueError listing them (closest first)."""
    if value in valid:
        return value
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"unknown {what} '{value}'; {hint}valid: {', '.join(valid)}")


def _explain(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            fields = _fields_at(err["loc"][:-1])
            close = difflib.get_close_matches(key, fields, n=1)
            msg = f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
        lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid config\n" + "\n".join(lines)


def _fields_at(loc: tuple) -> list[str]:
    model: Any = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields.get(part)
        sub = getattr(ann, "annotation", None) if ann else None
        args = getattr(sub, "__args__", ())
        model = next((a for a in (sub, *args) if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return list(model.model_fields)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config; `overrides` (from the CLI's --set, keys may be dotted: lora.r) win over the file."""
    raw = apply_overrides(read_yaml_mapping(path, "config"), overrides or {})
    return make_config(raw, source=str(path))


def make_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None
