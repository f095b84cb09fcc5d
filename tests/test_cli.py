"""The CLI end to end on a tiny model: train from YAML, resume, data check, clear errors (exit code 2)."""

import json

import pytest
from typer.testing import CliRunner

from sftlab.cli import app

runner = CliRunner()


def test_train_from_yaml_and_resume(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(8)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata:\n  - path: {data}\nmax_steps: 2\nbatch_size: 2\ngrad_accum: 1\n"
                   f"output_dir: {tmp_path / 'run'}\nsave_steps: 1\nprecision: fp32\n")
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run/final/adapter_model.safetensors").exists()
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["train", str(cfg), "--resume", "--set", "max_steps=3"])
    assert r.exit_code == 0, r.output
    steps = [json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and steps.count(1) == 1  # continued, did not restart


def test_data_check_reports_skips_and_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a"}\n{"prompt": "q", "completion": ""}\n')
    r = runner.invoke(app, ["data", "check", str(bad)])
    assert r.exit_code == 0 and '"empty assistant content": 1' in r.output
    r = runner.invoke(app, ["data", "check", str(bad), "--on-error", "raise"])
    assert r.exit_code == 2 and "line 2" in r.output and "assistant turn has empty content" in r.output


def test_data_convert_writes_messages(tmp_path, shared_data):
    out = tmp_path / "glaive.jsonl"
    r = runner.invoke(app, ["data", "convert", str(shared_data / "glaive_toolcall_en_demo.json"), str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["tools"] and rows[0]["messages"][3]["tool_calls"]


def test_eval_command_compares_base_and_adapter(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(8)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: [{data}]\nmax_steps: 2\nbatch_size: 2\ngrad_accum: 1\n"
                   f"output_dir: {tmp_path / 'run'}\nprecision: fp32\nlearning_rate: 0.01\n")
    assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("q1\nWho are you?\n")
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--adapter", str(tmp_path / "run/final"), "--prompts",
                            str(prompts), "--reference", str(data), "--max-new-tokens", "4",
                            "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "ev/eval.json").read_text())
    nll = saved["evaluators"]["nll"]["metrics"]["response_nll"]
    assert nll["tuned"]["value"] < nll["base"]["value"]  # trained on exactly these references
    assert [row["prompt"] for row in saved["evaluators"]["instruction_following"]["samples"]] == ["q1", "Who are you?"]
    assert (tmp_path / "ev/eval.md").exists() and (tmp_path / "ev/generations.sqlite").exists()
    suite = tmp_path / "s.yaml"
    suite.write_text("evaluators:\n  - type: identity\n    name: Orca\n    autor: x\n")
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--adapter", str(tmp_path / "run/final"), "--suite",
                            str(suite)])
    assert r.exit_code == 2 and "field 'evaluators.0.identity.autor'" in r.output
    r = runner.invoke(app, ["eval", str(tiny_model_dir)])
    assert r.exit_code == 2 and "exactly one of --adapter or --tuned" in r.output
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--adapter", str(tmp_path / "run/final"), "--prompts",
                            str(prompts), "--max-new-tokens", "4", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output  # its own earlier output is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/eval.md").write_text("my notes")
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--adapter", str(tmp_path / "run/final"), "--prompts",
                            str(prompts), "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "did not write" in r.output, r.output  # was: eval.md replaced, a cache added
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["eval.md"]


@pytest.mark.parametrize("command", ["eval", "chat"])
def test_a_missing_or_empty_adapter_folder_is_named(tiny_model_dir, tmp_path, command):
    (tmp_path / "empty").mkdir()
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    for adapter, message in ((tmp_path / "runs/nope/final", "adapter folder not found"),
                             (tmp_path / "empty", "not a LoRA adapter folder")):
        args = ["--prompts", str(prompts), "--out", str(tmp_path / "ev")] if command == "eval" else []
        r = runner.invoke(app, [command, str(tiny_model_dir), "--adapter", str(adapter), *args], input="/exit\n")
        assert r.exit_code == 2 and message in r.output, r.output  # was: "could not load tokenizer ... hub"
        assert "huggingface.co" not in r.output


def test_a_suite_file_that_does_not_exist_fails_before_any_model_loads(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("evaluators:\n  - type: instruction_following\n    prompts: [Hi]\n"
                     f"  - type: nll\n    data: {{path: {tmp_path / 'heldout.jsonl'}}}\n")
    r = runner.invoke(app, ["eval", str(tmp_path / "no-model"), "--adapter", str(tmp_path / "no-adapter"),
                            "--suite", str(suite), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 2 and "heldout.jsonl" in r.output and "evaluators.1.data.path" in r.output, r.output
    assert "file not found" in r.output and not (tmp_path / "ev").exists()  # was: found after base generation
