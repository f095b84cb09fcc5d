"""Correctness under data parallelism, on this CPU: real processes started by `accelerate launch` (torchrun), talking
over gloo, training the tiny random model in fp32. The same global batches must give the same run whatever the
number of processes or machines: 2 processes x accumulation 1 == 1 process x accumulation 2; 2 simulated machines ==
2 processes on one; the fused loss gives the model's own gradients under DDP and FSDP2; FSDP full fine-tuning
checkpoints, resumes in a fresh launch and writes a plain transformers checkpoint; LoRA under FSDP equals DDP and its
adapter loads with PEFT; a DDP run resumes on another number of processes only with the same global batch;
DeepSpeed ZeRO-2/3 (when installed) match DDP and one process.

This file is also the worker the launched processes run (`python tests/test_distributed.py grad|train ...`)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sftlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "accelerate"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
STEPS = 4  # 16 examples = 8 micro-batches of 2 = 4 optimizer steps of 2 micro-batches

pytestmark = pytest.mark.slow  # 1.5-2.5 min: every launch starts two Python processes that import torch


# ---------------------------------------------------------------- what the launched processes run


def _lift_accelerate_cpu_fsdp_check() -> None:
    """accelerate only turns an FSDP config into FSDP on GPU-like devices: on CPU processes it silently runs DDP.
    torch's FSDP2 itself works over gloo, so the test lifts that one check to run sftlab's FSDP path on this CPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = AcceleratorState.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


def _random_batch(seed: int, rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    """Rows of different lengths (right padding) whose first tokens are prompt (-100)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 500, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 3 - seed:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4 + seed] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for k, p in model.named_parameters()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _gradient_worker(out: str) -> None:
    """Gradients of one step on 2 processes, fused loss and model's own loss, under DDP and FSDP2, against one
    process computing the model's own loss on the whole global batch."""
    from accelerate import PartialState
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from sftlab.testing import build_tiny_model
    from sftlab.train.loss import RESPONSE_LOSS, install_response_loss

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    batches = [_random_batch(seed=r) for r in range(world)]
    n = torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
    single = build_tiny_model(600)
    for b in batches:
        single(**b, num_items_in_batch=n).loss.backward()
    reference = _grads(single)

    def fsdp(model):
        for layer in model.model.layers:
            fully_shard(layer)
        return fully_shard(model)

    result = {}
    for name, wrap in (("ddp", DistributedDataParallel), ("fsdp", fsdp)):
        for path in ("fused", "own"):
            model = build_tiny_model(600)
            install_response_loss(model)
            wrapped = wrap(model)  # kept alive until backward: DDP's reducer all-reduces the gradients
            loss = wrapped(**batches[rank], num_items_in_batch=n, **{RESPONSE_LOSS: path == "fused"}).loss
            (loss * world).backward()  # the wrappers average gradients over processes; Trainer scales the same way
            result[f"{name}_{path}"] = _max_diff(_grads(model), reference)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def _train_worker(config: str, *phases: str) -> None:
    """sftlab train (FSDP too, on this CPU), phase by phase: "stop" trains from scratch and stops after the
    checkpoint of step STEPS // 2 (as if killed there); "resume" continues the run (--resume) to STEPS."""
    _lift_accelerate_cpu_fsdp_check()
    from transformers import TrainerCallback

    from sftlab.train.config import load_config
    from sftlab.train.run import train

    class StopHalfway(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop |= state.global_step == STEPS // 2

    for phase in phases:
        if phase == "stop":
            train(load_config(config), overwrite=True, callbacks=[StopHalfway()])
        else:
            train(load_config(config), resume=True)


def _cli_worker(*args: str) -> None:
    """`sftlab ARGS` as `python -m sftlab` runs it, then whether the process group is still open (it must not
    be: left to interpreter exit, gloo's threads once aborted a finished process and failed the launch)."""
    from sftlab.cli import app

    app(list(args), standalone_mode=False)
    print(f"process group open after sftlab: {torch.distributed.is_initialized()}")


# ---------------------------------------------------------------- the tests


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    bin_path = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))  # DeepSpeed's ninja
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
            "TRANSFORMERS_VERBOSITY": "error", "DS_ACCELERATOR": "cpu", "PATH": bin_path}


def _launch(*args: str, wait: bool = True):
    if "--main_process_port" not in args:  # not accelerate's fixed 29500: other runs may use it at the same time
        args = ("--main_process_port", str(_free_port()), *args)
    proc = subprocess.Popen([ACCELERATE, "launch", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return _finish(proc) if wait else proc


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """Training data and a config writer: (folder, write_config(name, **overrides) -> path)."""
    from sftlab.data.schema import Conversation, Turn
    from sftlab.data.writers import write_jsonl

    folder = tmp_path_factory.mktemp("dist")
    convs = [Conversation([Turn("user", f"Question number {i}?"), Turn("assistant", "Answer " + "ok " * (1 + i % 5))])
             for i in range(16)]
    write_jsonl(folder / "train.jsonl", convs)

    def write_config(name: str, **kw) -> Path:
        cfg = {"model": str(tiny_model_dir), "data": str(folder / "train.jsonl"), "output_dir": str(folder / name),
               "batch_size": 2, "grad_accum": 1, "max_steps": STEPS, "precision": "fp32", "compile": False,
               "learning_rate": 1e-2, "lora": {"dropout": 0.0}, "save_steps": 2, "seed": 3, **kw}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return folder, write_config


def _train_in_process(config: Path, resume: bool = False, **overrides):
    from sftlab.train.config import load_config
    from sftlab.train.run import train

    torch.set_num_threads(1)
    return train(load_config(config, overrides), overwrite=not resume, resume=resume)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(final.glob("*.safetensors")))


def _compare(a: Path, b: Path) -> tuple[float, float]:
    """(max abs difference of the loss curves, of the saved weights) of two run folders."""
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == STEPS
    wa, wb = _weights(a / "final"), _weights(b / "final")
    assert wa.keys() == wb.keys()
    return max(abs(x - y) for x, y in zip(la, lb, strict=True)), _max_diff(wa, wb)


@pytest.fixture(scope="module")
def two_processes(setup):
    """LoRA on 2 processes of one machine, accumulation 1 (the shipped DDP config)."""
    folder, write_config = setup
    out = _launch("--config_file", str(RECIPES / "ddp.yaml"), "--num_processes", "2",
                  __file__, "cli", "train", str(write_config("ddp2")), "--overwrite")
    return folder / "ddp2", out


@pytest.fixture(scope="module")
def one_process(setup):
    """The same LoRA run on 1 process, accumulation 2: the same global batches as `two_processes`."""
    folder, write_config = setup
    return _train_in_process(write_config("one", grad_accum=2)).run_dir


def test_two_processes_equal_one_process_with_accumulation(setup, two_processes, one_process):
    one = one_process
    two, output = two_processes
    loss_diff, weight_diff = _compare(one, two)
    print(f"2 processes x accumulation 1 vs 1 process x accumulation 2: max abs diff loss {loss_diff:.3g}, "
          f"adapter {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-6
    m1, m2 = (json.loads((d / "train_metrics.json").read_text()) for d in (one, two))
    assert m2["fast_loss"] is True  # the fused loss ran under DDP
    assert (m2["tokens_seen"], m2["trained_tokens_seen"]) == (m1["tokens_seen"], m1["trained_tokens_seen"])
    # process 0 alone wrote the run folder, the log and the progress bar
    assert output.count("data: 16 examples") == 1 and output.count("saved lora result") == 1
    assert output.count("process group open after sftlab: False") == 2  # closed by both processes
    assert len(list((two / "tb").iterdir())) == 1
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [*range(1, STEPS + 1), STEPS]  # every step once, then the summary row


def test_two_machines_equal_two_processes_on_one(setup, two_processes):
    folder, write_config = setup
    config, port = str(write_config("machines")), str(_free_port())
    procs = [_launch("--config_file", str(RECIPES / "multi_node.yaml"), "--num_machines", "2", "--num_processes", "2",
                     "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                     "-m", "sftlab", "train", config, "--overwrite", wait=False) for rank in (0, 1)]
    outputs = [_finish(p) for p in procs]
    assert "saved lora result" in outputs[0] and "saved lora result" not in outputs[1]
    loss_diff, weight_diff = _compare(two_processes[0], folder / "machines")
    assert loss_diff == 0 and weight_diff == 0


def test_fused_loss_gradients_under_ddp_and_fsdp(tmp_path):
    out = tmp_path / "grads.json"
    _launch("--config_file", str(RECIPES / "ddp.yaml"), "--num_processes", "2", __file__, "grad", str(out))
    diffs = json.loads(out.read_text())
    print("max abs gradient difference vs one process, model's own loss:", diffs)
    assert set(diffs) == {"ddp_fused", "ddp_own", "fsdp_fused", "fsdp_own"}
    assert max(diffs.values()) < 1e-6


FULL = {"method": "full", "gradient_checkpointing": False, "lr_scheduler": "constant", "warmup_ratio": 0,
        "learning_rate": 1e-3, "save_steps": 1}


@pytest.fixture(scope="module")
def one_process_full(setup):
    """Full fine-tuning on 1 process, accumulation 2 (what FSDP and ZeRO-3 on 2 processes must reproduce)."""
    folder, write_config = setup
    return _train_in_process(write_config("full1", grad_accum=2, **FULL)).run_dir


def test_fsdp_full_fine_tuning_checkpoints_resumes_and_saves_a_plain_checkpoint(setup, one_process_full):
    from transformers import AutoModelForCausalLM

    folder, write_config = setup
    one = one_process_full
    config = write_config("fsdp", **FULL)
    fsdp = ("--config_file", str(RECIPES / "fsdp.yaml"), "--num_processes", "2", __file__, "train", str(config))
    _launch(*fsdp, "stop")  # stopped after the checkpoint of step 2 ...
    assert "resuming from" in _launch(*fsdp, "resume")  # ... and resumed by a fresh launch
    run = folder / "fsdp"
    assert (run / "checkpoints" / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP did run
    assert json.loads((run / "train_metrics.json").read_text())["fast_loss"] is True
    loss_diff, weight_diff = _compare(one, run)  # resumed at step 2, same curve and weights as one process
    print(f"FSDP 2 processes (resumed at step 2) vs 1 process: max abs diff loss {loss_diff:.3g}, "
          f"weights {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-5
    model = AutoModelForCausalLM.from_pretrained(run / "final")  # one consolidated checkpoint
    reference = AutoModelForCausalLM.from_pretrained(one / "final")
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name
    with pytest.raises(ConfigError, match="sharded .*resume with --num_processes 2"):  # 1 process cannot load it
        _train_in_process(config, resume=True)


def test_fsdp_lora_checkpoints_resumes_and_saves_an_adapter_peft_loads(setup, two_processes, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder, write_config = setup
    config = write_config("fsdp_lora")
    _launch("--config_file", str(RECIPES / "fsdp.yaml"), "--num_processes", "2", __file__, "train", str(config),
            "stop", "resume")
    run = folder / "fsdp_lora"
    assert (run / "checkpoints" / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP did run
    assert json.loads((run / "train_metrics.json").read_text())["fast_loss"] is True
    loss_diff, weight_diff = _compare(two_processes[0], run)
    print(f"FSDP LoRA 2 processes (resumed at step 2) vs DDP: max abs diff loss {loss_diff:.3g}, "
          f"adapter {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-5  # fp32 reduction order: 1.5e-6 on an AVX-512 CPU without bf16
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, run / "final")
    saved = _weights(run / "final")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    assert not torch.allclose(model(input_ids=ids).logits, before)  # the adapter is applied


def test_resume_on_another_number_of_processes(setup, two_processes, one_process):
    """DDP 2 -> 1 process: refused when the global batch would change, and the same run when it does not."""
    import shutil

    folder, write_config = setup
    run = folder / "ddp2to1"
    shutil.copytree(two_processes[0], run)
    shutil.rmtree(run / "checkpoints" / f"checkpoint-{STEPS}")  # as if stopped after step 2
    with pytest.raises(ConfigError, match=r"saved by 2 processes, this run has 1.* or grad_accum: 2"):
        _train_in_process(write_config("ddp2to1"), resume=True)
    resumed = _train_in_process(write_config("ddp2to1", grad_accum=2), resume=True).run_dir
    loss_diff, weight_diff = _compare(one_process, resumed)
    print(f"resumed on 1 process x accumulation 2 from 2 processes: max abs diff loss {loss_diff:.3g}, "
          f"adapter {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-6


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install "
                    "sftlab[deepspeed])")
def test_deepspeed_zero2_lora_and_zero3_full_fine_tuning(setup, two_processes, one_process_full):
    """ZeRO-2 LoRA equals DDP; ZeRO-3 full fine-tuning stopped after step 2, resumed by a fresh launch, writes a
    plain checkpoint."""
    from transformers import AutoModelForCausalLM

    folder, write_config = setup
    config = str(write_config("zero2"))
    _launch("--config_file", str(RECIPES / "deepspeed_zero2.yaml"), "--num_processes", "2",
            "-m", "sftlab", "train", config, "--overwrite")
    loss_diff, weight_diff = _compare(two_processes[0], folder / "zero2")
    print(f"DeepSpeed ZeRO-2 LoRA vs DDP: max abs diff loss {loss_diff:.3g}, adapter {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-6
    zero3 = ("--config_file", str(RECIPES / "deepspeed_zero3.yaml"), "--num_processes", "2")
    config = str(write_config("zero3", **FULL))
    _launch(*zero3, __file__, "train", config, "stop")  # stopped after the checkpoint of step 2 ...
    assert "resuming from" in _launch(*zero3, "-m", "sftlab", "train", config, "--resume")  # ... fresh launch
    run = folder / "zero3"
    assert (run / "checkpoints" / f"checkpoint-{STEPS}" / f"global_step{STEPS}").is_dir()  # DeepSpeed's own
    loss_diff, weight_diff = _compare(one_process_full, run)
    print(f"DeepSpeed ZeRO-3 full fine-tuning (resumed at step 2) vs 1 process: max abs diff loss {loss_diff:.3g}, "
          f"weights {weight_diff:.3g}")
    assert loss_diff < 1e-5 and weight_diff < 1e-5
    assert json.loads((run / "train_metrics.json").read_text())["fast_loss"] is True
    AutoModelForCausalLM.from_pretrained(run / "final")  # one plain checkpoint


if __name__ == "__main__":
    {"grad": _gradient_worker, "train": _train_worker, "cli": _cli_worker}[sys.argv[1]](*sys.argv[2:])
