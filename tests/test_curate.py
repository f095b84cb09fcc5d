"""Distillation and best-of-k pipelines on tiny models: records, provenance, resume after kill -9, cache."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlab.curate.best_of_k import best_of_k
from sftlab.curate.distill import distill
from sftlab.curate.rewards import JudgeReward
from sftlab.curate.store import ResumableJsonl
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation, Turn
from sftlab.errors import ConfigError, SftlabError
from sftlab.generation import SamplingParams, TransformersGenerator
from sftlab.generation.base import Generation, as_messages
from sftlab.generation.cache import GenerationCache, stable_key
from sftlab.templates.chat_templates import ensure_chat_template


@pytest.fixture()
def tiny_gen(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return TransformersGenerator(model, tiny_tokenizer, batch_size=4, model_id="tiny")


def _prompts(n=6):
    return [Conversation([Turn("user", f"What is {i} plus {i}?"), Turn("assistant", f"#### {2 * i}")], id=f"p{i}")
            for i in range(n)]


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_distill_writes_sft_records_with_provenance(tiny_gen, tmp_path):
    out = tmp_path / "d.jsonl"
    params = SamplingParams(max_new_tokens=5, temperature=1.0, n=2, seed=1)
    stats = distill(_prompts(), tiny_gen, out, params, system_prompt="Be brief.", keep_unfinished=True)
    rows = _rows(out)
    assert stats.records == len(rows) == 12 and stats.samples == 12
    r = rows[0]
    assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    assert r["meta"]["generator"] == "tiny" and r["meta"]["params"]["n"] == 2 and r["meta"]["source_id"] == "p0"
    assert r["messages"][1]["content"] == "What is 0 plus 0?"  # the reference reply is not part of the prompt
    convs, report = load_conversations(DataSpec(path=str(out)))  # the output is ordinary SFT data
    assert report.loaded == 12


def test_a_multi_turn_prompt_ending_with_a_user_turn_is_answered_whole(tiny_gen, tmp_path):
    """[user, assistant, user]: the teacher answers the last user turn, with the earlier turns as context (the
    prompt used to be cut before the last assistant turn, so the first question was answered again)."""
    turns = [Turn("user", "Name a fruit."), Turn("assistant", "Apple."), Turn("user", "Now a vegetable?")]
    params = SamplingParams(max_new_tokens=3)
    distill([Conversation(turns, id="m")], tiny_gen, tmp_path / "d.jsonl", params, keep_unfinished=True)
    msgs = _rows(tmp_path / "d.jsonl")[0]["messages"]
    assert [m["content"] for m in msgs[:3]] == ["Name a fruit.", "Apple.", "Now a vegetable?"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    best_of_k([Conversation(turns, id="m")], tiny_gen, lambda p, r, ref: float(ref is None and len(p) == 3),
              tmp_path / "b.jsonl", params, min_score=1, keep_unfinished=True)
    row = _rows(tmp_path / "b.jsonl")[0]
    assert row["messages"][2]["content"] == "Now a vegetable?" and row["meta"]["reference"] is None


def test_distill_drops_unfinished_replies_and_counts_them(tiny_gen, tmp_path):
    stats = distill(_prompts(3), tiny_gen, tmp_path / "d.jsonl", SamplingParams(max_new_tokens=3))
    assert stats.records == 0 and stats.skipped["reply hit max_new_tokens"] == 3
    # nothing is lost: every prompt is remembered as done, a re-run does not redo them
    again = distill(_prompts(3), tiny_gen, tmp_path / "d.jsonl", SamplingParams(max_new_tokens=3))
    assert again.already_done == 3 and again.samples == 0


def test_empty_and_too_long_prompts_are_counted_skips(tiny_gen, tmp_path):
    prompts = [Conversation([Turn("user", "   ")], id="e"), Conversation([Turn("user", "word " * 600)], id="long"),
               Conversation([Turn("user", "ok")], id="ok")]
    stats = distill(prompts, tiny_gen, tmp_path / "d.jsonl", SamplingParams(max_new_tokens=4), keep_unfinished=True)
    assert stats.skipped["empty prompt"] == 1 and stats.skipped["prompt longer than the context window"] == 1
    assert stats.records == 1


def test_best_of_k_keeps_best_and_reports(tiny_gen, tmp_path):
    def reward(prompt, response, reference):  # a user reward: prefers longer replies
        return float(len(response))

    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=4, seed=3)
    stats = best_of_k(_prompts(4), tiny_gen, reward, tmp_path / "b.jsonl", params, reward_name="len",
                      keep_unfinished=True)  # the random model never ends its turn
    rows = _rows(tmp_path / "b.jsonl")
    assert len(rows) == 4 and stats.extra["pass@4"] == 1.0
    for r in rows:
        m = r["meta"]
        assert m["score"] == max(m["all_scores"]) and m["k"] == 4 and m["reward"] == "len" and m["rank"] == 0
    none = best_of_k(_prompts(4), tiny_gen, reward, tmp_path / "c.jsonl", params, min_score=1e9,
                     keep_unfinished=True)
    assert none.records == 0 and none.extra["prompts_without_acceptable_sample"] == 4
    assert none.extra["pass@4"] == 0.0


@pytest.mark.parametrize("broken", [float("nan"), float("inf")])
def test_a_reward_that_is_not_a_finite_number_stops_best_of_k_with_finished_prompts_kept(tiny_gen, tmp_path, broken):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=0)

    def reward(prompt, response, reference):  # fine for the first prompt, broken for the second
        return broken if prompt[-1]["content"] == _prompts(2)[1].turns[0].content else 1.0

    with pytest.raises(SftlabError, match=f"reward 'r' gave {broken} for prompt"):  # was: NaN kept as the best
        best_of_k(_prompts(2), tiny_gen, reward, tmp_path / "b.jsonl", params, reward_name="r", batch_size=1,
                  keep_unfinished=True)
    assert len(_rows(tmp_path / "b.jsonl")) == 1  # the first prompt's record stays: a re-run resumes


def test_best_of_k_never_keeps_a_sample_cut_off_at_max_new_tokens(tiny_gen, tmp_path):
    """A cut-off reply may still score (its last number can be the right one), but it teaches the student to stop
    mid-sentence: like distill, best-of-k drops it (counted) unless keep_unfinished."""
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=3, seed=0)
    stats = best_of_k(_prompts(3), tiny_gen, lambda p, r, ref: 1.0, tmp_path / "b.jsonl", params, min_score=1)
    assert stats.records == 0 and not (tmp_path / "b.jsonl").read_text()
    assert stats.skipped["reply hit max_new_tokens"] == 9 and stats.extra["prompts_without_acceptable_sample"] == 3
    assert stats.extra["pass@1"] == stats.extra["pass@3"] == 0.0  # was 1.0: every prompt "passed", none kept
    kept = best_of_k(_prompts(3), tiny_gen, lambda p, r, ref: 1.0, tmp_path / "k.jsonl", params, min_score=1,
                     keep_unfinished=True)
    assert kept.records == 3 and all(not r["meta"]["finished"] for r in _rows(tmp_path / "k.jsonl"))
    assert kept.extra["pass@3"] == 1.0


def test_best_of_k_with_a_real_judge_model(tiny_gen, tmp_path):
    """The judge is a (tiny, random) instruct model: its replies are unparseable, and that is counted."""
    judge = JudgeReward(tiny_gen)
    stats = best_of_k(_prompts(2), tiny_gen, judge, tmp_path / "j.jsonl", SamplingParams(max_new_tokens=4, n=2,
                                                                                          temperature=1.0))
    assert stats.extra["unparseable_judgements"] == judge.unparseable == judge.judged == 4


def test_cache_avoids_paying_twice(tiny_gen, tmp_path):
    cache = GenerationCache(tmp_path / "cache.sqlite")
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=2)
    first = distill(_prompts(), tiny_gen, tmp_path / "a.jsonl", params, keep_unfinished=True, cache=cache)
    second = distill(_prompts(), tiny_gen, tmp_path / "b.jsonl", params, keep_unfinished=True, cache=cache)
    assert first.cache_hits == 0 and second.cache_hits == 6
    strip = [{k: v for k, v in r.items()} for r in _rows(tmp_path / "a.jsonl")]
    assert [r["messages"] for r in strip] == [r["messages"] for r in _rows(tmp_path / "b.jsonl")]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _tool_prompt(tools=TOOLS):
    return Conversation([Turn("user", "Weather in Paris?"), Turn("assistant", "", tool_calls=[
        {"name": "get_weather", "arguments": {"city": "Paris"}}])], id="w", tools=tools)


def test_distill_shows_the_teacher_the_tools_and_keeps_them(tiny_gen, tmp_path):
    """The teacher answers a tool prompt as training renders it, tools included (it was given the messages
    alone, so the records carried tools their replies were written without); the records keep the tools."""
    params = SamplingParams(max_new_tokens=8)
    shown = tiny_gen.generate([_tool_prompt()], params)[0][0].text
    assert shown != tiny_gen.generate([as_messages(_tool_prompt())], params)[0][0].text  # the tools matter
    distill([_tool_prompt()], tiny_gen, tmp_path / "d.jsonl", params, system_prompt="Be brief.",
            keep_unfinished=True)
    row = _rows(tmp_path / "d.jsonl")[0]
    system = Conversation([Turn("system", "Be brief."), *_tool_prompt().turns], tools=TOOLS)
    assert row["messages"][-1]["content"] == tiny_gen.generate([system], params)[0][0].text
    assert row["tools"] == TOOLS and [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    best_of_k([_tool_prompt()], tiny_gen, lambda p, r, ref: 1.0, tmp_path / "b.jsonl", params, keep_unfinished=True)
    row = _rows(tmp_path / "b.jsonl")[0]
    assert row["messages"][-1]["content"] == shown and row["tools"] == TOOLS


def test_the_cache_never_answers_a_prompt_with_other_tools(tiny_gen, tmp_path):
    """The key is the prompt: its messages and tools (not the record's id or reference reply, as in other runs)."""
    cache = GenerationCache(tmp_path / "cache.sqlite")
    params = SamplingParams(max_new_tokens=4)
    other = [{"type": "function", "function": {"name": "book_table", "parameters": {"type": "object"}}}]
    renamed = Conversation([*_tool_prompt().turns[:-1], Turn("assistant", "Sunny.")], id="w2", tools=TOOLS)
    first = distill([_tool_prompt()], tiny_gen, tmp_path / "a.jsonl", params, keep_unfinished=True, cache=cache)
    second = distill([_tool_prompt(other)], tiny_gen, tmp_path / "b.jsonl", params, keep_unfinished=True,
                     cache=cache)
    again = distill([renamed], tiny_gen, tmp_path / "c.jsonl", params, keep_unfinished=True, cache=cache)
    assert (first.cache_hits, second.cache_hits, again.cache_hits) == (0, 0, 1)  # `second` was a hit
    assert _rows(tmp_path / "b.jsonl")[0]["messages"][-1]["content"] == \
        tiny_gen.generate([_tool_prompt(other)], params)[0][0].text


def test_a_tool_reply_cached_before_calls_were_kept_is_generated_again(tiny_gen, tmp_path):
    """Before 43ec8d2 a server's structured tool call was cached as an empty, unfinished reply, keyed by the
    prompt's messages and tools; served from the cache, distill would drop the call on every rerun."""
    cache = GenerationCache(tmp_path / "cache.sqlite")
    params = SamplingParams(max_new_tokens=4)
    prompt = Conversation(_tool_prompt().turns[:1], tools=TOOLS)
    cache.put(stable_key(tiny_gen.model_id, as_messages(prompt), params.to_dict(), TOOLS),
              [Generation(text="", n_tokens=9, finished=False)])
    stats = distill([_tool_prompt()], tiny_gen, tmp_path / "a.jsonl", params, keep_unfinished=True, cache=cache)
    assert stats.cache_hits == 0
    assert _rows(tmp_path / "a.jsonl")[0]["messages"][-1]["content"] == tiny_gen.generate([prompt], params)[0][0].text


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "o.jsonl"
    w = ResumableJsonl(path)
    w.write_group("a", [{"id": "a-0"}])
    w.close()
    with open(path, "a") as f:
        f.write('{"id": "b-0", "meta": {"key": "b"')  # what a kill during the next write leaves
    w = ResumableJsonl(path)
    assert w.done == {"a"} and path.read_text().count("\n") == 1 and path.read_text().endswith("\n")
    w.close()


def test_a_second_curation_onto_an_out_in_use_stops_before_touching_it(tmp_path, other_process):
    """Two jobs appending to one --out interleaved their groups (and each truncated the other's torn tail)."""
    path = tmp_path / "o.jsonl"
    other_process("from sftlab.curate.store import ResumableJsonl\n"
                  "w = ResumableJsonl(sys.argv[1])\nw.write_group('a', [{'id': 'a-0'}])", path)
    written = path.read_bytes()
    with pytest.raises(ConfigError, match="being written by another sftlab process"):
        ResumableJsonl(path)
    assert path.read_bytes() == written


def test_resume_after_kill_9_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about number {i}."}) + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "sftlab.cli", "curate", "distill", "--prompts", str(prompts), "--teacher",
           str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "24", "--batch-size", "2",
           "--keep-unfinished", "--no-cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 6 <= partial < 40, "the run must be killed mid-way for this test to mean anything"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    keys = [r["meta"]["key"] for r in rows]
    assert len(rows) == 40 and len(set(keys)) == 40
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(f"Tell me about number {i}." for i in range(40))
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["already_done"] >= partial and summary["processed"] == 40 - summary["already_done"]
