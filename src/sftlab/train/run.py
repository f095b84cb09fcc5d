"""One SFT run: resolve model, load data, verify masks, train (full or LoRA), save in standard HF format.

Run folder layout (see README): config.yaml, data_stats.json, metrics.jsonl, tb/, checkpoints/, final/.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.markup import escape
from transformers import GenerationConfig, PrinterCallback, TrainingArguments, set_seed

from sftlab.artifacts.layout import RunFolder
from sftlab.artifacts.records import DataStats, TrainMetrics, write_record
from sftlab.data.loading import load_conversations
from sftlab.data.writers import write_text
from sftlab.errors import ConfigError
from sftlab.fsutil import MARKER, OutputLock, marker_kind, remove_owned_folder, write_marker
from sftlab.models.causal_lm import load_causal_lm
from sftlab.models.compile import compile_layers, should_compile_layers
from sftlab.models.loading import default_device
from sftlab.models.lora import attach_lora, check_lora_targets, set_adapter_input_casts
from sftlab.templates.chat_templates import template_token_ids
from sftlab.templates.masking import stop_token_ids
from sftlab.train.args import precision_flags, training_arguments
from sftlab.train.callbacks import (
    MetricsLogger,
    ReleaseFreedMemory,
    RichProgress,
    TokenCounter,
    TokenCounterState,
    log_tensorboard_to,
    truncate_metrics,
)
from sftlab.train.checkpoints import ResumePoint, find_resume_point
from sftlab.train.config import TrainConfig
from sftlab.train.dataset import PadCollator, SFTDataset, tokenize_all
from sftlab.train.distributed import (
    BatchLayout,
    check_resume_layout,
    consolidated_state_dict,
    is_main_process,
    main_process_console,
    on_main_process,
    shared_checkpoint,
    unwrapped,
    warn_if_sharding_ignored,
)
from sftlab.train.trainer import SFTLabTrainer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    base_model: str
    metrics: dict[str, Any]


def prepare_data(cfg: TrainConfig, tokenizer) -> tuple[SFTDataset, dict[str, Any]]:
    """Load every source, tokenize with verified masks, and describe what was kept and why."""
    convs, reports = [], []
    for spec in cfg.data:
        c, rep = load_conversations(spec)
        convs += c
        reports.append(rep.to_dict())
    examples, stats = tokenize_all(tokenizer, convs, cfg.mask_mode, cfg.max_length, cfg.truncation)
    if not examples:
        raise ConfigError("no training example left after loading and tokenization; see data_stats.json")
    return SFTDataset(examples), {"sources": reports, "tokenized": stats.to_dict()}


def _inputs(cfg: TrainConfig) -> list[str]:
    """Local paths a run reads: --overwrite must never remove the folder holding one of them."""
    return [cfg.model, *(spec.path for spec in cfg.data)]


def _is_legacy_run(run_dir: Path) -> bool:
    """A run folder written before runs had a marker: config.yaml beside Trainer checkpoints."""
    return (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir()


def _never_trained(run_dir: Path) -> bool:
    """A run folder of ours that a run left before its first step (a wrong model path, a bad record): only its
    marker, config and data stats. A rerun starts in it without --overwrite; there is nothing to resume."""
    files = RunFolder(run_dir)
    early = {files.marker.name, files.config.name, files.data_stats.name}
    return marker_kind(run_dir) == "train" and all(p.name in early and p.is_file() for p in run_dir.iterdir())


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool, lock: OutputLock) -> Path:
    """Lock the run folder, then create (or reuse, or replace) it by the rules of sftlab.fsutil and mark it as a
    run."""
    run_dir = cfg.run_dir
    lock.acquire()  # before anything is removed: a second run into the same folder stops here
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the run folder and --overwrite deletes it: pass one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a folder; choose another output_dir")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not _never_trained(run_dir):
        if resume:
            if marker_kind(run_dir) != "train" and not _is_legacy_run(run_dir):
                raise ConfigError(f"{run_dir} is not an sftlab run folder (no {MARKER}): --resume would write the "
                                  "run's files into it; choose another output_dir")
        elif overwrite:
            remove_owned_folder(run_dir, "train", keep=_inputs(cfg))
        else:
            raise ConfigError(f"run folder {run_dir} already exists; pass --resume to continue it or --overwrite "
                              "to start again")
    run_dir.mkdir(parents=True, exist_ok=True)
    if marker_kind(run_dir) != "train":
        write_marker(run_dir, "train")
    return run_dir


def resume_point(checkpoints: Path, console: Console) -> ResumePoint:
    """The newest complete checkpoint, saying which one is used and which newer ones were skipped, and why."""
    point = find_resume_point(checkpoints)
    for path, why in point.skipped:
        console.print(f"[yellow]--resume: skipped {escape(str(path))}: {escape(why)}[/]", soft_wrap=True)
    if point.path is None:
        console.print("[yellow]--resume: no complete checkpoint found, starting from step 0[/]")
    else:
        console.print(f"--resume: resuming from {escape(str(point.path))} (step {point.step})", soft_wrap=True)
    return point


def restore_progress(point: ResumePoint, run_dir: Path, counter: TokenCounter) -> None:
    """Bring the run folder back to the checkpoint: the metrics log ends at its step, the token counts go on."""
    truncate_metrics(run_dir / "metrics.jsonl", point.step)
    counts = TokenCounterState.saved_counts(point.trainer_state)
    if counts:
        counter.restore(counts)
    elif point.path is not None:
        log.warning("%s holds no token counts (saved by an older sftlab): tokens_seen restarts from 0", point.path)


@dataclass
class TokenizerSetup:
    base_path: str  # the resolved model folder
    tokenizer: Any
    template: str  # the chat template's name
    added_tokens: bool  # the template added special tokens: the embeddings need new rows


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, console: Console | None = None,
          callbacks: list | None = None) -> TrainResult:
    """One SFT run; process 0 holds the run folder's lock (fsutil.OutputLock) until it ends or fails."""
    lock = OutputLock(cfg.run_dir)
    try:
        return _train(cfg, resume, overwrite, main_process_console(console or Console(stderr=True)), callbacks, lock)
    finally:
        lock.release()


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, console: Console, callbacks: list | None,
           lock: OutputLock) -> TrainResult:
    """One SFT run, read top to bottom: run folder, model and tokenizer, data, precision/compile/attention, LoRA,
    trainer, then train and save."""
    run_dir = on_main_process(prepare_run_dir, cfg, resume, overwrite, lock)  # process 0 writes the run folder
    set_seed(cfg.seed)
    flags = precision_flags(cfg.precision)
    if cfg.precision == "auto" and not any(flags.values()):
        console.print("precision: fp32 (no fast bf16 here: the CPU has neither AVX512-BF16 nor AMX)")
    bf16_base = lora_base_in_bf16(cfg, flags)
    model, tok = setup_model(cfg, bf16_base)
    dataset = setup_data(cfg, tok, run_dir, console)
    device_type = default_device()  # where Trainer will put the model
    compile_now, attention = setup_compile_and_attention(cfg, model, device_type)
    model = setup_lora(cfg, model, tok, bf16_base, flags)
    compiled = compile_layers(model) if compile_now else []
    args = training_arguments(cfg, run_dir, device_type, flags)
    counter = TokenCounter()
    layout = BatchLayout(args.world_size, args.gradient_accumulation_steps, args.per_device_train_batch_size)
    trainer = setup_trainer(cfg, model, tok.tokenizer, dataset, args, counter, compiled,
                            [MetricsLogger(run_dir / "metrics.jsonl", counter), TokenCounterState(counter), layout,
                             RichProgress(counter, console), *([ReleaseFreedMemory()] if device_type == "cpu" else []),
                             *(callbacks or [])])
    log_tensorboard_to(trainer, RunFolder(run_dir).tensorboard)
    warn_if_sharding_ignored(trainer, console)
    point = on_main_process(resume_point, Path(args.output_dir), console) if resume else ResumePoint()
    shared_checkpoint(point.path)  # every process resumes from process 0's choice
    check_resume_layout(point.path, point.trainer_state, layout.layout, console)
    restore_progress(point, run_dir, counter)
    out = trainer.train(resume_from_checkpoint=str(point.path) if point.path else None)

    final_dir = run_dir / "final"
    on_main_process(save_final, unwrapped(trainer), tok.tokenizer, final_dir, tok.base_path, cfg, tok.template,
                    state_dict=consolidated_state_dict(trainer))
    metrics = {**out.metrics, "tokens_seen": counter.tokens, "trained_tokens_seen": counter.trained,
               "padding_share": round(counter.padding_share(), 4),
               "fast_loss": trainer.fast_loss, "compiled_layers": len(trainer.compiled_layers),
               "attn_implementation": attention,
               "global_step": trainer.state.global_step,
               "train_loss": whole_run_train_loss(out.training_loss, trainer.state, point.step)}
    if is_main_process():
        write_record(RunFolder(run_dir).train_metrics, TrainMetrics(**metrics))
    console.print(f"[green]saved[/] {cfg.method} result to {final_dir}")
    return TrainResult(run_dir, final_dir, tok.base_path, metrics)


def whole_run_train_loss(call_mean: float, state, resumed_at: int) -> float:
    """The mean loss over every step of the run. Trainer's `train_loss` averages the steps of this call only, so a
    run resumed at step `resumed_at` would report the mean of the later steps alone; the steps before it count with
    the losses logged for them (in the checkpoint's log history), as in the uninterrupted run."""
    if not resumed_at:
        return call_mean
    total, steps, prev = 0.0, 0, 0
    for entry in state.log_history:
        step = entry.get("step", 0)
        if "loss" in entry and prev < step <= resumed_at:
            total, steps, prev = total + entry["loss"] * (step - prev), steps + step - prev, step
    done = state.global_step - resumed_at
    return (total + call_mean * done) / max(steps + done, 1)


def setup_data(cfg: TrainConfig, tok: TokenizerSetup, run_dir: Path, console: Console) -> SFTDataset:
    """Data step: tokenize every source with verified masks; keep the config and data stats in the run folder."""
    dataset, data_stats = prepare_data(cfg, tok.tokenizer)
    data_stats["chat_template"] = tok.template
    tok_stats = data_stats["tokenized"]
    console.print(f"[bold]data[/]: {tok_stats['examples']} examples, {tok_stats['tokens']} tokens "
                  f"({tok_stats['trained_tokens']} trained), dropped {sum(tok_stats['dropped'].values())}, "
                  f"template {tok.template}")
    if is_main_process():
        write_text(RunFolder(run_dir).config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        write_record(RunFolder(run_dir).data_stats, DataStats(**data_stats))
    return dataset


def lora_base_in_bf16(cfg: TrainConfig, flags: dict[str, bool]) -> bool:
    """LoRA under bf16: the frozen base is only ever multiplied in bf16, so it is loaded that way (half the memory,
    no fp32 copy at any point); PEFT keeps the adapter weights in fp32 (autocast_adapter_dtype)."""
    return cfg.method == "lora" and (cfg.lora_base_dtype == "bf16" or (cfg.lora_base_dtype == "auto"
                                                                       and flags["bf16"]))


def setup_model(cfg: TrainConfig, bf16_base: bool) -> tuple[torch.nn.Module, TokenizerSetup]:
    """Model step: the base weights in the dtype training keeps them in, with the configured attention kernel, and
    its tokenizer with a chat template and a pad token."""
    lm = load_causal_lm(cfg.model, training=True, chat_template=cfg.chat_template,
                        dtype=torch.bfloat16 if bf16_base else torch.float32,
                        attn_implementation=None if cfg.attn_implementation == "auto" else cfg.attn_implementation)
    return lm.model, TokenizerSetup(lm.path, lm.tokenizer, lm.template, lm.added_tokens)


def setup_compile_and_attention(cfg: TrainConfig, model: torch.nn.Module, device_type: str) -> tuple[bool, str]:
    """Precision/compile/attention step: whether to compile the decoder layers, and the attention kernel used."""
    compile_now = should_compile_layers(cfg.compile, model, device_type)
    if cfg.attn_implementation == "auto" and compile_now and device_type == "cpu":
        model.set_attn_implementation("eager")  # compiled, it beats CPU SDPA's flash kernel (see config)
    return compile_now, model.config._attn_implementation


def setup_lora(cfg: TrainConfig, model: torch.nn.Module, tok: TokenizerSetup, bf16_base: bool,
               flags: dict[str, bool]) -> torch.nn.Module:
    """LoRA step (new-token rows and gradient checkpointing apply to full fine-tuning too): the model to train."""
    if tok.added_tokens:
        model.resize_token_embeddings(len(tok.tokenizer))
    if cfg.use_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "lora":
        check_lora_targets(model, cfg.lora.target_modules, cfg.model)
        rows = set(_added_ids(tok.tokenizer)) if tok.added_tokens else set()
        if cfg.lora.train_template_tokens:
            rows |= set(template_token_ids(tok.tokenizer))
        model = attach_lora(model, cfg.lora, new_token_ids=sorted(rows))
        if bf16_base:
            freeze_base_in(model, torch.bfloat16)  # e.g. rows of new tokens: anything frozen not yet bf16
            if flags["bf16"]:  # autocast decides the matmul dtype; without it PEFT's cast is needed
                set_adapter_input_casts(model, False)
    return model


def setup_trainer(cfg: TrainConfig, model: torch.nn.Module, tokenizer, dataset: SFTDataset,
                  args: TrainingArguments, counter: TokenCounter, compiled: list, callbacks: list) -> SFTLabTrainer:
    """Trainer step: sftlab's loss, collator and callbacks; the rich progress and metrics.jsonl replace prints."""
    trainer = SFTLabTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=PadCollator(tokenizer.pad_token_id), counter=counter, fast_loss=cfg.fast_loss,
        compile_loss=cfg.compile_loss, compiled_layers=compiled, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


def freeze_base_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the frozen (non-LoRA) weights in `dtype`: under bf16 autocast they would be cast to bf16 at every
    matmul anyway, so this halves their memory and removes the casts; trainable weights stay fp32."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)


def _added_ids(tokenizer) -> list[int]:
    return sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special and i >= 0)


def save_final(model, tokenizer, final_dir: Path, base_path: str, cfg: TrainConfig, template: str,
               state_dict: dict | None = None) -> None:
    """Standard HF artefacts: a PEFT adapter or a full model, the tokenizer with its chat template, and a
    generation config whose EOS list includes the end-of-turn token, so plain `generate` stops."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = True  # off for gradient checkpointing; saved off, every generate() ran without a KV cache
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    stops = stop_token_ids(tokenizer)
    gen = GenerationConfig.from_model_config(base.config)
    gen.eos_token_id = stops
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(tmp)
    (tmp / "sftlab.json").write_text(json.dumps(
        {"base_model": base_path, "model_spec": cfg.model, "method": cfg.method, "chat_template": template,
         "stop_token_ids": stops}, indent=2))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    tmp.rename(final_dir)


__all__ = ["train", "TrainResult"]
