"""The data the demo ships: enough varied prompts, identity answers with placeholders, and held-out sets that
really are held out (no exact or near-duplicate of any training prompt). Fast: no models."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "src" / "sftlab" / "resources"
PROMPTS = ROOT / "data" / "demo" / "prompts.jsonl"
IDENTITY = RESOURCES / "identity.jsonl"
PARAPHRASES = RESOURCES / "identity_paraphrases.jsonl"  # the teacher's rewrites of IDENTITY's questions
OLD_GENERAL = RESOURCES / "general.jsonl"  # the old shipped general set; checked while it exists
HELDOUT_IDENTITY = RESOURCES / "heldout_identity.jsonl"
HELDOUT_GENERAL = RESOURCES / "heldout_general.jsonl"

CATEGORIES = {"factual", "explanation", "list", "rewrite", "summary", "classification", "arithmetic",
              "word_problem", "translation", "creative", "refusal", "advice", "definition", "coding"}
CJK = re.compile(r"[\u4e00-\u9fff]")
IDENTITY_QUESTION = re.compile(
    r"who are you|what are you\b|your name|call you|who (made|built|created|trained|developed|owns) you|"
    r"about yourself|introduce yourself|are you (a |an )?(human|robot|ai|chatgpt|gpt|claude|gemini|qwen|llama)|"
    r"你是谁|你叫什么|你的名字|称呼你|介绍一下你|你是.{0,6}(开发|创造|训练)|谁(开发|创造|训练)了你|你是(人类|机器人)",
    re.IGNORECASE)
HELDOUT_MAX_SIMILARITY = 0.6  # character 5-gram Jaccard: at or above this a held-out prompt counts as seen
TRAINING_MAX_SIMILARITY = 0.7  # stricter than the 0.8 asked for: "What's X?" vs "What is X?" scores 0.72
OTHER_ASSISTANTS = re.compile(r"chatgpt|gpt-4|openai|claude|anthropic|gemini|google|qwen|通义|alibaba|llama|meta|"
                              r"siri|alexa", re.IGNORECASE)


def read_jsonl(path: Path) -> list[dict]:
    """Every line must be one JSON object: a broken line would silently shrink the demo data."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path}:{number}: empty line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path}:{number}: not a JSON object"
        rows.append(row)
    return rows


def normalise(text: str) -> str:
    """Lowercase letters and digits only, so punctuation or spacing changes do not hide a duplicate."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def grams(text: str, n: int = 5) -> frozenset[str]:
    """Character n-grams of the normalised text (the whole text when shorter than n)."""
    s = normalise(text)
    return frozenset(s[i:i + n] for i in range(len(s) - n + 1)) or frozenset({s})


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def chinese_share(texts: list[str]) -> float:
    return sum(bool(CJK.search(t)) for t in texts) / len(texts)


def identity_pairs() -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in read_jsonl(IDENTITY)]


def training_prompts(rewrites: bool = True) -> dict[str, str]:
    """Every user prompt the demo may train on, keyed by where it comes from (`rewrites`: with the teacher's
    rewrites of the identity questions, which are near-duplicates of them by design)."""
    out = {f"{PROMPTS.name}:{r['id']}": r["prompt"] for r in read_jsonl(PROMPTS)}
    out |= {f"{IDENTITY.name}:{i}": q for i, (q, _) in enumerate(identity_pairs(), 1)}
    if rewrites:
        out |= {f"{PARAPHRASES.name}:{r['id']}": r["messages"][0]["content"] for r in read_jsonl(PARAPHRASES)}
    if OLD_GENERAL.exists():
        for i, r in enumerate(read_jsonl(OLD_GENERAL), 1):
            out[f"{OLD_GENERAL.name}:{i}"] = (r["instruction"] + "\n" + r.get("input", "")).strip()
    return out


def near_pairs(items: dict[str, frozenset[str]], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs above `threshold`, comparing only pairs that share at least one n-gram (an inverted index)."""
    by_gram: dict[str, list[str]] = {}
    for key, gs in items.items():
        for g in gs:
            by_gram.setdefault(g, []).append(key)
    candidates = {pair for keys in by_gram.values() for pair in combinations(keys, 2)}
    found = [(a, b, jaccard(items[a], items[b])) for a, b in candidates]
    return [f for f in found if f[2] > threshold]


def test_prompts_file_has_enough_varied_prompts_per_category_and_language():
    rows = read_jsonl(PROMPTS)
    assert len(rows) >= 650
    assert all(set(r) == {"id", "category", "lang", "prompt"} for r in rows)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"g\d{4}", i) for i in ids)
    per_category = Counter(r["category"] for r in rows)
    assert set(per_category) == CATEGORIES
    assert min(n for c, n in per_category.items() if c != "coding") >= 35, per_category
    assert per_category["coding"] >= 10
    for r in rows:
        assert r["lang"] in {"en", "zh"} and isinstance(r["prompt"], str) and 4 <= len(r["prompt"]) <= 1200, r
        assert bool(CJK.search(r["prompt"])) == (r["lang"] == "zh"), f"lang does not match the text: {r}"
    assert 0.10 <= chinese_share([r["prompt"] for r in rows]) <= 0.25
    zh_categories = {r["category"] for r in rows if r["lang"] == "zh"}
    assert zh_categories == CATEGORIES, "Chinese prompts should be spread across all categories"


def test_prompts_file_holds_no_identity_questions():
    rows = read_jsonl(PROMPTS)
    assert [r for r in rows if IDENTITY_QUESTION.search(r["prompt"])] == []


def test_identity_conversations_answer_with_name_and_author():
    rows = read_jsonl(IDENTITY)
    assert len(rows) >= 90
    for r in rows:
        assert set(r) == {"messages"}
        (user, assistant) = r["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant"), r
        answer = assistant["content"]
        assert "{{name}}" in answer and "{{author}}" in answer, r
        assert len(answer) <= 200 and answer.rstrip()[-1] in ".!?。！？", f"answer not short and complete: {r}"
        assert len(re.findall(r"[.!?。！？]+", answer)) <= 2, f"more than two sentences: {r}"
        if OTHER_ASSISTANTS.search(user["content"]):
            assert re.match(r"No\b|不", answer), f"must deny being another assistant: {r}"
    assert chinese_share([q for q, _ in identity_pairs()]) >= 0.25
    questions = [normalise(q) for q, _ in identity_pairs()]
    assert len(set(questions)) == len(questions)


def test_identity_rewrites_keep_their_originals_answer_and_language():
    """Each teacher rewrite is a new question, in its original's language, with that original's answer."""
    answer_of = dict(identity_pairs())
    rows = read_jsonl(PARAPHRASES)
    assert len(rows) >= 150
    seen = {normalise(q) for q in answer_of}
    for r in rows:
        (user, assistant), original = r["messages"], r["meta"]["paraphrase_of"]
        assert assistant["content"] == answer_of[original], r
        assert bool(CJK.search(user["content"])) == bool(CJK.search(original)), r
        assert normalise(user["content"]) not in seen, r
        seen.add(normalise(user["content"]))
        assert r["meta"]["teacher"] == "qwen2.5-coder-1.5b-instruct" and r["meta"]["params"]["temperature"] == 0


def test_identity_file_loads_with_the_demo_substitutions():
    from sftlab.data.loading import DataSpec, load_conversations

    convs, report = load_conversations(DataSpec(path=str(IDENTITY), substitutions={"name": "Orca", "author": "X"}))
    assert report.loaded == len(read_jsonl(IDENTITY)) and report.format == "messages"
    assert all("{{" not in t.content and "Orca" in c.turns[-1].content for c in convs for t in c.turns)


def test_prompts_file_loads_as_a_prompt_set():
    from sftlab.data.loading import DataSpec, load_conversations

    convs, report = load_conversations(DataSpec(path=str(PROMPTS), require_response=False))
    assert report.loaded == len(read_jsonl(PROMPTS)) and report.format == "prompt_completion"


def test_heldout_identity_questions():
    rows = read_jsonl(HELDOUT_IDENTITY)
    assert len(rows) >= 36
    assert all(set(r) == {"id", "lang", "prompt"} and r["lang"] in {"en", "zh"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(bool(CJK.search(r["prompt"])) == (r["lang"] == "zh") for r in rows)
    assert chinese_share([r["prompt"] for r in rows]) >= 0.25


def test_heldout_general_prompts():
    rows = read_jsonl(HELDOUT_GENERAL)
    assert len(rows) >= 48
    assert all(set(r) == {"id", "lang", "category", "prompt"} and r["lang"] in {"en", "zh"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(bool(CJK.search(r["prompt"])) == (r["lang"] == "zh") for r in rows)
    per_category = Counter(r["category"] for r in rows)
    assert set(per_category) <= CATEGORIES
    assert all(per_category[c] >= 2 for c in ("translation", "arithmetic", "list", "rewrite")), per_category
    assert 0.10 <= chinese_share([r["prompt"] for r in rows]) <= 0.25
    traps = [r for r in rows if re.search(r"\bname\b|introduc", r["prompt"], re.IGNORECASE)]
    assert len(traps) >= 2, "a few prompts must tempt a careless identity model to answer with its identity"
    assert not [r for r in rows if IDENTITY_QUESTION.search(r["prompt"])]


@pytest.mark.parametrize("heldout", [HELDOUT_IDENTITY, HELDOUT_GENERAL], ids=lambda p: p.name)
def test_heldout_prompts_are_not_in_training(heldout):
    train = {key: (normalise(text), grams(text)) for key, text in training_prompts().items()}
    problems = []
    for r in read_jsonl(heldout):
        text, gs = normalise(r["prompt"]), grams(r["prompt"])
        for key, (train_text, train_grams) in train.items():
            similarity = jaccard(gs, train_grams)
            if text == train_text or similarity >= HELDOUT_MAX_SIMILARITY:
                problems.append(f"{r['id']} {r['prompt']!r} ~ {key} (jaccard {similarity:.2f})")
    assert problems == []


def test_heldout_sets_do_not_repeat_themselves():
    rows = read_jsonl(HELDOUT_IDENTITY) + read_jsonl(HELDOUT_GENERAL)
    assert near_pairs({r["id"]: grams(r["prompt"]) for r in rows}, TRAINING_MAX_SIMILARITY) == []


def test_training_prompts_have_no_near_duplicates():
    prompts = training_prompts(rewrites=False)
    assert len({normalise(t) for t in prompts.values()}) == len(prompts)
    pairs = near_pairs({key: grams(text) for key, text in prompts.items()}, TRAINING_MAX_SIMILARITY)
    assert [(a, b, round(s, 2)) for a, b, s in pairs] == []


def test_package_data_ships_the_resources():
    assert 'sftlab = ["resources/*.jsonl"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for path in (IDENTITY, PARAPHRASES, HELDOUT_IDENTITY, HELDOUT_GENERAL):
        assert path.parent == RESOURCES and path.suffix == ".jsonl"


def test_shipped_mix_leaves_out_a_heldout_prompt_in_any_user_turn(tmp_path):
    """Only the last user turn was compared: a held-out prompt earlier in a conversation went into training."""
    from sftlab.data.shipped import heldout_prompts, prompt_key, write_shipped_mix

    held = heldout_prompts("identity")[0]
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"messages": [
        {"role": "user", "content": held}, {"role": "assistant", "content": "I am Orca."},
        {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]}) + "\n")
    counts = write_shipped_mix(tmp_path / "train.jsonl", "Orca", "Acme", identity_repeats=0, general_examples=1,
                               extra_data=[str(extra)])
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert counts["left_out_as_heldout"] == 1 and counts["train"] == len(rows) == 1
    assert not [m for r in rows for m in r["messages"] if prompt_key(m["content"]) == prompt_key(held)]
