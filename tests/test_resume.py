"""Resume is what the README promises: after a crash in any epoch the run continues bit-identically, the metrics log
holds every step once, the token counters go on, and a damaged newest checkpoint is skipped, not fatal."""

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import TrainerCallback

from sftlab.data.schema import Conversation, Turn
from sftlab.data.writers import write_jsonl
from sftlab.train.config import make_config
from sftlab.train.run import train

STEPS_PER_EPOCH, EPOCHS = 2, 3  # 12 examples / (batch 2 x accumulation 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CrashAfterLogging(TrainerCallback):
    """Dies right after step `step` was logged and before it is saved: like a kill between two checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated kill")


def _cfg(tiny_model_dir, folder: Path, **kw):
    convs = [Conversation([Turn("user", f"Question number {i}?"), Turn("assistant", "Answer " + "ok " * (1 + i % 5))])
             for i in range(12)]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", convs)
    base = {"model": str(tiny_model_dir), "data": [str(folder / "train.jsonl")], "output_dir": str(folder / "run"),
            "batch_size": 2, "grad_accum": 3, "epochs": EPOCHS, "save_steps": 1, "save_total_limit": 10,
            "precision": "fp32", "compile": False, "learning_rate": 1e-2, "seed": 11}  # group_by_length: default
    base.update(kw)
    return make_config(base)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _quiet_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce."""
    result = train(_cfg(tiny_model_dir, tmp_path_factory.mktemp("straight")))
    assert result.metrics["global_step"] == STEPS_PER_EPOCH * EPOCHS
    return result


def _crash_then_resume(tiny_model_dir, folder: Path, crash_step: int, damage=None, **kw):
    cfg = _cfg(tiny_model_dir, folder, **kw)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, callbacks=[CrashAfterLogging(crash_step)])
    if damage:
        damage(folder / "run" / "checkpoints")
    console, out = _quiet_console()
    return train(cfg, resume=True, console=console), out.getvalue()


def _assert_same_run(a, b) -> None:
    wa, wb = load_file(a.final_dir / "adapter_model.safetensors"), load_file(b.final_dir / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [(r["step"], r["loss"]) for r in _rows(a.run_dir) if "loss" in r]
    lb = [(r["step"], r["loss"]) for r in _rows(b.run_dir) if "loss" in r]
    assert la == lb


# crash at step 4: newest checkpoint 3 is mid-epoch 1; crash at step 5: checkpoint 4 ends epoch 1 (boundary);
# crash at step 6: checkpoint 5, mid-epoch 2. Length buckets (the default), and random batches.
@pytest.mark.parametrize("crash_step, grouped", [(4, True), (5, True), (6, True), (4, False)],
                         ids=["mid_epoch_1", "end_of_epoch_1", "mid_epoch_2", "mid_epoch_1_random_order"])
def test_resume_in_a_later_epoch_is_bit_identical(tiny_model_dir, tmp_path, tmp_path_factory, straight, crash_step,
                                                  grouped):
    if not grouped:
        straight = train(_cfg(tiny_model_dir, tmp_path_factory.mktemp("random"), group_by_length=False))
    resumed, said = _crash_then_resume(tiny_model_dir, tmp_path, crash_step, group_by_length=grouped)
    _assert_same_run(straight, resumed)
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / f'checkpoint-{crash_step - 1}'}" in said


def test_metrics_log_holds_every_step_once_after_resume(tiny_model_dir, tmp_path, straight):
    resumed, _ = _crash_then_resume(tiny_model_dir, tmp_path, 5)
    steps = [r["step"] for r in _rows(resumed.run_dir) if "loss" in r]
    assert steps == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))


def test_token_counters_continue_after_resume(tiny_model_dir, tmp_path, straight):
    resumed, _ = _crash_then_resume(tiny_model_dir, tmp_path, 5)
    keys = ("tokens_seen", "trained_tokens_seen")
    assert [[r[k] for k in keys] for r in _rows(resumed.run_dir) if "loss" in r] == \
           [[r[k] for k in keys] for r in _rows(straight.run_dir) if "loss" in r]
    for key in ("tokens_seen", "trained_tokens_seen", "padding_share"):
        assert resumed.metrics[key] == straight.metrics[key], key



def test_train_loss_covers_the_whole_run_after_resume(tiny_model_dir, tmp_path, straight):
    """train_metrics.json's train_loss (the report's) is the mean over every step, not only those after --resume."""
    resumed, _ = _crash_then_resume(tiny_model_dir, tmp_path, 5)
    losses = [r["loss"] for r in _rows(straight.run_dir) if "loss" in r]
    assert straight.metrics["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-6)
    saved = json.loads((resumed.run_dir / "train_metrics.json").read_text())
    assert saved["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-6)

def _copy_newest(checkpoints: Path) -> Path:
    """checkpoint-(N+1) made from checkpoint-N (as if the next save had started), to be damaged."""
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    step = int(newest.name.split("-")[1]) + 1
    later = checkpoints / f"checkpoint-{step}"
    shutil.copytree(newest, later)
    state = json.loads((later / "trainer_state.json").read_text())
    state["global_step"] = step
    (later / "trainer_state.json").write_text(json.dumps(state))
    return later


def _empty(checkpoints: Path) -> None:
    (checkpoints / "checkpoint-5").mkdir()


def _no_state(checkpoints: Path) -> None:
    (_copy_newest(checkpoints) / "trainer_state.json").unlink()


def _torn_state(checkpoints: Path) -> None:
    state = _copy_newest(checkpoints) / "trainer_state.json"
    state.write_text(state.read_text()[:40])


def _torn_optimizer(checkpoints: Path) -> None:
    opt = _copy_newest(checkpoints) / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])


def _empty_weights(checkpoints: Path) -> None:
    (_copy_newest(checkpoints) / "adapter_model.safetensors").write_bytes(b"")


def _no_rng(checkpoints: Path) -> None:
    (_copy_newest(checkpoints) / "rng_state.pth").unlink()


@pytest.mark.parametrize("damage, reason", [
    (_empty, "no trainer_state.json"), (_no_state, "no trainer_state.json"),
    (_torn_state, "trainer_state.json"), (_torn_optimizer, "optimizer.pt"),
    (_empty_weights, "adapter_model.safetensors"), (_no_rng, "rng_state"),
], ids=["empty_folder", "no_trainer_state", "torn_trainer_state", "torn_optimizer", "empty_weights", "no_rng_state"])
def test_resume_skips_a_damaged_newest_checkpoint(tiny_model_dir, tmp_path, straight, damage, reason):
    """A kill during a save leaves checkpoint-5 empty or partial: resume uses checkpoint-4, says so, finishes."""
    resumed, said = _crash_then_resume(tiny_model_dir, tmp_path, 5, damage)
    assert "resuming from" in said and "checkpoint-4" in said
    assert "skipped" in said and "checkpoint-5" in said and reason in said
    _assert_same_run(straight, resumed)


def test_length_bucket_order_depends_on_seed_and_epoch_only():
    """The order of epoch e is the same whatever the global RNG did before (a resume in epoch e replays it)."""
    from sftlab.train.dataset import LengthBucketSampler

    lengths = list(range(5, 105))
    sampler = LengthBucketSampler(lengths, 4, bucket_batches=4, seed=7)
    sampler.set_epoch(2)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(123)
    torch.rand(1000)
    assert list(sampler) == first and sorted(first) == list(range(100))
    sampler.set_epoch(3)
    assert list(sampler) != first


def test_a_deepspeed_checkpoint_is_complete(tmp_path):
    """DeepSpeed keeps the optimizer state (under ZeRO-3 the weights too) in global_step<N>/: resumable."""
    from sftlab.train.checkpoints import find_resume_point

    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "global_step2").mkdir(parents=True)
    for name in ("global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt", "global_step2/mp_rank_00_model_states.pt",
                 "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
        torch.save({}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert find_resume_point(tmp_path).path == checkpoint
    shutil.rmtree(checkpoint / "global_step2")
    assert "no model weights" in find_resume_point(tmp_path).skipped[0][1]


def test_resume_on_another_number_of_processes_needs_the_same_global_batch(tmp_path):
    from sftlab.train.distributed import BatchLayout, resume_layout_problem

    def layout(processes, grad_accum, batch_size=2):
        return {"processes": processes, "grad_accum": grad_accum, "batch_size": batch_size}

    assert resume_layout_problem(tmp_path, layout(2, 1), layout(2, 1)) == (None, None)
    error, warning = resume_layout_problem(tmp_path, layout(2, 1), layout(1, 2))
    assert error is None and "same global batch" in warning
    error, _ = resume_layout_problem(tmp_path, layout(2, 1), layout(1, 1))
    assert "saved by 2 processes, this run has 1" in error and "grad_accum: 2" in error
    torch.save({}, tmp_path / "rng_state_0.pth")
    torch.save({}, tmp_path / "rng_state_1.pth")
    older = BatchLayout.saved(tmp_path, {"train_batch_size": 2})  # saved without the layout: processes counted
    assert older["processes"] == 2 and "older sftlab" in resume_layout_problem(tmp_path, older, layout(1, 2))[0]
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    assert "sharded" in resume_layout_problem(tmp_path, layout(2, 1), layout(1, 2))[0]
