"""Preparers for the distillation and quality-vs-quantity recipes: the shipped teacher-answered prompts, a seeded
random sample (the "chosen at random" arm), a pool with known corrupted records and how well a selection avoids
them, and the quality scorers' ROC AUC on labelled responses."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.data.loading import LoadReport, load_conversations, make_spec
from sftlab.data.schema import Conversation, Turn
from sftlab.data.shipped import heldout_prompts, last_prompt, resource
from sftlab.data.writers import write_json, write_jsonl
from sftlab.errors import ConfigError, DataError
from sftlab.evaluate.checks import wilson_interval
from sftlab.textutil import normalize

QUICK_RECORDS = 6  # quick=True: a handful of records, the tiny-model smoke run
CORRUPTIONS = ("truncated", "swapped", "word_salad", "looping", "refusal")
REFUSAL = "As an AI language model, I cannot help with that request."


def _shipped_general() -> list[Conversation]:
    """The 1.5B teacher's filtered answers that ship with sftlab, with their provenance in `meta` as shipped."""
    from sftlab.data.readers import read_records

    path = str(resource("demo_general.jsonl"))
    convs = load_conversations(path)[0]
    shipped_meta = {location: rec.get("meta", {}) for location, rec in read_records(path)}
    for c in convs:
        c.meta = dict(shipped_meta[c.meta["location"]])
    return convs


def _seeded_subset(items: list, k: int, seed: int) -> list:
    """`k` items drawn with `seed`, in their original order (the source's order carries meaning, e.g. rank)."""
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def _unique_ids(convs: list[Conversation]) -> list[Conversation]:
    """A repeated record repeats its id: name the repeats as the filter would (`id#1`), so every id is one record."""
    seen: Counter = Counter()
    for c in convs:
        base = c.id
        c.id, seen[base] = (f"{base}#{seen[base]}" if seen[base] else base), seen[base] + 1
    return convs


def _enough(available: int, wanted: int, what: str, source: str) -> None:
    if wanted < 0 or wanted > available:
        raise ConfigError(f"{what} {wanted}: {source} has {available} usable records; ask for 0 to {available}")


def shipped_prompts(out: Path, *, seed: int = 0, quick: bool = False, n: int = 300, heldout: int = 40,
                    system_turns: bool = False) -> dict[str, Any]:
    """The same prompts for two teachers: `prompts.jsonl` (n prompts, no answers, for `distill`), `teacher.jsonl`
    (those prompts with the shipped 1.5B answers and provenance) and `heldout.jsonl` (`heldout` more shipped
    answers to prompts in neither, for an NLL on unseen prompts). The shipped held-out evaluation set is only read:
    a prompt that matches it is left out. `system_turns` puts each prompt's own teacher instruction (the refusal
    instruction for harmful requests) in prompts.jsonl as a system turn, so another teacher is asked the same way."""
    out = Path(out)
    n, heldout = (min(n, QUICK_RECORDS), min(heldout, 3)) if quick else (n, heldout)
    evaluation = {normalize(p) for kind in ("general", "identity") for p in heldout_prompts(kind)}
    shipped = _shipped_general()
    usable = [c for c in shipped if normalize(last_prompt(c)) not in evaluation]
    _enough(len(usable), n + heldout, "n + heldout", "the shipped general set (demo_general.jsonl)")
    drawn = random.Random(seed).sample(range(len(usable)), n + heldout)  # in random order: split it, then re-sort
    train, unseen = [usable[i] for i in sorted(drawn[:n])], [usable[i] for i in sorted(drawn[n:])]

    def prompt_record(c: Conversation) -> dict[str, Any]:
        system = c.meta.get("teacher_system_prompt")
        turns = ([Turn("system", system)] if system_turns and system else []) + c.prompt_turns
        meta = {k: c.meta[k] for k in ("category", "lang", "teacher_system_prompt") if k in c.meta}
        return {"id": c.id, "messages": [t.to_dict() for t in turns], "meta": meta}

    write_jsonl(out / "prompts.jsonl", [prompt_record(c) for c in train])
    write_jsonl(out / "teacher.jsonl", train)
    write_jsonl(out / "heldout.jsonl", unseen)
    systems = [c.meta.get("teacher_system_prompt") for c in train]
    return {"prompts": len(train), "heldout": len(unseen), "shipped": len(shipped),
            "left_out_as_evaluation_prompts": len(shipped) - len(usable),
            "teacher": train[0].meta.get("teacher") if train else None,
            "teacher_system_prompts": {s: systems.count(s) for s in dict.fromkeys(systems)},
            "categories": {k: sum(c.meta.get("category") == k for c in train)
                           for k in sorted({str(c.meta.get("category")) for c in train})}}


def _load(source: str | dict[str, Any], what: str) -> tuple[list[Conversation], LoadReport]:
    """Any source sftlab reads (a path or a data spec); a bad one raises a ConfigError/DataError naming it."""
    return load_conversations(make_spec(source, what))


def sample_records(out: Path, *, seed: int = 0, quick: bool = False, source: str | dict[str, Any],
                   n: int) -> dict[str, Any]:
    """`sample.jsonl`: `n` records of `source` drawn at random with `seed` (the random arm beside a filter's pick)."""
    convs, report = _load(source, "sample_records source")
    n = min(n, QUICK_RECORDS, len(convs)) if quick else n
    _enough(len(convs), n, "n", report.source)
    sample = _unique_ids(_seeded_subset(convs, n, seed))
    write_jsonl(Path(out) / "sample.jsonl", sample)
    return {"source": report.source, "loaded": report.loaded, "sampled": len(sample),
            "skipped": sum(report.skipped.values())}


def corrupt(conv: Conversation, kind: str, other: str, rng: random.Random) -> Conversation:
    """The record with its reply damaged in one of CORRUPTIONS' ways (`other`: another prompt's reply)."""
    reply = conv.turns[-1].content
    words = reply.split()
    if kind == "truncated":
        cut = max(3, int(len(words) * rng.uniform(0.3, 0.6)))
        reply = " ".join(words[:cut]).rstrip(".!?,;:")
    elif kind == "swapped":
        reply = other
    elif kind == "word_salad":
        rng.shuffle(words)
        reply = " ".join(words)
    elif kind == "looping":
        chunk = " ".join(words[: max(4, min(8, len(words)))])
        reply = " ".join([chunk] * 8)
    elif kind == "refusal":
        reply = REFUSAL
    turns = [*conv.turns[:-1], Turn("assistant", reply)]
    return Conversation(turns=turns, id=conv.id, meta={"corruption": kind})


def _short_complete(convs: list[Conversation]) -> list[Conversation]:
    """Short single-answer records whose reply ends a sentence: corruption is then easy to see and to score."""
    return [c for c in convs if 20 <= len(c.turns[-1].content) <= 400 and len(c.turns[0].content) <= 300
            and c.turns[-1].content.rstrip()[-1:] in ".!?"]


def corrupt_pool(out: Path, *, seed: int = 0, quick: bool = False, source: str | dict[str, Any], pool: int = 400,
                 corrupt_share: float = 0.4, heldout: int = 60) -> dict[str, Any]:
    """`pool.jsonl`: up to `pool` short records, a `corrupt_share` of them corrupted; `labels.jsonl`: which (id,
    corruption kind or "clean"); `heldout.jsonl`: `heldout` clean records kept aside as evaluation references."""
    if not 0 <= corrupt_share <= 1:
        raise ConfigError(f"corrupt_share {corrupt_share}: must be between 0 and 1")
    pool, heldout = (min(pool, 2 * QUICK_RECORDS), min(heldout, 3)) if quick else (pool, heldout)
    rng = random.Random(seed)
    convs = _short_complete(_load(source, "corrupt_pool source")[0])
    rng.shuffle(convs)
    kept, clean = convs[:heldout], convs[heldout: heldout + pool]
    if len(clean) < 2:
        raise DataError(f"{len(convs)} short, complete records: too few for {heldout} held-out + a pool of 2 or more",
                        source=str(source), reason="too few records")
    bad = set(rng.sample(range(len(clean)), int(len(clean) * corrupt_share)))
    records = []
    for i, c in enumerate(_unique_ids(clean)):
        if i in bad:
            other = clean[(i + 1 + rng.randrange(len(clean) - 1)) % len(clean)].turns[-1].content
            records.append(corrupt(c, rng.choice(CORRUPTIONS), other, rng))
        else:
            records.append(Conversation(turns=c.turns, id=c.id, meta={"corruption": "clean"}))
    out = Path(out)
    write_jsonl(out / "pool.jsonl", records)
    write_jsonl(out / "labels.jsonl", [{"id": c.id, "corruption": c.meta["corruption"]} for c in records])
    write_jsonl(out / "heldout.jsonl", kept)
    kinds = [c.meta["corruption"] for c in records]
    heldout_prompts_seen = {normalize(last_prompt(c)) for c in kept}
    return {"pool": len(records), "corrupted": len(bad), "heldout": len(kept),
            "pool_prompts_in_heldout": sum(normalize(last_prompt(c)) in heldout_prompts_seen for c in records),
            "by_kind": {k: kinds.count(k) for k in ("clean", *CORRUPTIONS)}}


def read_labels(labels: str | Path) -> dict[str, str]:
    """id -> corruption kind ("clean" for an intact record), from corrupt_pool's labels.jsonl."""
    from sftlab.data.readers import read_records

    truth = {}
    for location, rec in read_records(str(labels), type="jsonl"):
        if isinstance(rec, DataError):
            raise DataError(rec.message, source=str(labels), record=location, reason=rec.reason)
        for key in ("id", "corruption"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise DataError(f"expected a string `{key}`", source=str(labels), record=location, field=key)
        truth[rec["id"]] = rec["corruption"]
    return truth


def selection_quality(chosen: list[str], truth: dict[str, str]) -> dict[str, Any]:
    """How clean a selection is against the pool it came from; a random pick of the same size is as clean as the
    pool on average (`random_precision`), and `p_random_as_clean` is the chance it would do at least as well."""
    from scipy.stats import hypergeom

    kinds = [truth[i] for i in chosen]
    pool_clean, clean = sum(k == "clean" for k in truth.values()), kinds.count("clean")
    precision = clean / len(kinds) if kinds else 0.0
    return {"selected": len(kinds), "corrupted_in_pool": len(truth) - pool_clean, "corrupted_selected":
            len(kinds) - clean, "corrupted_share_pool": round((len(truth) - pool_clean) / max(1, len(truth)), 3),
            "corrupted_share_selected": round((len(kinds) - clean) / max(1, len(kinds)), 3),
            "selected_by_kind": {k: kinds.count(k) for k in ("clean", *CORRUPTIONS)},
            "precision": round(precision, 4), "precision_interval": wilson_interval(clean, len(kinds)),
            "random_precision": round(pool_clean / max(1, len(truth)), 4),
            "p_random_as_clean": round(float(hypergeom.sf(clean - 1, len(truth), pool_clean, len(kinds))), 6)}


def pool_selection_quality(out: Path, *, seed: int = 0, quick: bool = False, selection: str | dict[str, Any],
                           labels: str | Path) -> dict[str, Any]:
    """The precision of a filter's selection from a corrupt_pool (share of chosen records that were clean) vs a
    random pick of the same size; also written to `selection_quality.json`."""
    truth = read_labels(labels)
    convs, report = _load(selection, "pool_selection_quality selection")
    for c in convs:
        if c.id not in truth:
            raise DataError(f"id {c.id!r} is not in the pool's labels ({labels})", source=report.source,
                            record=str(c.meta.get("location")), field="id")
    result = selection_quality([c.id for c in convs], truth)
    write_json(Path(out) / "selection_quality.json", result)
    return result
