"""Curation never destroys a user's file, resumes to exactly the uninterrupted output, and refuses bad options.

The engine is either the tiny random model (through the CLI) or `ScriptedEngine`, a real, deterministic
`Generator` whose replies depend on the prompt alone, so "resumed == uninterrupted" can be compared byte for byte.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.curate.best_of_k import best_of_k
from sftlab.curate.distill import distill
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.errors import SftlabError
from sftlab.generation.base import Generation, SamplingParams
from sftlab.generation.cache import GenerationCache

runner = CliRunner()


class Crash(Exception):
    """Stands for a kill: the engine stops answering after some batches."""


class ScriptedEngine:
    """Reply j to a prompt is `reply j to <prompt>` (+ padding): deterministic and independent of batching."""

    def __init__(self, model_id: str = "scripted", pad: int = 0, crash_after: int | None = None) -> None:
        self.model_id, self.pad, self.crash_after, self.calls = model_id, pad, crash_after, 0

    def generate(self, prompts, params):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise Crash
        self.calls += 1
        return [[Generation(f"reply {j} to {p[-1]['content']}" + " pad" * self.pad, 4 + self.pad, True)
                 for j in range(params.n)] for p in prompts]


def _prompts_file(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def _convs(path: Path):
    return load_conversations(DataSpec(path=str(path), require_response=False))[0]


def _cli(*args: str):
    return runner.invoke(app, ["curate", *args])


def _distill_cli(prompts, out, model, *extra: str):
    return _cli("distill", "--prompts", str(prompts), "--teacher", str(model), "--out", str(out),
                "--max-new-tokens", "2", "--keep-unfinished", "--no-cache", *extra)


@pytest.fixture()
def prompts(tmp_path) -> Path:
    return _prompts_file(tmp_path / "prompts.jsonl", [f"Tell me about {i}." for i in range(3)])


# 1. an existing file that is not ours, or an input, is never touched ----------------------------------------------

def _pretty_json(p: Path) -> None:
    p.write_text(json.dumps([{"id": i, "text": "x" * 100} for i in range(100)], indent=2))


def _foreign_jsonl(p: Path) -> None:
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(5)))


@pytest.mark.parametrize("make, expected", [
    (_pretty_json, "was not written by sftlab curate"),
    (_foreign_jsonl, "was not written by sftlab curate"),
])
def test_existing_foreign_output_is_refused_and_untouched(make, expected, prompts, tiny_model_dir, tmp_path):
    out = tmp_path / "existing.json"
    make(out)
    before = out.read_bytes()
    r = _distill_cli(prompts, out, tiny_model_dir)
    assert r.exit_code == 2 and expected in r.output and str(out) in r.output, r.output
    assert out.read_bytes() == before
    assert not (tmp_path / "existing.json.manifest.json").exists()


@pytest.mark.parametrize("command", ["distill", "best-of-k"])
def test_output_can_never_be_the_input(command, tiny_model_dir, tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", [f"What is {i} plus {i}?" for i in range(4)])
    before = src.read_bytes()
    model_opt = "--teacher" if command == "distill" else "--policy"
    r = _cli(command, "--prompts", str(src), model_opt, str(tiny_model_dir), "--out", str(src),
             "--max-new-tokens", "2", "--no-cache")
    assert r.exit_code == 2 and "can never be an input" in r.output, r.output
    assert src.read_bytes() == before


def test_companion_file_can_never_be_the_input(tiny_model_dir, tmp_path):
    """--out x.jsonl writes x.summary.json: with --prompts x.summary.json that would replace the prompts."""
    src = tmp_path / "x.summary.json"
    src.write_text(json.dumps([{"prompt": "hello"}]))
    before = src.read_bytes()
    r = _distill_cli(src, tmp_path / "x.jsonl", tiny_model_dir)
    assert r.exit_code == 2 and "can never be an input" in r.output and str(src) in r.output, r.output
    assert src.read_bytes() == before


@pytest.mark.parametrize("name, content, expected", [
    ("o.summary.json", b'{"my": "own notes"}', "is not a run summary written by sftlab curate"),
    ("o.cache.sqlite", b"not a database at all", "is not a SQLite generation cache"),
    ("o.jsonl.done", b"0123456789abcdef01234567\n", "exists without o.jsonl.manifest.json"),
])
def test_companion_files_of_someone_else_are_refused_and_untouched(name, content, expected, prompts,
                                                                   tiny_model_dir, tmp_path):
    """--out o.jsonl also writes o.summary.json, o.cache.sqlite and o.jsonl.done: none may be someone else's."""
    other = tmp_path / name
    other.write_bytes(content)
    r = _cli("distill", "--prompts", str(prompts), "--teacher", str(tiny_model_dir), "--out", str(tmp_path / "o.jsonl"),
             "--max-new-tokens", "2", "--keep-unfinished")
    assert r.exit_code == 2 and expected in r.output and str(other) in r.output, r.output
    assert other.read_bytes() == content and not (tmp_path / "o.jsonl").exists()


def test_output_folder_is_a_clear_error(prompts, tiny_model_dir, tmp_path):
    folder = tmp_path / "outdir"
    folder.mkdir()
    r = _distill_cli(prompts, folder, tiny_model_dir)
    assert r.exit_code == 2 and "is a folder" in r.output and str(folder) in r.output, r.output


def test_own_output_changed_by_hand_is_refused_and_untouched(tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", ["a", "b"])
    out = tmp_path / "o.jsonl"
    distill(_convs(src), ScriptedEngine(), out, SamplingParams(max_new_tokens=4))
    with open(out, "a") as f:
        f.write('{"note": "added by hand"}\n')
    before = out.read_bytes()
    with pytest.raises(SftlabError, match=r"line 3: not a record written by this curation run"):
        distill(_convs(src), ScriptedEngine(), out, SamplingParams(max_new_tokens=4))
    assert out.read_bytes() == before


# 2. groups are atomic: a partial group left by a crash is redone, never kept half --------------------------------

def test_partial_group_is_redone_and_resume_equals_uninterrupted(tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(5)])
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=3)
    full = tmp_path / "full.jsonl"
    distill(_convs(src), ScriptedEngine(), full, params)
    lines = full.read_bytes().splitlines(keepends=True)
    assert len(lines) == 15
    crashed = tmp_path / "crashed.jsonl"
    manifest = tmp_path / "full.jsonl.manifest.json"
    if manifest.exists():  # the run's own state travels with its output
        shutil.copy(manifest, tmp_path / "crashed.jsonl.manifest.json")
    # what a crash during the third group's write leaves: two whole groups, one record of the third, a torn line
    crashed.write_bytes(b"".join(lines[:7]) + lines[7][:25])
    stats = distill(_convs(src), ScriptedEngine(), crashed, params)
    assert stats.already_done == 2 and stats.processed == 3
    assert crashed.read_bytes() == full.read_bytes()


# 3. the settings are part of the output: a different run on the same --out is refused ----------------------------

BASE = {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0}


@pytest.mark.parametrize("change, expected", [
    ({"temperature": 0.7}, "temperature 0.0 -> 0.7"),
    ({"temperature": 0.7, "n": 2}, "n 1 -> 2"),
    ({"max_new_tokens": 8}, "max_new_tokens 4 -> 8"),
    ({"temperature": 0.7, "seed": 1}, "seed 0 -> 1"),
    ({"top_p": 0.9}, "top_p 1.0 -> 0.9"),
])
def test_distill_with_other_sampling_settings_is_refused(change, expected, tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", ["a", "b"])
    out = tmp_path / "o.jsonl"
    distill(_convs(src), ScriptedEngine(), out, SamplingParams(**BASE))
    before = out.read_bytes()
    with pytest.raises(SftlabError, match="made with different settings") as e:
        distill(_convs(src), ScriptedEngine(), out, SamplingParams(**{**BASE, **change}))
    assert expected in str(e.value) and str(out) in str(e.value)
    assert out.read_bytes() == before


@pytest.mark.parametrize("kwargs, expected", [
    ({"system_prompt": "Be brief."}, "system_prompt null -> \"Be brief.\""),
    ({"keep_unfinished": True}, "keep_unfinished false -> true"),
    ({"engine": ScriptedEngine(model_id="other-teacher")}, 'generator "scripted" -> "other-teacher"'),
])
def test_distill_with_other_pipeline_settings_is_refused(kwargs, expected, tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", ["a", "b"])
    out = tmp_path / "o.jsonl"
    distill(_convs(src), ScriptedEngine(), out, SamplingParams(**BASE))
    engine = kwargs.pop("engine", ScriptedEngine())
    with pytest.raises(SftlabError, match="made with different settings") as e:
        distill(_convs(src), engine, out, SamplingParams(**BASE), **kwargs)
    assert expected in str(e.value)


def _len_reward(prompt, response, reference):
    return float(len(response))


@pytest.mark.parametrize("kwargs, expected", [
    ({"reward_name": "other"}, 'reward "len" -> "other"'),
    ({"select": "all"}, 'select "best" -> "all"'),
    ({"min_score": 3.0}, "min_score null -> 3.0"),
])
def test_best_of_k_with_other_settings_is_refused(kwargs, expected, tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", ["a", "b"])
    out = tmp_path / "b.jsonl"
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2)
    best_of_k(_convs(src), ScriptedEngine(), _len_reward, out, params, reward_name="len")
    with pytest.raises(SftlabError, match="made with different settings") as e:
        best_of_k(_convs(src), ScriptedEngine(), _len_reward, out, params, **{"reward_name": "len", **kwargs})
    assert expected in str(e.value)


def test_cli_rerun_with_another_temperature_is_refused(prompts, tiny_model_dir, tmp_path):
    out = tmp_path / "o.jsonl"
    assert _distill_cli(prompts, out, tiny_model_dir).exit_code == 0
    before = out.read_bytes()
    r = _distill_cli(prompts, out, tiny_model_dir, "--temperature", "0.7")
    assert r.exit_code == 2 and "temperature 0.0 -> 0.7" in r.output and "use a new --out" in r.output, r.output
    assert out.read_bytes() == before
    again = _distill_cli(prompts, out, tiny_model_dir)  # the same settings resume: nothing to redo
    assert again.exit_code == 0 and json.loads(out.with_suffix(".summary.json").read_text())["already_done"] == 3


# 4. duplicates are curated once, so the output does not depend on the crash history -----------------------------

def test_duplicates_and_crash_history_do_not_change_the_output(tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", ["a", "b", "a", "c", "b", "d"])
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2)
    once = distill(_convs(src), ScriptedEngine(), tmp_path / "once.jsonl", params, batch_size=1)
    assert once.skipped["duplicate prompt"] == 2 and once.records == 8
    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(Crash):
        distill(_convs(src), ScriptedEngine(crash_after=2), resumed, params, batch_size=1)
    with pytest.raises(Crash):  # a second crash, at another point
        distill(_convs(src), ScriptedEngine(crash_after=1), resumed, params, batch_size=1)
    last = distill(_convs(src), ScriptedEngine(), resumed, params, batch_size=1)
    assert last.already_done == 3 and last.skipped["duplicate prompt"] == 2 and last.records_in_file == 8
    assert resumed.read_bytes() == (tmp_path / "once.jsonl").read_bytes()


# 5. options that cannot mean what was asked are refused before any model is loaded -------------------------------

@pytest.mark.parametrize("command, args, expected", [
    ("best-of-k", ["--k", "0"], "k 0: must be at least 1"),
    ("distill", ["--n", "0"], "n 0: must be at least 1"),
    ("distill", ["--temperature", "-1"], "temperature -1.0: must be >= 0"),
    ("distill", ["--temperature", "nan"], "temperature nan: must be >= 0"),
    ("distill", ["--temperature", "1", "--top-p", "0"], "top_p 0.0: must be in (0, 1]"),
    ("distill", ["--temperature", "1", "--top-p", "1.5"], "top_p 1.5: must be in (0, 1]"),
    ("best-of-k", ["--select", "bogus"], "select 'bogus': must be one of best, all"),
    ("best-of-k", ["--min-score", "nan"], "min_score nan: must be a finite number"),
    ("distill", ["--batch-size", "0"], "batch_size 0: must be at least 1"),
    ("best-of-k", ["--batch-size", "0"], "batch_size 0: must be at least 1"),
    ("distill", ["--max-new-tokens", "0"], "max_new_tokens 0: must be at least 1"),
    ("best-of-k", ["--k", "3", "--temperature", "0"], "greedy decoding gives 3 identical replies"),
    ("distill", ["--n", "2"], "greedy decoding gives 2 identical replies"),
    ("distill", ["--max-prompts", "0"], "--max-prompts 0: must be at least 1"),
])
def test_bad_options_are_clear_errors(command, args, expected, prompts, tiny_model_dir, tmp_path):
    out = tmp_path / "o.jsonl"
    model = ["--teacher", str(tiny_model_dir)] if command == "distill" else \
        ["--policy", str(tiny_model_dir), "--reward", "exact"]
    r = _cli(command, "--prompts", str(prompts), *model, "--out", str(out), *args)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert not out.exists()


def test_no_usable_prompt_is_an_error_not_an_empty_success(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no prompt here"}\n{"title": "nor here"}\n')
    r = _distill_cli(bad, tmp_path / "o.jsonl", tiny_model_dir)
    assert r.exit_code == 2 and "no prompts to curate" in r.output and str(bad) in r.output, r.output
    assert "cannot detect the record format" in r.output  # the first problem, so the user knows what to fix
    assert not (tmp_path / "o.jsonl").exists()


# 6. a full disk: a clear error naming the file, only whole groups on disk, and the re-run completes ---------------

@pytest.fixture()
def small_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root); skipped where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("with_cache", [False, True])
def test_disk_full_keeps_whole_groups_and_resume_completes(with_cache, small_disk, tmp_path):
    src = _prompts_file(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(12)])
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2)
    engine = ScriptedEngine(pad=800)  # ~3.2 KB per record, ~6.5 KB per group
    distill(_convs(src), engine, tmp_path / "reference.jsonl", params, batch_size=1)
    out = small_disk / "out.jsonl"
    cache = GenerationCache(small_disk / "out.cache.sqlite") if with_cache else None
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (256 - 36 - (24 if with_cache else 0)) * 1024)
    with pytest.raises(SftlabError) as e:
        distill(_convs(src), engine, out, params, cache=cache, batch_size=1)
    msg = str(e.value)
    assert "no space left on the device" in msg or "disk is full" in msg, msg
    assert str(small_disk) in msg and "re-run the same command to resume" in msg
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert 0 < len(rows) < 24 and len(rows) % 2 == 0 and out.read_bytes().endswith(b"\n")
    assert [r["meta"]["group_index"] for r in rows] == [0, 1] * (len(rows) // 2)
    filler.unlink()
    cache = GenerationCache(small_disk / "out.cache.sqlite") if with_cache else None
    stats = distill(_convs(src), engine, out, params, cache=cache, batch_size=1)
    assert stats.already_done == len(rows) // 2
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


# 7. `curate filter` replaces only a selection it wrote, and never an input ----------------------------------------

def _pool(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question number {i} about things?",
                                        "completion": f"A fine answer number {i} with several words."}) + "\n"
                            for i in range(8)))
    return path


def _filter(pool: Path, out: Path, *extra: str):
    return _cli("filter", "--pool", str(pool), "--out", str(out), "--target-size", "3", "--diversity", "none", *extra)


def test_filter_refuses_an_existing_file_it_did_not_write(tmp_path):
    pool, out = _pool(tmp_path / "pool.jsonl"), tmp_path / "mine.jsonl"
    out.write_text("my own notes\n")
    r = _filter(pool, out)
    assert r.exit_code == 2 and "not a selection written by sftlab curate filter" in r.output, r.output
    assert "--overwrite" in r.output and out.read_text() == "my own notes\n"
    r = _filter(pool, out, "--overwrite")  # the explicit flag replaces it
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 3
    assert _filter(pool, out).exit_code == 0  # its own selection may be replaced by a re-run


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_filter_never_writes_into_a_report_folder_it_did_not_write(flags, tmp_path):
    pool, out = _pool(tmp_path / "pool.jsonl"), tmp_path / "sel.jsonl"
    folder = tmp_path / "sel.report"  # where the report of sel.jsonl goes: here a folder of the user's
    folder.mkdir()
    (folder / "decisions.jsonl").write_text("my own decisions\n")
    r = _filter(pool, out, *flags)
    assert r.exit_code == 2 and "did not write" in r.output, r.output  # was: decisions.jsonl replaced
    assert (folder / "decisions.jsonl").read_text() == "my own decisions\n" and not out.exists()
    (folder / "decisions.jsonl").unlink()
    assert _filter(pool, out).exit_code == 0 and _filter(pool, out).exit_code == 0  # its own report: re-run fine


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_filter_output_can_never_be_the_pool(flags, tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")
    before = pool.read_bytes()
    r = _filter(pool, pool, *flags)
    assert r.exit_code == 2 and "can never be an input" in r.output, r.output
    assert pool.read_bytes() == before

