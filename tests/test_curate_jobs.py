"""Curation jobs from a mapping (what a recipe stage holds) do what the `sftlab curate` commands do, and a wrong
field is a ConfigError that names it."""

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.curate.filter.config import make_filter_config
from sftlab.curate.jobs import BestOfKJob, DistillJob, run_best_of_k, run_distill, run_filter_config
from sftlab.errors import ConfigError

console = Console(stderr=True, quiet=True)


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"}) + "\n"
                            for i in range(3)))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(path: Path) -> dict:
    """The summary file without its timings (they differ from run to run)."""
    drop = {"seconds", "samples_per_s", "tokens_per_s"}
    return {k: v for k, v in json.loads(path.with_suffix(".summary.json").read_text()).items() if k not in drop}


@pytest.mark.parametrize(("job_cls", "run", "command", "options"), [
    (DistillJob, run_distill, "distill", {"n": 2, "temperature": 0.9, "system": "Be brief.", "keep_unfinished": True}),
    (BestOfKJob, run_best_of_k, "best-of-k", {"k": 2, "reward": "exact", "select": "all", "keep_unfinished": True}),
])
def test_a_job_from_a_mapping_writes_what_the_command_writes(job_cls, run, command, options, prompts,
                                                            tiny_model_dir, tmp_path):
    model = "teacher" if job_cls is DistillJob else "policy"
    common = {"prompts": str(prompts), model: str(tiny_model_dir), "max_new_tokens": 3, "batch_size": 2,
              "seed": 7, **options}
    summary = run(job_cls.from_mapping({**common, "out": str(tmp_path / "job.jsonl")}), console)
    argv = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    r = CliRunner().invoke(app, ["curate", command, *argv, "--out", str(tmp_path / "cli.jsonl")])
    assert r.exit_code == 0, r.output
    job_records, cli_records = _records(tmp_path / "job.jsonl"), _records(tmp_path / "cli.jsonl")
    assert len(job_records) == 6 and job_records == cli_records
    assert summary.records_written == 6 and _summary(tmp_path / "job.jsonl") == _summary(tmp_path / "cli.jsonl")


@pytest.mark.parametrize(("raw", "expected"), [
    ({"prompts": "p.jsonl", "out": "o.jsonl", "max_tokens": 8}, "unknown field 'max_tokens'; did you mean "
                                                                "'max_new_tokens'?"),
    ({"prompts": "p.jsonl", "out": "o.jsonl", "n": "many"}, "field 'n': Input should be a valid integer"),
    ({"prompts": "p.jsonl", "out": "o.jsonl", "base_url": 5}, "field 'base_url': Input should be a valid list"),
    ({"out": "o.jsonl"}, "field 'prompts': Field required"),
])
def test_a_wrong_field_is_a_config_error_naming_it(raw, expected):
    with pytest.raises(ConfigError, match="^recipe.yaml, stage distill: " + expected.replace("?", r"\?")):
        DistillJob.from_mapping(raw, "recipe.yaml, stage distill")


def test_best_of_k_job_refuses_a_distill_field():
    with pytest.raises(ConfigError, match="unknown field 'teacher'"):
        BestOfKJob.from_mapping({"prompts": "p.jsonl", "out": "o.jsonl", "teacher": "m"})


@pytest.mark.parametrize(("extra", "expected"), [
    ({"n": 0}, "n 0: must be at least 1"),
    ({"vllm": {"tensor_parallel_size": 0}}, "--vllm: field 'tensor_parallel_size'"),
    ({"vllm": {"tensor_parallel_size": 2}, "base_url": ["http://127.0.0.1:9/v1"]}, "with --base-url"),
    ({"max_prompts": 0}, "--max-prompts 0: must be at least 1"),
])
def test_bad_values_are_refused_before_any_model_loads(extra, expected, prompts, tmp_path):
    """The teacher does not exist: the job fails on the value, not on loading a model."""
    job = DistillJob.from_mapping({"prompts": str(prompts), "teacher": str(tmp_path / "no-model"),
                                   "out": str(tmp_path / "o.jsonl"), **extra})
    with pytest.raises(ConfigError, match=expected):
        run_distill(job, console)
    assert not (tmp_path / "o.jsonl").exists()


def test_an_output_that_is_the_input_is_refused(prompts, tmp_path):
    before = prompts.read_bytes()
    job = BestOfKJob.from_mapping({"prompts": str(prompts), "policy": str(tmp_path / "no-model"),
                                   "out": str(prompts)})
    with pytest.raises(ConfigError, match="can never be an input"):
        run_best_of_k(job, console)
    assert prompts.read_bytes() == before


def test_filter_job_from_a_mapping_selects_like_the_command(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Explain topic {i} in one sentence.",
                                        "output": f"Topic {i} is about the number {i} and what it means."}) + "\n"
                            for i in range(12)))
    raw = {"pool": [str(pool)], "output": str(tmp_path / "job.jsonl"), "target_size": 5,
           "diversity": {"method": "kcenter"}}
    result = run_filter_config(make_filter_config(raw), console)
    r = CliRunner().invoke(app, ["curate", "filter", "--pool", str(pool), "--out", str(tmp_path / "cli.jsonl"),
                                 "--target-size", "5", "--diversity", "kcenter"])
    assert r.exit_code == 0, r.output
    assert len(result.selected) == 5 and _records(tmp_path / "job.jsonl") == _records(tmp_path / "cli.jsonl")
    with pytest.raises(ConfigError, match="field 'output'"):
        run_filter_config(make_filter_config({"pool": [str(pool)]}), console)
    with pytest.raises(ConfigError, match="input"):
        run_filter_config(make_filter_config({**raw, "output": str(pool)}), console)
    assert len(pool.read_text().splitlines()) == 12


@pytest.mark.parametrize(("job_cls", "command"), [(DistillJob, "distill"), (BestOfKJob, "best-of-k")])
def test_a_job_has_one_described_field_per_command_option(job_cls, command):
    import typer

    options = typer.main.get_command(app).commands["curate"].commands[command].params
    assert {o.name for o in options} == set(job_cls.model_fields)
    assert all(f.description for f in job_cls.model_fields.values())
    for o in options:  # same defaults, the same required options
        field = job_cls.model_fields[o.name]
        if o.required:
            assert field.is_required(), o.name
        else:
            assert field.get_default() == (list(o.default or []) if o.multiple else o.default), o.name


def test_best_of_k_sends_a_system_prompt_and_a_resume_with_another_is_refused(prompts, tiny_model_dir, tmp_path):
    raw = {"prompts": str(prompts), "policy": str(tiny_model_dir), "out": str(tmp_path / "o.jsonl"), "k": 2,
           "reward": "exact", "max_new_tokens": 4, "max_prompts": 2, "system": "Reason in plain sentences.",
           "keep_unfinished": True}
    run_best_of_k(BestOfKJob.from_mapping(raw), console)
    records = _records(tmp_path / "o.jsonl")
    assert records and all(r["messages"][0] == {"role": "system", "content": "Reason in plain sentences."}
                           for r in records)
    with pytest.raises(ConfigError):
        run_best_of_k(BestOfKJob.from_mapping({**raw, "system": "Use code."}), console)


@pytest.mark.parametrize("command", ["distill", "best-of-k"])
def test_unreadable_prompt_records_are_counted_in_the_summary(command, tiny_model_dir, tmp_path):
    """A prompt record that cannot be read is a skip like any other: in the summary file, not only on the console."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello there"}\n{"prompt": 5}\nnot json\n')
    model = ["--teacher"] if command == "distill" else ["--k", "1", "--reward", "exact", "--policy"]
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["curate", command, "--prompts", str(prompts), *model, str(tiny_model_dir),
                                 "--out", str(out), "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    skipped = _summary(out)["skipped"]
    assert skipped["bad prompt record (wrong type)"] == 1 and skipped["bad prompt record (invalid JSON)"] == 1
