"""sftlab.artifacts: the run folder's typed records (older files without a schema_version still read), the one
renderer of a suite result, the report plots' numbers, `report_to`, and the one model loader."""

import json

import pytest

from sftlab.artifacts.records import CurationSummary, FilterReport, SuiteResult, read_curation, read_record
from sftlab.artifacts.render import pairwise_sentence, print_suite, suite_html, suite_markdown
from sftlab.errors import ConfigError, DataError

EVAL = {"suite": "s <x>", "subjects": {"base": "m", "tuned": "m+a"}, "evaluators": {
    "identity": {"type": "identity", "metrics": {"identity_correct": {
        "base": {"value": 0.25, "n": 4, "ci95": [0.05, 0.7]}, "tuned": {"value": 1.0, "n": 4, "ci95": [0.51, 1.0]}}},
        "samples": [{"prompt": "Who <b>?", "kind": "identity", "base": {"text": "x", "finished": False},
                     "tuned": {"text": "I am Orca", "finished": True}}]},
    "judge": {"type": "judge", "pairwise": {
        "judge": "j", "kind": "RubricJudge", "labels": ["tuned", "base"], "n": 4, "tuned_win_rate": 0.75,
        "base_win_rate": 0.0, "tie_rate": 0.25, "tuned_score": 0.875, "ci95": [0.5, 1.0], "inconsistent_orders": 0,
        "unparseable": 0}, "samples": []}}}


def test_an_eval_file_without_schema_version_reads_and_rewrites_unchanged(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(EVAL))
    res = read_record(path, SuiteResult)
    assert res.schema_version == 1 and res.to_dict() == {"schema_version": 1, **EVAL}
    assert [(n, k) for n, k, _ in res.metric_rows()] == [("identity", "identity_correct")]
    path.write_text('{"suite": 1')
    with pytest.raises(DataError, match=r"eval.json: not valid JSON \(line 1"):
        read_record(path, SuiteResult)
    path.write_text('{"subjects": {}}')
    with pytest.raises(DataError, match="field 'suite'"):
        read_record(path, SuiteResult)


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo', [1]),  # killed while writing step 2: step 1 stands
    (b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}', [1, 2]),  # whole, only the newline missing
    (b'{"step": 1}\n{"st\n{"step": 3}\n', "line 2: not valid JSON"),
    (b'{"step": 1}\n[1]\n', "line 2: expected a JSON object"),
    (b'{"step": 1}\n\xff\n', "line 2: not valid UTF-8"),
    (b'{"step": 1}\n{"step": "x", "loss": 1.0}\n', "line 2, field 'step': expected a number"),
    (b'{"step": 1, "loss": null}\n', "line 1, field 'loss': expected a number"),
], ids=["torn_last_line", "no_final_newline", "torn_inside", "not_an_object", "not_utf8", "step_not_a_number",
        "loss_not_a_number"])
def test_metrics_log_tolerates_a_torn_last_line_only(tmp_path, content, expected):
    from sftlab.artifacts.records import read_metrics_log

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    if isinstance(expected, list):  # was: a torn last line refused the crashed run's report
        assert [row["step"] for row in read_metrics_log(path)] == expected
    else:  # was: a TypeError or UnicodeDecodeError traceback
        with pytest.raises(DataError, match=expected):
            read_metrics_log(path)


def test_both_curation_shapes_are_typed_by_kind_or_file_name(tmp_path):
    early = tmp_path / "pool.summary.json"  # distill/best-of-k, before records had a kind (`records` then)
    early.write_text(json.dumps({"prompts": 10, "processed": 9, "records": 7}))
    summary = read_curation(early)
    assert isinstance(summary, CurationSummary) and summary.funnel() == {"prompts": 10, "processed": 9,
                                                                         "records written": 7}
    report = tmp_path / "curation_report.json"
    report.write_text(json.dumps({"selected": 2, "funnel": [{"stage": "read", "in": 5, "kept": 4, "dropped": {}},
                                                            {"stage": "dedup", "in": 4, "kept": 2, "dropped": {}}]}))
    filtered = read_curation(report)
    assert isinstance(filtered, FilterReport) and filtered.funnel() == {"read": 4, "dedup": 2}
    assert filtered.to_dict()["funnel"][1] == {"stage": "dedup", "in": 4, "kept": 2, "dropped": {}}
    renamed = tmp_path / "notes.json"
    renamed.write_text(json.dumps(filtered.to_dict()))  # written with a kind: any name reads
    assert isinstance(read_curation(renamed), FilterReport)
    renamed.write_text(json.dumps({"prompts": 1}))
    with pytest.raises(DataError, match="not a curation record"):
        read_curation(renamed)


def test_a_run_finds_its_curation_record_where_curate_writes_it(tmp_path):
    from sftlab.artifacts.layout import find_curation

    assert find_curation(tmp_path) is None
    (tmp_path / "curation/pool.report").mkdir(parents=True)
    (tmp_path / "curation/pool.summary.json").write_text("{}")
    assert find_curation(tmp_path) == tmp_path / "curation/pool.summary.json"
    (tmp_path / "curation/pool.report/curation_report.json").write_text("{}")  # `curate filter`'s report folder
    assert find_curation(tmp_path) == tmp_path / "curation/pool.report/curation_report.json"


def test_one_renderer_shows_the_same_numbers_in_markdown_html_and_the_terminal():
    from rich.console import Console

    res = SuiteResult.model_validate(EVAL)
    sentence = pairwise_sentence("judge", res.evaluators["judge"]["pairwise"])
    assert sentence.startswith("**judge** (judge `j`, both orders, n=4): tuned wins 0.75, base wins 0.0, ties 0.25")
    md = suite_markdown(res)
    assert "| identity | identity_correct | 0.25 [0.05, 0.70] (n=4) | 1.0 [0.51, 1.00] (n=4) |" in md
    assert sentence in md and "- *base* (did not stop): x" in md
    page = suite_html(res)
    assert '<span data-key="eval.identity.identity_correct.tuned">1.0</span>' in page
    assert '<span data-key="eval.judge.tuned_win_rate">0.75</span>' in page and "Who &lt;b&gt;?" in page
    console = Console(record=True, width=200)
    print_suite(res, console)
    text = console.export_text()
    assert "identity_correct" in text and "tuned wins 0.75, base wins 0.0, ties 0.25" in text
    assert "(did not stop)" in text


def test_the_cut_off_sentence_counts_add_up_to_its_n():
    """Pairs where only one answer ended but a verdict was unparseable are in n: the sentence says so."""
    from sftlab.artifacts.render import cut_off_text

    c = {"n": 5, "ended_preferred": 2, "cut_off_preferred": 1, "tie": 1, "unparseable": 1}
    assert cut_off_text({"one_cut_off": c}).endswith("preferred it 2 times, the cut-off one 1, tied 1, unparseable 1.")
    assert cut_off_text({"one_cut_off": {**c, "tie": 2, "unparseable": 0}}).endswith("tied 2.")


def test_tokens_per_s_curve_is_per_logging_step_not_the_running_average():
    from sftlab.plotting import metric_bars, per_step_tokens_per_s

    rows = [{"step": 1, "loss": 2.0, "tokens_seen": 100, "elapsed_s": 1.0, "tokens_per_s": 100.0},
            {"step": 2, "loss": 1.9, "tokens_seen": 400, "elapsed_s": 2.0, "tokens_per_s": 200.0},  # 300 in 1 s
            {"step": 3, "loss": 1.8, "tokens_seen": 500, "elapsed_s": 0.5, "tokens_per_s": 999.0},  # resumed
            {"step": 3, "train_runtime": 3.0, "tokens_seen": 500, "elapsed_s": 0.7, "tokens_per_s": 714.0}]  # summary
    assert per_step_tokens_per_s(rows) == [(1, 100.0), (2, 300.0), (3, 999.0)]
    res = SuiteResult.model_validate(EVAL)
    assert metric_bars(res.metric_rows(), list(res.subjects)).startswith(b"\x89PNG")


def test_report_to_is_checked_against_transformers_trackers(tmp_path):
    from sftlab.train.config import make_config

    base = {"model": "m", "data": ["d.jsonl"]}
    assert make_config(base).report_to == ["tensorboard"]
    assert make_config({**base, "report_to": "none"}).report_to == []
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        make_config({**base, "report_to": ["tensorbord"]})
    from transformers.integrations import get_available_reporting_integrations

    if "wandb" not in get_available_reporting_integrations():
        with pytest.raises(ConfigError, match="report_to 'wandb': not installed here"):
            make_config({**base, "report_to": ["wandb"]})


def test_one_loader_for_training_and_inference(tiny_model_dir):
    import torch

    from sftlab.models.causal_lm import load_causal_lm

    lm = load_causal_lm(str(tiny_model_dir))
    assert not lm.model.training and lm.model.dtype == torch.float32  # a fp32 checkpoint on a CPU stays fp32
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(lm.model.parameters()).device.type == want  # inference goes to the GPU when there is one
    assert lm.template == "gemma" and lm.tokenizer.convert_ids_to_tokens(lm.stop_ids)[0] == "<end_of_turn>"
    train_lm = load_causal_lm(str(tiny_model_dir), training=True, chat_template="chatml", dtype=torch.bfloat16)
    assert train_lm.model.dtype == torch.bfloat16 and train_lm.template == "chatml"
    assert next(train_lm.model.parameters()).device.type == "cpu"  # Trainer places a training model


def test_inference_loads_use_the_kv_cache_even_when_the_checkpoint_says_no(tiny_model_dir, tmp_path):
    """sftlab's full fine-tunes were saved with use_cache false (gradient checkpointing): 6x slower generation."""
    import shutil

    from sftlab.models.causal_lm import load_causal_lm

    ckpt = tmp_path / "no-cache"
    shutil.copytree(tiny_model_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "use_cache": False}))
    (ckpt / "generation_config.json").write_text(json.dumps({"use_cache": False}))
    lm = load_causal_lm(str(ckpt))
    assert lm.model.config.use_cache and lm.model.generation_config.use_cache


def test_an_interval_bound_half_way_is_rounded_up_as_written():
    """25 of 29 has the Wilson interval [0.6944, 0.945]: shown as [0.69, 0.94] (the float 0.945 is 0.94499...),
    while the notes written from the same numbers said 0.95."""
    from sftlab.artifacts.render import metric_cell

    assert metric_cell({"value": 0.8621, "n": 29, "ci95": [0.6944, 0.945]}) == "0.8621 [0.69, 0.95] (n=29)"
    assert metric_cell({"value": 0.0, "n": 49, "ci95": [0.0, 0.0727]}) == "0.0 [0.00, 0.07] (n=49)"
