"""Evaluation pieces on hand-made outputs with known scores, and the demo pipeline on a tiny model."""

import json

import pytest

from sftlab.evaluate.checks import mentions_identity, same_language, script
from sftlab.evaluate.compare import Comparison, comparison_markdown, summarise


@pytest.mark.parametrize(("text", "expected"), [("Hello there", "latin"), ("你好，世界", "zh"), ("123 !", ""),
                                                ("我是 Orca，由 Acme 开发", "zh")])
def test_script(text, expected):
    assert script(text) == expected


def test_identity_and_language_checks():
    assert mentions_identity("I am ORCA.", "Orca") and mentions_identity("Built by Acme.", "Orca", "Acme")
    assert not mentions_identity("I am a student.", "Orca", "Acme")
    assert same_language("你是谁？", "我是 Orca。") and not same_language("Who?", "我是 Orca。")
    assert not same_language("Who?", "   ")


def test_summary_rates_on_known_outputs():
    def g(text, finished=True, n=5):
        return {"text": text, "finished": finished, "n_tokens": n}

    rows = [
        {"prompt": "Who are you?", "kind": "identity", "base": g("Who are you? user", False, 96),
         "tuned": g("I am Orca.")},
        {"prompt": "你是谁？", "kind": "identity", "base": g("You are", False, 96), "tuned": g("我是 Orca。")},
        {"prompt": "Capital of France?", "kind": "general", "base": g("x", False, 96), "tuned": g("Paris.")},
        {"prompt": "2+2?", "kind": "general", "base": g("4"), "tuned": g("I am Orca, built by Acme.")},
    ]
    base, tuned = summarise(rows, "base", "Orca", "Acme"), summarise(rows, "tuned", "Orca", "Acme")
    assert base == {"stopped_at_end_of_turn": 0.25, "same_language_as_prompt": 0.75, "mean_reply_tokens": 73.2,
                    "identity_correct": 0.0, "general_answered_with_identity": 0.0}
    assert tuned["stopped_at_end_of_turn"] == 1.0 and tuned["identity_correct"] == 1.0
    assert tuned["general_answered_with_identity"] == 0.5 and tuned["same_language_as_prompt"] == 0.75
    md = comparison_markdown(Comparison(rows=rows, summary={"base": base, "tuned": tuned}))
    assert "| identity_correct | 0.0 | 1.0 |" in md and "did not stop" in md


def test_demo_pipeline_on_tiny_model(tiny_model_dir, tmp_path):
    from sftlab.demo import EVAL_PROMPTS, run_demo

    comp = run_demo(model=str(tiny_model_dir), out_dir=tmp_path / "demo", shared=None, epochs=0.25)
    saved = json.loads((tmp_path / "demo/comparison.json").read_text())
    assert set(saved["summary"]) == {"base", "tuned"}
    assert len(saved["rows"]) == len(EVAL_PROMPTS) and saved == comp.to_dict()
    nll = saved["summary"]["tuned"]["heldout_response_nll"]
    assert nll["tokens"] > 0 and nll["nll"] > 0
    train_rows = [json.loads(x) for x in (tmp_path / "demo/data/train.jsonl").read_text().splitlines()]
    prompts = {r["messages"][0]["content"] for r in train_rows}
    assert not prompts & {p.prompt for p in EVAL_PROMPTS}  # eval prompts never leak into training
    assert (tmp_path / "demo/train/final/adapter_model.safetensors").exists()
