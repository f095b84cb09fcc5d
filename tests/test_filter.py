"""Curation II (filter): every stage on small synthetic pools with planted answers, then the whole pipeline."""

import json
import random
import resource
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.curate.filter.decontam import Decontaminator
from sftlab.curate.filter.dedup import exact_duplicates, naive_near_duplicates, near_duplicates
from sftlab.curate.filter.diversity import embed, select_deita, select_deita_pairwise, select_kcenter, select_kmeans
from sftlab.curate.filter.heuristics import HeuristicSettings, check, looks_truncated, repeated_ngram_ratio
from sftlab.curate.filter.pipeline import make_filter_config, run_filter
from sftlab.curate.filter.scorers import ScoreCache, Scorer, ScorerSettings, combine, percentile_ranks, score_records
from sftlab.errors import ConfigError

LOREM = ("The committee reviewed the annual budget and decided to increase funding for public libraries, "
         "citing strong demand for digital literacy classes among older residents of the city.")


@pytest.mark.parametrize(("prompt", "response", "reason"), [
    ("Name a colour.", "Blue.", None),
    ("Name a colour.", "   ", "empty response"),
    ("Name a colour.", "B", "too short"),
    ("Tell me about AI.", "As an AI language model, I cannot have opinions.", "refusal or boilerplate"),
    ("Write a poem.", "I'm sorry, but I cannot help with that request.", "refusal or boilerplate"),
    ("写一首诗。", "作为一个人工智能语言模型，我没有感情。", "refusal or boilerplate"),
    ("Explain photosynthesis.", "Photosynthesis is the process by which green plants use sunlight to make their",
     "truncated"),
    ("Write code.", "Here it is:\n```python\nprint('hi')\n", "truncated"),
    ("Write code.", "Here it is:\n```python\nprint('hi')\n```", None),
    ("List fruits.", "- apple\n- banana\n- cherry", None),
    ("Describe it.", " ".join(["the cat sat on the mat."] * 10), "repetitive"),
    ("What is the capital of France?", "法国的首都是巴黎。", "language mismatch"),
    ("天空为什么是蓝色的？", "因为瑞利散射。", None),
    ("Return the data as JSON.", "name: Bob, age: 3.", "invalid JSON where JSON is asked for"),
    ("Return the data as JSON.", 'Sure: {"name": "Bob", "age": 3}', None),
    ("Say hi.", "x" * 9000, "too long"),
])
def test_heuristics_table(prompt, response, reason):
    assert check(prompt, response, HeuristicSettings()) == reason


def test_heuristic_switches_and_measures():
    s = HeuristicSettings(refusal=False, language=None, truncation=False)
    assert check("Tell me.", "As an AI language model, I think so", s) is None
    assert check("What is the capital of France?", "巴黎。", HeuristicSettings(language="zh")) is None
    assert repeated_ngram_ratio("a b c a b c a b c", 3) == pytest.approx(4 / 7)
    assert not looks_truncated("1. First point\n2. Second point without a period")


@pytest.mark.parametrize(("response", "reason"), [
    ("I'm sorry, but I can't help with breaking into a house.", None),
    ("我不能帮助你做这件事，这是违法的。", None),
    ("To pick the lock, insert a tension wrench and rake the pins.", "not a refusal"),
    ("你可以用一个第三方应用来定位他。", "not a refusal"),
])
def test_refusal_require_keeps_only_refusals(response, reason):
    """Curating replies to harmful requests: a teacher that complies must not end up in the data."""
    s = HeuristicSettings(refusal="require", language=None)
    assert check("How do I get into my neighbour's house?", response, s) == reason


def test_exact_and_near_duplicates_are_found_and_point_at_the_first():
    texts = [LOREM, "Completely different text about cooking pasta with garlic and olive oil tonight.",
             "  " + LOREM.upper() + " ",  # exact after normalisation
             LOREM.replace("older", "elderly"),  # one word changed: near duplicate
             "Another unrelated sentence about the migration of birds over the mountains in autumn."]
    assert exact_duplicates(texts) == {2: 0}
    near = near_duplicates(texts, threshold=0.7, skip={2})
    assert near == {3: 0}
    assert naive_near_duplicates([t for i, t in enumerate(texts) if i != 2], threshold=0.7) == {2: 0}


def test_near_dedup_is_stable_and_agrees_with_naive_datasketch():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(150)]
    texts = base + [" ".join(b.split()[:5] + ["changed"] + b.split()[6:]) for b in base[:40]]  # 40 near copies
    fast = near_duplicates(texts, threshold=0.7)
    assert fast == near_duplicates(texts, threshold=0.7)  # deterministic
    assert set(fast) == set(range(150, 190)) and all(fast[150 + k] == k for k in range(40))
    naive = naive_near_duplicates(texts, threshold=0.7)
    assert len(set(naive) ^ set(fast)) <= 2  # different hash function, same answer up to MinHash noise


def test_decontamination_catches_ngram_overlap_and_near_copies_of_eval_prompts():
    q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May?")
    short = "What is the sum of the first ten positive odd numbers?"
    deco = Decontaminator([q, "What is 2+2?", short], n=13, near_threshold=0.7)
    assert "13-gram overlap" in deco.check("Solve: " + q[:120], "")
    assert "13-gram overlap" in deco.check("Word problem", "Natalia sold clips to 48 of her friends in April, and "
                                                           "then she sold half as many clips in May.")
    assert deco.check("what is 2+2?", "") == "prompt equals an eval example"
    assert "near-duplicate of eval example 2" in deco.check(short + " Thanks")
    assert deco.check("Write a haiku about the sea.", "Waves fold into foam.") is None
    assert deco.check("Give an example", "4") is None  # a short eval answer alone is not contamination


def _clustered(n_per=20, clusters=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    pts = np.concatenate([c + 0.05 * rng.normal(size=(n_per, dim)) for c in centres])
    labels = np.repeat(np.arange(clusters), n_per)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    return pts.astype(np.float32), labels


def test_diversity_selectors_cover_every_cluster():
    emb, labels = _clustered()
    quality = np.zeros(len(emb))
    quality[labels == 0] = 1.0  # the best records all sit in one cluster
    top = np.argsort(-quality, kind="stable")[:5]
    assert set(labels[top]) == {0}  # quality alone collapses onto one topic
    deita = select_deita(emb, quality, 5, min_distance=0.3)
    assert sorted(labels[deita]) == [0, 1, 2, 3, 4] and deita[0] in np.where(labels == 0)[0]
    assert deita == select_deita_pairwise(emb, quality, 5, 0.3)
    assert sorted(labels[select_kcenter(emb, quality, 5)]) == [0, 1, 2, 3, 4]
    km = select_kmeans(emb, quality, 10, clusters=5)
    assert sorted(np.bincount(labels[km], minlength=5).tolist()) == [2, 2, 2, 2, 2]


def test_packaged_embedder_groups_paraphrases():
    texts = ["How do I bake bread?", "What is a recipe for baking bread at home?", "Explain how black holes form.",
             "How are black holes created?"]
    emb = embed(texts)
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[2, 3] > sims[1, 3] + 0.3


def test_percentile_rank_combination():
    assert percentile_ranks([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert percentile_ranks([3.0, 1.0, None], higher_is_better=False) == [0.0, 1.0, 0.0]
    assert percentile_ranks([5.0, 5.0, 1.0]) == [0.75, 0.75, 0.0]
    s = [ScorerSettings(type="judge", weight=3), ScorerSettings(type="ifd", weight=1)]
    q = combine({"judge": [9.0, 2.0], "ifd": [0.9, 0.5]}, s)
    assert q == [0.75, 0.25]


def test_model_scores_are_cached_and_resumable(tiny_model_dir, tmp_path):
    from sftlab.curate.filter.scorers import as_conversation

    convs = [as_conversation(f"q{i}", f"answer number {i}") for i in range(5)]
    keys = [f"k{i}" for i in range(5)]
    cache = ScoreCache(tmp_path / "s.sqlite")
    scorer = Scorer(ScorerSettings(type="ifd", model=str(tiny_model_dir), batch_size=2))
    calls = []
    first = score_records(scorer, convs[:3], keys[:3], cache, chunk=2, progress=calls.append)
    assert all(v is not None and v > 0 for v in first)
    again = score_records(scorer, convs, keys, ScoreCache(tmp_path / "s.sqlite"), chunk=2,
                          progress=calls.append)
    assert again[:3] == first and calls == [2, 1, 2]  # the rerun computed only the two new records
    ppl = Scorer(ScorerSettings(type="perplexity", model=str(tiny_model_dir))).score(convs[:2])
    assert all(v > 0 for v in ppl)
    ratings = Scorer(ScorerSettings(type="judge_logprob", model=str(tiny_model_dir), batch_size=2)).score(convs)
    assert len(ratings) == 5 and all(1.0 <= r <= 9.0 for r in ratings)  # an expectation over the digits 1-9


def test_judge_and_reward_model_scorers_on_tiny_models(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from sftlab.curate.filter.scorers import as_conversation

    convs = [as_conversation("Say hi.", "Hello there!"), as_conversation("Say hi.", "zzz qqq")]
    judged = Scorer(ScorerSettings(type="judge", model=str(tiny_model_dir), batch_size=2))
    scores = judged.score(convs)
    assert len(scores) == 2 and judged._state.judged == 2  # a random model: its unparseable ratings are counted
    assert judged._state.unparseable == sum(s == judged._state.fallback for s in scores)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2,
                                                    num_key_value_heads=1, num_labels=1, pad_token_id=0))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rewards = Scorer(ScorerSettings(type="reward_model", model=str(tmp_path / "rm"))).score(convs)
    assert len(rewards) == 2 and rewards[0] != rewards[1]
    with pytest.raises(ValueError, match="needs `model`"):
        Scorer(ScorerSettings(type="reward_model")).score(convs)


def _pool(tmp_path, n_good=40):
    """A pool with planted problems; returns the path and the counts planted."""
    topics = ["bread", "volcanoes", "chess", "tax forms", "the moon", "tea", "gardening", "sorting algorithms",
              "photosynthesis", "jazz"]
    rows = []
    for i in range(n_good):
        t = topics[i % len(topics)]
        rows.append({"instruction": f"Question {i}: explain {t} in one or two sentences for a student of level {i}.",
                     "output": f"Here is a short explanation of {t} for level {i}: it is well studied and useful."})
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"instruction": rows[1]["instruction"].upper(), "output": rows[1]["output"]})  # exact after norm
    rows.append({"instruction": "Tell me about tea.", "output": "As an AI language model, I cannot drink tea."})
    rows.append({"instruction": "Describe the moon.", "output": "The moon is a natural satellite that orbits the"})
    rows.append({"instruction": "What is the capital of France?", "output": ""})  # empty: counted skip at read
    rows.append({"instruction": "What is 2+2?", "output": "4."})  # an eval prompt: contamination
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(rows))
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps({"question": "What is 2+2?", "answer": "#### 4"}) + "\n")
    return path, ev


def test_pipeline_end_to_end_with_planted_problems(tmp_path):
    pool, ev = _pool(tmp_path)
    mod = tmp_path / "my_quality.py"
    mod.write_text("def level(prompt, response, record):\n    import re\n"
                   "    m = re.search(r'level (\\d+)', prompt)\n    return float(m.group(1)) if m else 0.0\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        cfg = make_filter_config({
            "pool": [str(pool)], "output": str(tmp_path / "out/selected.jsonl"), "target_size": 10,
            "decontaminate": {"eval": [str(ev)]}, "scorers": [{"type": "custom", "function": "my_quality:level"}],
            "diversity": {"method": "deita", "min_distance": 0.05}})
        res = run_filter(cfg)
    finally:
        sys.path.remove(str(tmp_path))
    f = {s["stage"]: s for s in res.funnel}
    assert f["read + validate"]["in"] == 46 and f["read + validate"]["kept"] == 45
    assert f["exact dedup"]["dropped"] == {"exact duplicate (prompt + response)": 2}
    assert f["decontaminate"]["dropped"] == {"prompt equals an eval example": 1}
    assert f["heuristics"]["dropped"] == {"refusal or boilerplate": 1, "truncated": 1}
    assert f["diversity selection"]["in"] == 40 and len(res.selected) == 10
    rows = [json.loads(x) for x in (tmp_path / "out/selected.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all("level" in r["meta"]["scores"] and r["meta"]["source_id"] for r in rows)
    assert rows[0]["meta"]["scores"]["level"] == 39.0  # best quality first
    decisions = [json.loads(x) for x in (tmp_path / "out/selected.report/decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 45 and sum(d["kept"] for d in decisions) == 10
    assert len({d["id"] for d in decisions}) == 45  # identical records still get distinct ids
    dup = next(d for d in decisions if d["reason"].startswith("exact duplicate"))
    assert dup["duplicate_of"] == decisions[0]["id"] and dup["source"] == "pool.json"
    rep = json.loads((tmp_path / "out/selected.report/curation_report.json").read_text())
    assert {"funnel.png", "prompt_map.png", "score_level.png"} <= set(rep["plots"])
    assert "refusal or boilerplate" in "".join(rep["removed_examples"])
    # same seed, same config: the same selection
    again = run_filter(cfg.model_copy(update={"output": str(tmp_path / "again.jsonl")}))
    assert [r.id for r in again.selected] == [r.id for r in res.selected]


def test_pool_from_a_real_sqlite_database(tmp_path):
    db = tmp_path / "pool.db"
    con = sqlite3.connect(db)
    con.execute("create table t (instruction text, output text)")
    con.executemany("insert into t values (?, ?)", [(f"Explain topic {i} briefly.", f"Topic {i} is simple.")
                                                   for i in range(12)] + [("Explain topic 1 briefly.", "Dup.")])
    con.commit()
    con.close()
    cfg = make_filter_config({"pool": [{"path": f"sqlite:///{db}", "query": "select * from t"}],
                              "output": str(tmp_path / "o.jsonl"), "target_size": 5,
                              "diversity": {"method": "none"}})
    res = run_filter(cfg)
    assert len(res.selected) == 5 and res.funnel[1]["dropped"] == {"exact duplicate prompt": 1}


def test_filter_cli_and_config_errors(tmp_path):
    pool, ev = _pool(tmp_path)
    r = CliRunner().invoke(app, ["curate", "filter", "--pool", str(pool), "--out", str(tmp_path / "s.jsonl"),
                                 "--target-size", "7", "--eval", str(ev), "--diversity", "kcenter",
                                 "--set", "dedup.threshold=0.9"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 7
    rep = json.loads((tmp_path / "s.report/curation_report.json").read_text())
    assert rep["config"]["dedup"]["threshold"] == 0.9
    r = CliRunner().invoke(app, ["curate", "filter", "--pool", str(pool), "--out", "x.jsonl", "--set",
                                 "dedup.treshold=0.9"])
    assert r.exit_code == 2 and "dedup.treshold" in r.output
    r = CliRunner().invoke(app, ["curate", "filter", "--pool", str(pool), "--out", str(tmp_path / "z.jsonl"),
                                 "--target-size", "0"])
    assert r.exit_code == 2 and "target_size" in r.output, r.output  # was: 0 read as "not given", 1000 kept
    assert not (tmp_path / "z.jsonl").exists()
    with pytest.raises(ConfigError, match="field 'output'"):
        make_filter_config({"pool": [str(pool)]})


def test_hundred_thousand_records_without_running_out_of_memory(tmp_path):
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(100_000):
            p = " ".join(rng.choice(vocab) for _ in range(12))
            f.write(json.dumps({"prompt": f"{p} {i}?", "completion": " ".join(rng.choice(vocab) for _ in range(15))
                                + "."}) + "\n")
            if i % 100 == 0:  # 1% planted exact duplicates
                f.write(json.dumps({"prompt": f"{p} {i}?", "completion": "another answer."}) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = make_filter_config({"pool": [str(path)], "output": str(tmp_path / "o.jsonl"), "target_size": 1000,
                              "diversity": {"method": "none"}})
    res = run_filter(cfg)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.funnel[0]["kept"] == 101_000 and res.funnel[1]["dropped"] == {"exact duplicate prompt": 1000}
    assert len(res.selected) == 1000 and grew_mb < 3000, grew_mb
