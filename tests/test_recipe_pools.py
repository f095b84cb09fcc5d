"""The distillation and quality-vs-quantity preparers: shipped teacher prompts kept apart from the evaluation set,
seeded samples, a corrupted pool whose labels are exact, a selection's precision, and the scorers' ROC AUC."""

from __future__ import annotations

import inspect
import json
from importlib.resources import files
from pathlib import Path

import pytest

from sftlab.data.loading import load_conversations
from sftlab.data.shipped import heldout_prompts
from sftlab.errors import ConfigError, DataError
from sftlab.recipe.preparers import PREPARERS
from sftlab.recipe.preparers.pools import (
    corrupt_pool,
    pool_selection_quality,
    sample_records,
    shipped_prompts,
)
from sftlab.recipe.preparers.scorer_auc import scorer_auc
from sftlab.textutil import normalize
from sftlab.userfn import import_callable

SUBJECTS = ["rivers", "bread", "bicycles", "volcanoes", "libraries", "tea", "bridges", "owls", "glass", "rain",
            "chess", "maps", "honey", "clocks", "salt", "kites", "coral", "paper", "wool", "comets"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def alpaca_source(tmp_path: Path, n: int = 40, repeat_first: int = 0) -> Path:
    """Short Alpaca records whose replies end a sentence (what corrupt_pool keeps); the first may repeat."""
    rows = [{"instruction": f"Tell me one fact about {SUBJECTS[i % 20]} (note {i}).", "input": "",
             "output": f"Here is a fact about {SUBJECTS[i % 20]}: they have been studied for many years, "
                       f"and record {i} describes how people use them every day."} for i in range(n)]
    rows += [rows[0]] * repeat_first
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def prompt_of(rec: dict) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def test_every_pools_preparer_is_registered_with_the_preparer_signature():
    names = {"shipped_prompts", "sample_records", "corrupt_pool", "pool_selection_quality", "scorer_auc"}
    assert names <= set(PREPARERS)
    for name in names:
        fn = import_callable(PREPARERS[name], "preparer")
        params = inspect.signature(fn).parameters
        assert list(params)[0] == "out" and params["seed"].default == 0 and params["quick"].default is False


def test_shipped_prompts_are_the_teachers_prompts_and_none_is_held_out(tmp_path):
    made = shipped_prompts(tmp_path, seed=0)
    prompts, teacher, unseen = (read_jsonl(tmp_path / f) for f in ("prompts.jsonl", "teacher.jsonl", "heldout.jsonl"))
    assert made["prompts"] == len(prompts) == len(teacher) == 300 and made["heldout"] == len(unseen) == 40
    assert [r["id"] for r in prompts] == [r["id"] for r in teacher]
    assert all([m["role"] for m in r["messages"]] == ["user"] for r in prompts)  # no answers for the other teacher
    assert [prompt_of(r) for r in prompts] == [prompt_of(r) for r in teacher]
    assert all(r["messages"][-1]["role"] == "assistant" and r["meta"]["teacher"] == "qwen2.5-coder-1.5b-instruct"
               and r["meta"]["teacher_system_prompt"] and "params" in r["meta"] for r in teacher)
    # the evaluation set (held-out prompts and the teacher's references to them) is in no output
    evaluation = {normalize(p) for kind in ("general", "identity") for p in heldout_prompts(kind)}
    references = Path(str(files("sftlab") / "resources" / "heldout_general_reference.jsonl"))
    evaluation |= {normalize(prompt_of(r)) for r in read_jsonl(references)}
    assert len(evaluation) >= 88
    for rec in prompts + teacher + unseen:
        assert normalize(prompt_of(rec)) not in evaluation
    assert not {r["id"] for r in unseen} & {r["id"] for r in prompts}
    # distill reads prompts.jsonl as a prompt set; the same seed gives the same prompts, another seed others
    convs, _ = load_conversations({"path": str(tmp_path / "prompts.jsonl"), "require_response": False})
    assert len(convs) == 300
    again = shipped_prompts(tmp_path / "again", seed=0)
    assert again == made and (tmp_path / "again" / "prompts.jsonl").read_bytes() == (
        tmp_path / "prompts.jsonl").read_bytes()
    shipped_prompts(tmp_path / "other", seed=1, n=300, heldout=0)
    assert [r["id"] for r in read_jsonl(tmp_path / "other" / "prompts.jsonl")] != [r["id"] for r in prompts]


def test_shipped_prompts_quick_system_turns_and_too_many(tmp_path):
    made = shipped_prompts(tmp_path, quick=True, system_turns=True)
    prompts = read_jsonl(tmp_path / "prompts.jsonl")
    assert made["prompts"] == len(prompts) <= 6 and made["heldout"] <= 3
    for r in prompts:  # the other teacher is asked the way the shipped teacher was
        assert r["messages"][0] == {"role": "system", "content": r["meta"]["teacher_system_prompt"]}
    with pytest.raises(ConfigError, match="n \\+ heldout 2000"):
        shipped_prompts(tmp_path / "big", n=1990, heldout=10)


def test_sample_records_is_a_seeded_subset_in_source_order(tmp_path):
    source = alpaca_source(tmp_path, n=30)
    made = sample_records(tmp_path / "a", seed=3, source=str(source), n=10)
    sample = read_jsonl(tmp_path / "a" / "sample.jsonl")
    assert made["sampled"] == len(sample) == 10 and made["loaded"] == 30
    notes = [int(prompt_of(r).split("note ")[1].rstrip(").")) for r in sample]
    assert notes == sorted(notes) and len(set(notes)) == 10
    sample_records(tmp_path / "b", seed=3, source={"path": str(source)}, n=10)
    assert (tmp_path / "b" / "sample.jsonl").read_bytes() == (tmp_path / "a" / "sample.jsonl").read_bytes()
    sample_records(tmp_path / "c", seed=4, source=str(source), n=10)
    assert read_jsonl(tmp_path / "c" / "sample.jsonl") != sample
    assert sample_records(tmp_path / "q", quick=True, source=str(source), n=300)["sampled"] <= 6
    with pytest.raises(ConfigError, match="n 31"):
        sample_records(tmp_path / "d", source=str(source), n=31)
    with pytest.raises(DataError, match="file not found"):
        sample_records(tmp_path / "e", source=str(tmp_path / "missing.json"), n=1)


def test_sample_records_on_the_alpaca_sample(tmp_path, shared_data):
    made = sample_records(tmp_path, seed=0, source=str(shared_data / "alpaca_en_demo.json"), n=300)
    assert made["loaded"] == 999 and made["sampled"] == 300
    assert len({r["id"] for r in read_jsonl(tmp_path / "sample.jsonl")}) == 300


def test_corrupt_pool_labels_every_record_exactly(tmp_path):
    source = alpaca_source(tmp_path, n=40, repeat_first=2)
    made = corrupt_pool(tmp_path / "p", seed=0, source=str(source), pool=30, corrupt_share=0.5, heldout=6)
    pool, labels, kept = (read_jsonl(tmp_path / "p" / f) for f in ("pool.jsonl", "labels.jsonl", "heldout.jsonl"))
    assert made["pool"] == len(pool) == len(labels) == 30 and made["heldout"] == len(kept) == 6
    assert sum(lab["corruption"] != "clean" for lab in labels) == made["corrupted"] == 15
    assert [lab["id"] for lab in labels] == [r["id"] for r in pool] and len({r["id"] for r in pool}) == 30
    originals = {r["instruction"]: r["output"] for r in json.loads(source.read_text())}
    for rec, lab in zip(pool, labels, strict=True):
        reply_was = originals[prompt_of(rec)]
        assert (rec["messages"][-1]["content"] == reply_was) == (lab["corruption"] == "clean")
        assert rec["meta"]["corruption"] == lab["corruption"]
    assert not {prompt_of(r) for r in kept} & {prompt_of(r) for r in pool if "note 0)" not in prompt_of(r)}
    assert corrupt_pool(tmp_path / "q", quick=True, source=str(source))["pool"] <= 12
    with pytest.raises(ConfigError, match="corrupt_share 1.5"):
        corrupt_pool(tmp_path / "r", source=str(source), corrupt_share=1.5)


def test_a_selection_of_clean_records_beats_random_and_bad_ids_are_named(tmp_path):
    source = alpaca_source(tmp_path, n=40)
    corrupt_pool(tmp_path / "p", seed=1, source=str(source), pool=34, corrupt_share=0.5, heldout=6)
    labels = tmp_path / "p" / "labels.jsonl"
    clean = [r for r, lab in zip(read_jsonl(tmp_path / "p" / "pool.jsonl"), read_jsonl(labels), strict=True)
             if lab["corruption"] == "clean"]
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean[:12]), encoding="utf-8")
    q = pool_selection_quality(tmp_path / "q", selection=str(tmp_path / "clean.jsonl"), labels=labels)
    assert q["precision"] == 1.0 and q["random_precision"] == 0.5 and q["corrupted_selected"] == 0
    assert q["p_random_as_clean"] < 0.001  # 12 clean of 12 drawn from 17 clean + 17 corrupted
    assert json.loads((tmp_path / "q" / "selection_quality.json").read_text())["precision"] == 1.0
    everything = pool_selection_quality(tmp_path / "w", selection=str(tmp_path / "p" / "pool.jsonl"), labels=labels)
    assert everything["precision"] == everything["random_precision"] and everything["p_random_as_clean"] == 1.0
    stranger = {"id": "not-in-pool", "messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]}
    (tmp_path / "stranger.jsonl").write_text(json.dumps(stranger) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1.*field 'id'"):
        pool_selection_quality(tmp_path / "s", selection=str(tmp_path / "stranger.jsonl"), labels=labels)
    (tmp_path / "bad_labels.jsonl").write_text('{"id": "a", "corruption": "clean"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad_labels.jsonl, line 2, field 'corruption'"):
        pool_selection_quality(tmp_path / "t", selection=str(tmp_path / "clean.jsonl"),
                               labels=tmp_path / "bad_labels.jsonl")


def test_the_filter_on_a_corrupted_pool_is_cleaner_than_the_pool(tmp_path):
    from sftlab.curate.filter.pipeline import make_filter_config, run_filter

    source = alpaca_source(tmp_path, n=60)
    made = corrupt_pool(tmp_path / "p", seed=0, source=str(source), pool=50, corrupt_share=0.4, heldout=5)
    cfg = make_filter_config({"pool": [str(tmp_path / "p" / "pool.jsonl")], "output": str(tmp_path / "sel.jsonl"),
                              "target_size": 50, "diversity": {"method": "none"}})
    run_filter(cfg)
    q = pool_selection_quality(tmp_path / "q", selection=str(tmp_path / "sel.jsonl"),
                               labels=tmp_path / "p" / "labels.jsonl")
    assert q["corrupted_in_pool"] == made["corrupted"] == 20
    assert q["precision"] > q["random_precision"] and q["p_random_as_clean"] < 0.05


def labelled_source(tmp_path: Path) -> Path:
    good = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                          {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}], "label": True}
            for a in range(1, 9)]
    bad = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                         {"role": "assistant", "content": "As an AI language model, I cannot help with that request."}],
            "label": False} for a in range(1, 9)]
    path = tmp_path / "kto.json"
    path.write_text(json.dumps([r for pair in zip(good, bad, strict=True) for r in pair]), encoding="utf-8")
    return path


def test_scorer_auc_quick_with_a_tiny_model(tmp_path, tiny_model_dir, one_torch_thread):
    result = scorer_auc(tmp_path, quick=True, source=str(labelled_source(tmp_path)),
                        scorers=["heuristics", "length", "perplexity", "ifd", "rubric", "rubric_reference"],
                        model=str(tiny_model_dir))
    assert result["n"] == 6 and result["desirable"] == 3
    assert set(result["auc"]) == {"heuristics", "length", "perplexity", "ifd", "rubric", "rubric_reference",
                                  "combined(perplexity+ifd+rubric+rubric_reference)"}
    assert all(0.0 <= v <= 1.0 for v in result["auc"].values())
    assert result["auc"]["heuristics"] == 1.0  # the boilerplate refusal is what the heuristics catch
    assert result["auc"]["length"] == 0.0  # here the bad replies are the longer ones
    assert json.loads((tmp_path / "auc.json").read_text())["auc"] == result["auc"]


def test_scorer_auc_refuses_unknown_scorers_and_unusable_labels(tmp_path):
    source = labelled_source(tmp_path)
    with pytest.raises(ConfigError, match="bleu"):
        scorer_auc(tmp_path, source=str(source), scorers=["length", "bleu"], model="unused")
    rows = json.loads(source.read_text())
    (tmp_path / "one.json").write_text(json.dumps([r for r in rows if r["label"]]), encoding="utf-8")
    with pytest.raises(DataError, match="both labels"):
        scorer_auc(tmp_path, source=str(tmp_path / "one.json"), scorers=["length"], model="unused")
    rows[3]["label"] = "yes"
    (tmp_path / "odd.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match="record 3, field 'label'"):
        scorer_auc(tmp_path, source=str(tmp_path / "odd.json"), scorers=["length"], model="unused")


def test_scorer_auc_on_the_kto_sample(tmp_path, shared_data):
    result = scorer_auc(tmp_path, source=str(shared_data / "kto_en_demo.json"), scorers=["heuristics", "length"],
                        model="unused")
    assert result["n"] == 300 and result["desirable"] == 150
    assert result["auc"] == {"heuristics": 0.5267, "length": 0.5078}  # as in examples/results/kto_auc.json
