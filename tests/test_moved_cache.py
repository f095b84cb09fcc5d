"""Runs on a packaged model record the checkpoint it was converted into under the cache. After the cache moved (another
$SFTLAB_CACHE, a cleared cache, a run folder copied to another machine) the adapter still loads: the packaged base is
converted again under the current cache, found by its recorded name or, in older records, by its folder's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.recipe.runner import run_recipe

QUIET = Console(quiet=True)
TINY = "tiny-packaged"


@pytest.fixture()
def tiny_packaged(tmp_path, monkeypatch, tiny_model_dir, one_torch_thread):
    """A packaged model whose GGUF 'dequantises' into the tiny model; the cache naming and conversion are real."""
    from sftlab.models import loading, packaged

    gguf = tmp_path / "site-packages" / f"{TINY}-q4_k_m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF tiny")
    monkeypatch.setitem(packaged.PACKAGED, TINY, ("tiny-packaged-gguf", "a tiny random Llama"))
    monkeypatch.setattr(packaged, "GGUF_STEMS", {**getattr(packaged, "GGUF_STEMS", {}), TINY: gguf.stem}, raising=False)
    monkeypatch.setattr(loading, "packaged_gguf", lambda name: gguf)
    monkeypatch.setattr(loading, "_write_plain_checkpoint", lambda src, out, *a: shutil.copytree(tiny_model_dir, out))
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache-a"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _recipe(folder: Path) -> Path:
    stages = [
        {"id": "data", "type": "prepare", "function": "shipped_mix", "params": {"general_examples": 6}},
        {"id": "sft", "type": "train", "config": {"model": TINY, "data": [{"path": "${data}/train.jsonl"}],
                                                  "method": "lora", "max_steps": 1, "batch_size": 2, "grad_accum": 1,
                                                  "report_to": ["none"], "max_length": 128}},
        {"id": "eval", "type": "eval", "models": ["sft"], "batch_size": 4,
         "suite": {"max_new_tokens": 2, "evaluators": [
             {"type": "identity", "name": "Orca", "identity_prompts": ["Who are you?"], "general_prompts": []}]}},
    ]
    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "student": "tiny", "stages": stages,
                                    "result": {"eval": "eval", "metrics": ["identity.identity_correct"]}}))
    return path


def _forget_name(path: Path, *keys: str) -> None:
    """Make a record look like one written before sftlab recorded the packaged model's name."""
    record = json.loads(path.read_text())
    inner = record
    for key in keys:
        inner = inner[key]
    inner.pop("model_spec", None)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("record", ["name", "path_only"])
def test_an_adapter_on_a_packaged_model_loads_again_after_the_cache_moved(tiny_packaged, monkeypatch, record):
    """Before: the eval stage rerun, and export, failed with 'model path not found: <old cache>/models/...'."""
    recipe = _recipe(tiny_packaged)
    run_recipe(recipe, console=QUIET)
    stage = tiny_packaged / "runs/toy/sft/stage.json"
    outputs = json.loads(stage.read_text())["outputs"]
    converted, final = Path(outputs["base_model"]), Path(outputs["final_dir"])
    assert converted.parent == tiny_packaged / "cache-a" / "models"
    if record == "path_only":
        _forget_name(stage, "outputs")
        _forget_name(final / "sftlab.json")
    shutil.rmtree(tiny_packaged / "cache-a")
    monkeypatch.setenv("SFTLAB_CACHE", str(tiny_packaged / "cache-b"))

    run = run_recipe(recipe, from_stage="eval", console=QUIET)
    assert run.stages["eval"]["status"] == "ran"
    assert run.stages["sft"]["outputs"].get("model_spec") == (TINY if record == "name" else None)
    assert (tiny_packaged / "cache-b" / "models" / converted.name / "config.json").exists()
    r = CliRunner().invoke(app, ["export", str(final), str(tiny_packaged / "merged")])
    assert r.exit_code == 0, r.output
    assert (tiny_packaged / "merged" / "model.safetensors").exists()


def test_a_missing_user_model_folder_is_still_a_clear_error(tiny_packaged):
    """Only a packaged model's own cache folder is rebuilt; any other missing base is named, exit 2."""
    adapter = tiny_packaged / "adapter"
    adapter.mkdir()
    gone = tiny_packaged / "models" / "my-model-0123456789ab-float32"  # looks like a cache folder, not a packaged one
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(gone)}))
    (adapter / "sftlab.json").write_text(json.dumps({"base_model": str(gone), "model_spec": str(gone)}))
    r = CliRunner().invoke(app, ["export", str(adapter), str(tiny_packaged / "merged")])
    assert r.exit_code == 2 and f"model path not found: {gone}" in r.output, r.output
    assert "Traceback" not in r.output
