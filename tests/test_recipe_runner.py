"""`sftlab run`: stages run in order into one folder, finished ones are skipped, a change reruns that stage and
those after it, a crash resumes, and no folder sftlab did not create is ever removed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.errors import ConfigError
from sftlab.recipe.runner import run_recipe
from sftlab.recipe.spec import load_recipe

QUIET = Console(quiet=True)


def _recipe(model: Path, lr: float = 1e-3, extra_stage: dict | None = None) -> dict:
    stages = [
        {"id": "data", "type": "prepare", "function": "shipped_mix", "params": {"general_examples": 6}},
        *([extra_stage] if extra_stage else []),
        {"id": "sft", "type": "train", "config": {"model": str(model), "data": [{"path": "${data}/train.jsonl"}],
                                                  "max_steps": 2, "batch_size": 2, "grad_accum": 1,
                                                  "learning_rate": lr, "report_to": ["none"], "max_length": 256}},
        {"id": "eval", "type": "eval", "models": ["sft"], "batch_size": 4,
         "suite": {"max_new_tokens": 4, "evaluators": [
             {"type": "identity", "name": "Orca", "identity_prompts": ["Who are you?"],
              "general_prompts": ["What is 2 + 2? " + "Think it over. " * 30]}]}},  # longer than a file name
    ]
    return {"name": "toy", "student": "tiny", "stages": stages,
            "result": {"eval": "eval", "metrics": ["identity.identity_correct"]}}


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _statuses(run) -> dict[str, str]:
    return {sid: s["status"] for sid, s in run.stages.items()}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_rerun_skips_finished_stages_and_a_change_reruns_what_follows(in_tmp, tiny_model_dir):
    path = _write(in_tmp, _recipe(tiny_model_dir))
    first = run_recipe(path, console=QUIET)
    assert _statuses(first) == {"data": "ran", "sft": "ran", "eval": "ran"}
    rows = json.loads((in_tmp / "runs/toy/result.json").read_text())["rows"]
    assert rows[0]["model"] == "sft" and rows[0]["metrics"][0]["tuned"]["n"] == 1
    assert (in_tmp / "runs/toy/report.md").exists() and (in_tmp / "runs/toy/report/sft/report.html").exists()

    assert set(_statuses(run_recipe(path, console=QUIET)).values()) == {"skipped (done, unchanged)"}
    _write(in_tmp, _recipe(tiny_model_dir, lr=2e-3))  # the train config changed: train and eval run again
    assert _statuses(run_recipe(path, console=QUIET)) == {"data": "skipped (done, unchanged)", "sft": "ran",
                                                           "eval": "ran"}
    assert _statuses(run_recipe(path, from_stage="data", console=QUIET)) == {"data": "ran", "sft": "ran",
                                                                              "eval": "ran"}



def test_a_scoring_only_change_reruns_the_eval_without_generating_again(in_tmp, tiny_model_dir, monkeypatch):
    from sftlab.generation.transformers_backend import TransformersGenerator

    raw = _recipe(tiny_model_dir)
    path = _write(in_tmp, raw)
    run_recipe(path, console=QUIET)
    calls, generate = [], TransformersGenerator.generate
    monkeypatch.setattr(TransformersGenerator, "generate",
                        lambda self, prompts, params: calls.append(len(prompts)) or generate(self, prompts, params))
    raw["stages"][-1]["suite"]["evaluators"][0]["name"] = "Nemo"  # scored differently, generated the same
    _write(in_tmp, raw)
    assert _statuses(run_recipe(path, console=QUIET))["eval"] == "ran"
    assert calls == [] and (in_tmp / "runs/toy/generations.sqlite").exists()



def test_a_recipe_reuses_the_generations_of_the_runs_it_requires(in_tmp, tiny_model_dir, monkeypatch):
    from sftlab.generation.transformers_backend import TransformersGenerator

    run_recipe(_write(in_tmp, _recipe(tiny_model_dir)), console=QUIET)
    before = (in_tmp / "runs/toy/generations.sqlite").read_bytes()
    calls, generate = [], TransformersGenerator.generate
    monkeypatch.setattr(TransformersGenerator, "generate",
                        lambda self, prompts, params: calls.append(len(prompts)) or generate(self, prompts, params))
    later = {**_recipe(tiny_model_dir, lr=2e-3), "name": "later", "requires": ["toy"]}
    run_recipe(_write(in_tmp, later), console=QUIET)
    assert sum(calls) == 2  # the new model's two prompts; the base model's replies came from the toy run
    assert (in_tmp / "runs/toy/generations.sqlite").read_bytes() == before  # read, never written


FLAKY = '''
import os
def prepare(out, *, seed=0, quick=False):
    if os.environ.get("SFTLAB_TEST_CRASH"):
        raise RuntimeError("crashed")
    (out / "x.txt").write_text("made")
    return {"x": 1}
'''


def test_a_crashed_stage_resumes_and_earlier_stages_are_kept(in_tmp, tiny_model_dir, monkeypatch):
    (in_tmp / "flaky_prep.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.setenv("SFTLAB_TEST_CRASH", "1")
    extra = {"id": "flaky", "type": "prepare", "function": "flaky_prep:prepare"}
    path = _write(in_tmp, _recipe(tiny_model_dir, extra_stage=extra))
    with pytest.raises(RuntimeError):
        run_recipe(path, console=QUIET)
    state = json.loads((in_tmp / "runs/toy/flaky/stage.json").read_text())
    assert state["status"] == "running"
    monkeypatch.delenv("SFTLAB_TEST_CRASH")
    run = run_recipe(path, console=QUIET)
    assert _statuses(run) == {"data": "skipped (done, unchanged)", "flaky": "resumed", "sft": "ran", "eval": "ran"}
    sys.modules.pop("flaky_prep", None)


def test_never_removes_a_folder_it_did_not_create(in_tmp, tiny_model_dir):
    path = _write(in_tmp, _recipe(tiny_model_dir))
    mine = in_tmp / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a recipe run folder"):
        run_recipe(path, out=mine, console=QUIET)
    run_dir = in_tmp / "runs/toy"
    run_recipe(path, console=QUIET)
    data = run_dir / "data"
    (data / "sftlab-run.json").unlink()  # now the stage folder looks like a user's folder
    with pytest.raises(ConfigError, match="refusing to remove"):
        run_recipe(path, from_stage="data", console=QUIET)
    assert (mine / "thesis.tex").read_text() == "years of work" and (data / "train.jsonl").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r["stages"][1]["config"]["data"][0].update(path="${nope}/train.jsonl"), "not an earlier stage"),
    (lambda r: r["stages"][2].update(models=["data"]), "'data' is not an earlier train stage"),
    (lambda r: r["stages"].append(dict(r["stages"][0])), "stage ids must be unique"),
    (lambda r: r["stages"][0].update(colour="red"), "colour"),
    (lambda r: r["result"].update(eval="sft"), "not an eval stage"),
    (lambda r: r["result"].update(metrics=[]), "name at least one metric"),
    (lambda r: r.update(result={"metrics": ["identity.identity_correct"]}), "name an eval stage"),
    (lambda r: r.update(result={"measures": ["sft"]}), "'sft' is not a prepare stage"),
])
def test_a_bad_recipe_is_one_clear_error_before_anything_runs(in_tmp, tiny_model_dir, change, message):
    raw = _recipe(tiny_model_dir)
    change(raw)
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write(in_tmp, raw))
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_cli_recipe_that_is_not_utf8_names_the_file_and_line(tmp_path, bom):
    """Was 'toy.yaml: not UTF-8 text (invalid byte at offset 26)' (29 after a BOM): no line to look at."""
    path = tmp_path / "toy.yaml"
    path.write_bytes(bom + b"name: toy\ndescription: caf\xe9\n")
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"{path}, line 2: not valid UTF-8 (byte 0xe9 at byte 17 of the line)" in res.output, res.output


def test_cli_lists_recipes_and_reports_errors_in_one_line(in_tmp, tiny_model_dir):
    (in_tmp / "recipes").mkdir()
    raw = _recipe(tiny_model_dir)
    (in_tmp / "recipes/toy.yaml").write_text(yaml.safe_dump({**raw, "description": "a toy recipe"}))
    (in_tmp / "recipes/plain_train.yaml").write_text("model: x\ndata: [a.jsonl]\n")  # a train config: not listed
    res = CliRunner().invoke(app, ["run", "--list"])
    assert res.exit_code == 0 and "a toy recipe" in res.output and "plain_train" not in res.output
    res = CliRunner().invoke(app, ["run", "recipes/toy.yaml", "--from", "nowhere"])
    assert res.exit_code == 2 and "--from nowhere: the recipe's stages are data, sft, eval" in res.output


def test_a_changed_input_file_reruns_the_stage_that_reads_it(in_tmp, tiny_model_dir):
    extra = in_tmp / "mine.jsonl"
    extra.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n')
    raw = _recipe(tiny_model_dir)
    raw["stages"][0]["params"]["extra_data"] = [str(extra)]
    path = _write(in_tmp, raw)
    run_recipe(path, console=QUIET)
    extra.write_text(extra.read_text().replace("Hello.", "Hello there."))  # same path, new content
    assert _statuses(run_recipe(path, console=QUIET)) == {"data": "ran", "sft": "ran", "eval": "ran"}


@pytest.mark.parametrize(("stage", "where", "typo", "message"), [
    (0, "params", {"general_exampls": 6}, r"stage data: preparer 'shipped_mix'.*general_exampls"),
    (1, "config", {"learning_rat": 0.1}, r"stage sft.*learning_rat"),
    (2, "suite", {"evaluators": [{"type": "identiti"}]}, r"stage eval.*identiti"),
], ids=["prepare", "train", "eval"])
def test_a_stage_config_typo_is_one_clear_error_before_anything_runs(in_tmp, tiny_model_dir, stage, where, typo,
                                                                     message):
    raw = _recipe(tiny_model_dir)
    raw["stages"][stage][where] = {**raw["stages"][stage][where], **typo}
    path = _write(in_tmp, raw)
    with pytest.raises(ConfigError, match=f"(?s)toy.yaml: {message}"):  # was: a traceback or an error stages later
        run_recipe(path, console=QUIET)
    assert not (in_tmp / "runs/toy/data").exists()
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "toy.yaml" in res.output and "Traceback" not in res.output


def test_a_curation_stage_typo_fails_before_anything_runs(in_tmp, tiny_model_dir):
    raw = _recipe(tiny_model_dir, extra_stage={"id": "gen", "type": "distill", "job": {
        "prompts": "${data}/train.jsonl", "teacher": str(tiny_model_dir), "max_new_tokns": 4}})
    with pytest.raises(ConfigError, match="(?s)toy.yaml: stage gen.*max_new_tokns"):
        run_recipe(_write(in_tmp, raw), console=QUIET)
    assert not (in_tmp / "runs/toy/data").exists()


def test_a_metric_name_typo_fails_naming_the_file_and_field_and_keeps_the_stages(in_tmp, tiny_model_dir):
    raw = _recipe(tiny_model_dir)
    raw["result"]["metrics"] = ["identity.identity_corect"]
    path = _write(in_tmp, raw)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "toy.yaml: result.metrics: evaluator 'identity' has no metric 'identity_corect'" in res.output
    assert not (in_tmp / "runs/toy/result.json").exists()
    raw["result"]["metrics"] = ["identity.identity_correct"]  # fixed: nothing runs again
    assert set(_statuses(run_recipe(_write(in_tmp, raw), console=QUIET)).values()) == {"skipped (done, unchanged)"}


CHAIN = '''
import os
def make(out, *, seed=0, quick=False):
    if os.environ.get("SFTLAB_TEST_CRASH"):
        raise RuntimeError("crashed")
    (out / "x.txt").write_text(os.environ.get("SFTLAB_TEST_VERSION", "1"))
    return {}
def copy(out, *, seed=0, quick=False, src=""):
    (out / "y.txt").write_text((__import__("pathlib").Path(src) / "x.txt").read_text())
    return {}
'''


def test_a_crash_after_from_still_reruns_the_stages_after_it(in_tmp, monkeypatch):
    """`--from a` crashed in a; the plain rerun resumes a, so b (its key unchanged) must not keep a's old output."""
    (in_tmp / "chain_prep.py").write_text(CHAIN)
    monkeypatch.syspath_prepend(str(in_tmp))
    path = _write(in_tmp, {"name": "toy", "stages": [
        {"id": "a", "type": "prepare", "function": "chain_prep:make"},
        {"id": "b", "type": "prepare", "function": "chain_prep:copy", "params": {"src": "${a}"}}]})
    run_recipe(path, console=QUIET)
    monkeypatch.setenv("SFTLAB_TEST_VERSION", "2")
    monkeypatch.setenv("SFTLAB_TEST_CRASH", "1")
    with pytest.raises(RuntimeError):
        run_recipe(path, from_stage="a", console=QUIET)
    monkeypatch.delenv("SFTLAB_TEST_CRASH")
    assert _statuses(run_recipe(path, console=QUIET)) == {"a": "resumed", "b": "ran"}
    assert (in_tmp / "runs/toy/b/y.txt").read_text() == "2"
    sys.modules.pop("chain_prep", None)


def test_results_never_overwrites_a_file_it_did_not_write(in_tmp, tiny_model_dir):
    from sftlab.recipe.results import render_results

    (in_tmp / "recipes").mkdir()
    (in_tmp / "recipes/toy.yaml").write_text(yaml.safe_dump(_recipe(tiny_model_dir)))
    notes = in_tmp / "notes.md"
    notes.write_text("my notes")
    res = CliRunner().invoke(app, ["results", "toy", "--out", "notes.md", "--store", "store"])
    assert res.exit_code == 2 and "notes.md" in res.output and "sftlab results" in res.output
    assert notes.read_text() == "my notes" and not (in_tmp / "runs").exists()  # refused before running anything
    page = in_tmp / "RESULTS.md"
    page.write_text(render_results(in_tmp / "store"))  # an earlier page of its own is replaced
    res = CliRunner().invoke(app, ["results", "toy", "--out", "RESULTS.md", "--store", "store"])
    assert res.exit_code == 0, res.output
    assert "| toy | sft: lora |" in page.read_text()


def test_results_refuse_a_store_holding_json_it_did_not_write(in_tmp, tiny_model_dir):
    (in_tmp / "recipes").mkdir()
    (in_tmp / "recipes/toy.yaml").write_text(yaml.safe_dump(_recipe(tiny_model_dir)))
    (in_tmp / "store").mkdir()
    mine = in_tmp / "store/toy.json"
    mine.write_text('{"a": 1}')
    res = CliRunner().invoke(app, ["results", "toy", "--store", "store"])
    assert res.exit_code == 2 and "store/toy.json" in res.output and "not a recipe result" in res.output, res.output
    assert mine.read_text() == '{"a": 1}' and not (in_tmp / "runs").exists()  # was: KeyError 'rows' after the run


def test_the_recipe_report_states_each_judge_verdict_once(tmp_path):
    """report.md: suite_markdown already ends each evaluation with its judge sentence; it was printed again."""
    from types import SimpleNamespace

    from sftlab.recipe.report import _eval_sections

    pairwise = {"judge": "j", "kind": "RubricJudge", "labels": ["tuned", "base"], "n": 4, "tuned_win_rate": 0.75,
                "base_win_rate": 0.0, "tie_rate": 0.25, "tuned_score": 0.875, "ci95": [0.5, 1.0],
                "inconsistent_orders": 0, "unparseable": 0}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"suite": "s", "subjects": {"base": "m", "tuned": "m+a"},
                                "evaluators": {"judge": {"type": "judge", "pairwise": pairwise, "samples": []}}}))
    run = SimpleNamespace(stages={"eval": {"type": "eval", "outputs": {"results": {"sft": str(path)}}}})
    assert "\n".join(_eval_sections(run)).count("tuned wins 0.75, base wins 0.0") == 1


def test_a_failed_recipe_is_one_row_of_the_results_table():
    """A multi-line error (a pydantic message) or one with '|' split the row and shifted its date out of place."""
    from sftlab.recipe.results import HEADER, table_lines

    error = "recipes/bad.yaml: stage t: invalid config\n  lora.r: Input should be 'a' | 'b'"
    lines = table_lines([{"recipe": "bad", "error": error, "date": "2026-12-02"}])
    assert len(lines) == 3 and lines[2].count("|") == len(HEADER) + 1 and lines[2].endswith("| 2026-12-02 |")
    assert "invalid config lora.r: Input should be 'a' / 'b'" in lines[2]


def test_a_failed_rerun_keeps_the_rows_last_measured(in_tmp, tiny_model_dir):
    (in_tmp / "recipes").mkdir()
    raw = _recipe(tiny_model_dir)
    (in_tmp / "recipes/toy.yaml").write_text(yaml.safe_dump(raw))
    assert CliRunner().invoke(app, ["results", "toy", "--store", "store"]).exit_code == 0
    raw["stages"][1]["config"]["learning_rat"] = 0.1
    (in_tmp / "recipes/toy.yaml").write_text(yaml.safe_dump(raw))
    for _ in range(2):  # failing twice leaves one error row
        CliRunner().invoke(app, ["results", "toy", "--store", "store"])
    rows = json.loads((in_tmp / "store/toy.json").read_text())["rows"]
    assert [("error" in r, r["recipe"]) for r in rows] == [(False, "toy"), (True, "toy")]  # was: the error row alone
    page = (in_tmp / "RESULTS.md").read_text()
    assert "| toy | sft: lora |" in page and "| toy | failed:" in page and "learning_rat" in page


def test_a_recipe_that_only_measures_is_listed_with_its_time_and_machine(in_tmp):
    """A recipe without an eval stage (the filter's checks) has no table row: its measures, and where they were made."""
    (in_tmp / "recipes").mkdir()
    raw = {"name": "checks", "stages": [{"id": "pool", "type": "prepare", "function": "corrupt_pool",
                                         "params": {"source": str(_alpaca_like(in_tmp)), "pool": 8,
                                                    "corrupt_share": 0.5}},
                                        {"id": "precision", "type": "prepare", "function": "pool_selection_quality",
                                         "params": {"selection": "${pool}/pool.jsonl",
                                                    "labels": "${pool}/labels.jsonl"}}],
           "result": {"measures": ["precision"]}}
    (in_tmp / "recipes/checks.yaml").write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["results", "checks", "--store", "store"])
    assert res.exit_code == 0, res.output
    stored = json.loads((in_tmp / "store/checks.json").read_text())
    assert stored["rows"] == [] and stored["measures"]["precision"]["selected"] == 8
    page = (in_tmp / "RESULTS.md").read_text()
    assert re.search(r"- checks / precision \(its recipe: \d+\.\d min of stage time, 20\d\d-\d\d-\d\d, .+ cores, ",
                     page)
    assert "- checks: `sftlab run recipes/checks.yaml`" in page


def _alpaca_like(folder: Path) -> Path:
    path = folder / "pool.json"
    path.write_text(json.dumps([{"instruction": f"Name a colour number {i}.", "input": "",
                                 "output": f"Colour number {i} is a shade of blue that painters like to use."}
                                for i in range(80)]))
    return path


def test_a_second_run_of_a_recipe_in_use_stops_before_touching_it(in_tmp, tiny_model_dir, other_process):
    """Two `sftlab run`s into one folder cleared and rewrote each other's stage folders."""
    path = _write(in_tmp, _recipe(tiny_model_dir))
    run_recipe(path, console=QUIET)
    run_dir = in_tmp / "runs/toy"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    other_process("from sftlab.fsutil import OutputLock\nheld = OutputLock(sys.argv[1]).acquire()", run_dir)
    with pytest.raises(ConfigError, match="being written by another sftlab process"):
        run_recipe(path, from_stage="data", console=QUIET)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


READS = '''
from pathlib import Path
def count(out, *, seed=0, quick=False, path="", prompts=()):
    n = sum(len(p.read_text()) for p in Path(path).rglob("*.jsonl")) if path else len(prompts)
    (out / "n.txt").write_text(str(n))
    return {}
'''


def _reading_recipe(in_tmp: Path, monkeypatch, params: dict) -> Path:
    (in_tmp / "reads_prep.py").write_text(READS)
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.delitem(sys.modules, "reads_prep", raising=False)  # this test's copy, not an earlier test's
    return _write(in_tmp, {"name": "toy", "stages": [
        {"id": "a", "type": "prepare", "function": "reads_prep:count", "params": params}]})


def test_a_changed_file_in_a_data_folder_reruns_the_stage_that_reads_it(in_tmp, monkeypatch):
    """Only files counted: a data source given as a folder (a saved dataset, a folder of shards) could change and
    the stage was skipped with its old output."""
    shards = in_tmp / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text('{"x": 1}\n')
    path = _reading_recipe(in_tmp, monkeypatch, {"path": str(shards)})
    run_recipe(path, console=QUIET)
    assert _statuses(run_recipe(path, console=QUIET)) == {"a": "skipped (done, unchanged)"}
    (shards / "b.jsonl").write_text('{"x": 2}\n')
    assert _statuses(run_recipe(path, console=QUIET)) == {"a": "ran"}
    assert (in_tmp / "runs/toy/a/n.txt").read_text() == "18"


def test_new_shipped_data_reruns_the_stages_that_read_it(in_tmp, monkeypatch):
    """`${heldout:KIND}` and the built-in preparers read sftlab's shipped data: a new version of it kept the old
    outputs (the stage's config as written had not changed)."""
    import shutil
    from importlib.resources import files

    import sftlab.recipe.state as state

    shipped = in_tmp / "pkg" / "resources"
    shutil.copytree(str(files("sftlab") / "resources"), shipped)
    monkeypatch.setattr(state, "files", lambda package: in_tmp / "pkg")
    state._shipped_digest.cache_clear()
    path = _reading_recipe(in_tmp, monkeypatch, {"prompts": "${heldout:identity}"})
    run_recipe(path, console=QUIET)
    assert _statuses(run_recipe(path, console=QUIET)) == {"a": "skipped (done, unchanged)"}
    with open(shipped / "heldout_identity.jsonl", "a", encoding="utf-8") as f:
        f.write('{"prompt": "And who might you be?"}\n')
    state._shipped_digest.cache_clear()  # a new sftlab version: a new process
    assert _statuses(run_recipe(path, console=QUIET)) == {"a": "ran"}
    state._shipped_digest.cache_clear()
