"""The filter's pool in bounded memory: records keep no text, the text store gives back exactly what was read."""

import json
import tracemalloc

from sftlab.curate.filter.pool import PoolRecord, prompt_text, read_pool
from sftlab.data.loading import load_conversations, make_spec


def test_the_text_store_gives_back_every_record_as_read(shared_data):
    specs = [make_spec(str(shared_data / name)) for name in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json",
                                                             "identity.json")]
    records, skipped, sources = read_pool(specs)
    convs = [c for spec in specs for c in load_conversations(spec)[0]]
    assert len(records) == len(convs) == sum(s["loaded"] for s in sources) and not skipped
    assert any(c.tools for c in convs) and any(t.tool_calls for c in convs for t in c.turns)
    for r, c in zip(records, convs, strict=True):
        assert (r._conv, r._prompt, r._response) == (None, "", "")  # nothing but ids and decisions in memory
        assert json.dumps(r.conv.to_dict()) == json.dumps(c.to_dict())  # tools, tool calls, weights, meta
        assert (r.prompt, r.response) == (prompt_text(c), c.last_response or "")
        assert r.location == c.meta["location"] and c.meta["source"].endswith(r.source)


def test_text_beyond_ascii_round_trips(tmp_path):
    path = tmp_path / "odd.jsonl"
    rows = [{"prompt": "emoji \U0001f600, tab\t and nul \x00?", "completion": "zh 中文, é."},
            {"prompt": "empty reply next", "completion": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records, _, _ = read_pool([make_spec(str(path))])
    assert [(r.prompt, r.response) for r in records] == [(r["prompt"], r["completion"]) for r in rows]


def test_memory_per_pool_record_is_small(tmp_path):
    path = tmp_path / "pool.jsonl"
    with path.open("w") as f:
        for i in range(50_000):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"question {i} " + "word " * 40,
                                "completion": f"answer {i} " + "text " * 80 + "."}) + "\n")
    tracemalloc.start()
    try:
        records, _, _ = read_pool([make_spec(str(path))])
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 50_000 and isinstance(records[0], PoolRecord)
    assert held / 50_000 < 500 and peak / 50_000 < 700, (held, peak)  # bytes a record; the ~0.9 KB text on disk


def _datasketch_near_duplicates(texts, threshold):
    """The same verified search over datasketch's own MinHashLSH: what the compact band tables must match."""
    from datasketch import MinHashLSH

    from sftlab.curate.filter import dedup as dd

    lsh = MinHashLSH(threshold=threshold, num_perm=128, weights=dd.LSH_WEIGHTS)
    sets, dup = {}, {}
    for i, (sig, sh) in enumerate(zip(*dd.sketch(texts), strict=True)):
        hits = [(-dd.jaccard(sh, sets[k]), k) for k in lsh.query(sig) if dd.jaccard(sh, sets[k]) >= threshold]
        if hits:
            dup[i] = min(hits)[1]
        else:
            lsh.insert(i, sig)
            sets[i] = sh
    return dup


def test_compact_lsh_tables_find_what_datasketch_finds_across_merges(monkeypatch):
    import random

    from sftlab.curate.filter import dedup as dd

    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(300)]
    texts = []
    for _ in range(3000):
        if texts and rng.random() < 0.2:  # a near copy: one word changed
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = "edited"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 30))))
    monkeypatch.setattr(dd, "MERGE_EVERY", 400)  # many merges of recent entries into the sorted arrays
    for threshold in (0.5, 0.8):
        expected = _datasketch_near_duplicates(texts, threshold)
        assert len(expected) > 100
        assert dd.near_duplicates(texts, threshold, chunk=250) == expected
