"""Several processes, one run: which process writes, and what all processes must agree on.

accelerate (DDP, FSDP, DeepSpeed) starts one copy of `sftlab train` per process. Process 0 alone prepares and
writes the run folder, the logs, the progress bar and `final/`; the others wait for it and take its decisions (the
checkpoint to resume from, whether the fast loss is used) instead of making their own. On one process every helper
here is a plain call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from rich.console import Console
from rich.markup import escape
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from sftlab.errors import ConfigError, SftlabError
from sftlab.models.loading import default_device


def process_state() -> PartialState:
    """The processes accelerate's launcher started (one when sftlab was not launched by it), on the device
    Trainer will use: on a CPU-only machine accelerate needs `cpu=True` to join the launched processes (gloo)."""
    return PartialState(cpu=default_device() == "cpu")


def is_main_process() -> bool:
    return process_state().is_main_process


def _several() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def main_process_console(console: Console) -> Console:
    """`console` on process 0, a silent one elsewhere: one progress bar and one set of messages per run."""
    return console if is_main_process() else Console(quiet=True)


def all_processes_agree(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` is true on every process (a decision all of them must take the same way)."""
    if not _several():
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())


def sum_over_processes(values: list[int], device: torch.device | str = "cpu") -> list[int]:
    """Element-wise sum of `values` over all processes (counts each process keeps of its own share)."""
    if not _several():
        return list(values)
    t = torch.tensor(values, dtype=torch.long, device=device)
    torch.distributed.all_reduce(t)
    return [int(x) for x in t.tolist()]


def on_main_process(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """fn(*args, **kwargs) run by process 0 alone; every process gets its result, or raises its error (so no
    process is left waiting for one that failed)."""
    if not _several():
        return fn(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    box: list = [None]
    error: Exception | None = None
    if is_main_process():
        try:
            box = [("ok", fn(*args, **kwargs))]
        except Exception as e:  # handed to the other processes, raised again below
            error = e
            box = [("error", e if isinstance(e, SftlabError) else RuntimeError(f"process 0 failed: {e}"))]
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise error or value
    return value


def end_processes() -> None:
    """Waits for every process, then closes the process group: left to interpreter exit, its gloo threads can
    abort a process that has finished its work ("terminate called without an active exception")."""
    if _several():
        torch.distributed.barrier()
        process_state().destroy_process_group()


def warn_if_sharding_ignored(trainer, console: Console) -> None:
    """accelerate turns an FSDP config into FSDP only on GPU-like devices: on CPU processes it runs DDP (every
    process holds the whole model) without a word."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        console.print("[yellow]warning: the accelerate config asks for FSDP, but accelerate runs these (CPU) processes "
                      "as DDP: every process holds the whole model[/]", soft_wrap=True)


def shared_checkpoint(path: Path | None) -> Path | None:
    """The checkpoint process 0 chose must be readable here too: on several machines the run folder has to be on
    a filesystem they share."""
    if path is not None and not Path(path).is_dir():
        raise ConfigError(f"--resume: process 0 resumes from {path}, which this machine cannot read; put output_dir "
                          "on a filesystem every machine shares")
    return path


class BatchLayout(TrainerCallback, ExportableState):
    """Saves in each checkpoint's trainer_state.json how a step's global batch was made (processes x grad_accum x
    batch_size), so that a resume on another number of processes can be checked (Trainer records none of it)."""

    def __init__(self, processes: int = 1, grad_accum: int = 1, batch_size: int = 1) -> None:
        self.layout = {"processes": processes, "grad_accum": grad_accum, "batch_size": batch_size}

    def state(self) -> dict:
        return {"args": dict(self.layout), "attributes": {}}

    @staticmethod
    def saved(checkpoint: Path, trainer_state: dict) -> dict:
        """The layout a checkpoint was saved with; for one saved without it, the processes are counted from the
        RNG files Trainer writes (one per process) and the rest is unknown (None)."""
        saved = (trainer_state.get("stateful_callbacks") or {}).get(BatchLayout.__name__)
        if isinstance(saved, dict) and isinstance(saved.get("args"), dict):
            return {"processes": 1, "grad_accum": None, "batch_size": None, **saved["args"]}
        return {"processes": max(1, len(list(checkpoint.glob("rng_state_*.pth")))), "grad_accum": None,
                "batch_size": trainer_state.get("train_batch_size")}


def resume_layout_problem(checkpoint: Path, saved: dict, now: dict) -> tuple[str | None, str | None]:
    """(error, warning) for resuming `checkpoint`, saved with layout `saved`, on layout `now`. Another number of
    processes is accepted for DDP checkpoints (whole weights and optimizer) when the global batch is unchanged:
    the steps then take the same micro-batches (see Scaling out); sharded ones (FSDP, DeepSpeed) need the same."""
    was, now_n = saved["processes"], now["processes"]
    if was == now_n:
        return None, None
    where = f"--resume: {checkpoint} was saved by {was} process{'es' * (was > 1)}, this run has {now_n}"
    if any(checkpoint.glob("pytorch_model_fsdp_*")) or any(checkpoint.glob("global_step*")):
        return f"{where}: its weights and optimizer state are sharded (FSDP/DeepSpeed), one shard per process; " \
               f"resume with --num_processes {was}", None
    if saved["grad_accum"] is None or saved["batch_size"] is None:
        return f"{where} and it does not record its grad_accum (saved by an older sftlab): resume with " \
               f"--num_processes {was}", None
    global_batch = was * saved["grad_accum"] * saved["batch_size"]
    if global_batch != now_n * now["grad_accum"] * now["batch_size"]:
        fit = global_batch // (now_n * now["batch_size"])
        hint = f" or grad_accum: {fit}" if fit * now_n * now["batch_size"] == global_batch else ""
        return f"{where}: its steps took {global_batch} examples ({was} x grad_accum {saved['grad_accum']} x " \
               f"batch_size {saved['batch_size']}), this run's would take {now_n} x {now['grad_accum']} x " \
               f"{now['batch_size']}, so the resumed steps would train on other data; resume with " \
               f"--num_processes {was}{hint}", None
    return None, f"{where}, same global batch: the same steps follow; random state (dropout) restarts per process"


def check_resume_layout(checkpoint: Path | None, trainer_state: dict, now: dict, console: Console) -> None:
    """Refuse (ConfigError) a resume whose steps would differ from the run's (see resume_layout_problem)."""
    if checkpoint is None:
        return
    error, warning = resume_layout_problem(checkpoint, BatchLayout.saved(checkpoint, trainer_state), now)
    if error:
        raise ConfigError(error)
    if warning:
        console.print(f"[yellow]warning: {escape(warning)}[/]", soft_wrap=True)


def consolidated_state_dict(trainer) -> dict | None:
    """The full weights of a sharded model (FSDP, DeepSpeed ZeRO-3), gathered from every process onto process 0,
    so that `final/` is one plain checkpoint; None where each process already holds them all. Every process must
    call it (a collective)."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def unwrapped(trainer) -> torch.nn.Module:
    """The model without DDP/FSDP/DeepSpeed wrappers (PEFT stays): what `save_pretrained` is called on."""
    return trainer.accelerator.unwrap_model(trainer.model_wrapped, keep_torch_compile=False)
