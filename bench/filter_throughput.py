"""Filter pipeline speed against plain baselines measured in the same run.

1. Dedup + heuristics on a 100k-record pool: sftlab's stages (exact hashes, datasketch MinHash LSH with shared
   permutations, vectorised batches and crc32, then the heuristic rules) vs the textbook datasketch usage (a
   fresh MinHash per record, one update per shingle, SHA-1) with the same exact-hash and heuristic steps.
   Prints records/s and the ratio, and how far the two near-duplicate answers agree.
2. Embedding + diverse selection 10k -> 1k: packaged all-MiniLM-L6-v2 embeddings, then DEITA selection with an
   incremental bank vs the same rule on a full pairwise cosine matrix (the plain baseline). Same selection.

    python bench/filter_throughput.py            # 100k records, 10k -> 1k
    python bench/filter_throughput.py --quick    # 10k records, 2k -> 200
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import numpy as np

from sftlab.curate.filter.dedup import exact_duplicates, naive_near_duplicates, near_duplicates
from sftlab.curate.filter.diversity import embed, select_deita, select_deita_pairwise
from sftlab.curate.filter.heuristics import HeuristicSettings, check

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_pool(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short instruction records drawn from a 3k-word vocabulary, 2% planted near-copies."""
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    pool = []
    for i in range(n):
        if i > 100 and rng.random() < 0.02:
            p, r = pool[rng.randrange(len(pool))]
            words = r.split()
            words[rng.randrange(len(words))] = "edited"
            pool.append((p, " ".join(words)))
            continue
        p = " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 20))) + "?"
        r = " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 60))) + "."
        pool.append((p, r))
    return pool


def dedup_and_heuristics(pool, near_fn) -> tuple[float, dict[int, int]]:
    t = time.perf_counter()
    texts = [p + "\n" + r for p, r in pool]
    exact = exact_duplicates(texts)
    near = near_fn(texts, skip=set(exact)) if near_fn is near_duplicates else near_fn(
        [x for i, x in enumerate(texts) if i not in exact])
    s = HeuristicSettings()
    for p, r in pool:
        check(p, r, s)
    return time.perf_counter() - t, near


def prompts_for_selection(n: int) -> list[str]:
    texts = []
    for name, key in (("gsm8k/train.jsonl", "question"),):
        path = SHARED / name
        if path.exists():
            texts += [json.loads(x)[key] for x in path.read_text().splitlines()]
    alp = SHARED / "alpaca_en_demo.json"
    if alp.exists():
        texts += [r["instruction"] + " " + r.get("input", "") for r in json.loads(alp.read_text())]
    if not texts:
        texts = [p for p, _ in synthetic_pool(n)]
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" (variant {i // len(texts)})") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--select-from", type=int, default=10_000)
    ap.add_argument("--select", type=int, default=1_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.records, args.select_from, args.select = 10_000, 2_000, 200
    out: dict = {}

    pool = synthetic_pool(args.records)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fast_s, fast = dedup_and_heuristics(pool, near_duplicates)
    naive_s, naive = dedup_and_heuristics(pool, naive_near_duplicates)
    # the naive run indexes the texts left after exact dedup: map its indices back for the agreement check
    exact = exact_duplicates([p + "\n" + r for p, r in pool])
    keep = [i for i in range(len(pool)) if i not in exact]
    naive_set = {keep[i] for i in naive}
    agree = len(set(fast) & naive_set) / max(1, len(set(fast) | naive_set))
    out["dedup"] = {"records": len(pool), "sftlab_s": round(fast_s, 2), "naive_s": round(naive_s, 2),
                    "sftlab_records_per_s": round(len(pool) / fast_s),
                    "naive_records_per_s": round(len(pool) / naive_s),
                    "speedup": round(naive_s / fast_s, 2), "near_duplicates": len(fast),
                    "agreement_jaccard": round(agree, 4), "peak_rss_mb": round(rss0)}
    d = out["dedup"]
    print(f"== dedup + heuristics, {d['records']} records ==")
    print(f"sftlab  {d['sftlab_records_per_s']:>8} records/s  ({d['sftlab_s']} s)")
    print(f"naive   {d['naive_records_per_s']:>8} records/s  ({d['naive_s']} s)   datasketch textbook usage")
    print(f"ratio sftlab/naive = {d['speedup']}x; near-duplicates found {d['near_duplicates']}, "
          f"agreement {d['agreement_jaccard']}")

    texts = prompts_for_selection(args.select_from)
    t = time.perf_counter()
    emb = embed(texts)
    embed_s = time.perf_counter() - t
    quality = np.random.default_rng(0).random(len(texts))
    t = time.perf_counter()
    ours = select_deita(emb, quality, args.select, 0.1)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    base = select_deita_pairwise(emb, quality, args.select, 0.1)
    base_s = time.perf_counter() - t
    out["selection"] = {"pool": len(texts), "select": args.select, "embed_s": round(embed_s, 2),
                        "embed_per_s": round(len(texts) / embed_s), "deita_s": round(ours_s, 3),
                        "pairwise_s": round(base_s, 3), "speedup": round(base_s / ours_s, 2),
                        "same_selection": ours == base, "selected": len(ours)}
    s = out["selection"]
    print(f"== embedding + selection, {s['pool']} -> {s['select']} ==")
    print(f"embed (all-MiniLM-L6-v2, CPU): {s['embed_s']} s = {s['embed_per_s']} prompts/s")
    print(f"deita incremental {s['deita_s']} s vs full pairwise matrix {s['pairwise_s']} s: "
          f"{s['speedup']}x, same selection: {s['same_selection']} ({s['selected']} chosen)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
