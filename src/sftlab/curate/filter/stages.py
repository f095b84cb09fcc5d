"""The filter's stages, cheapest first: exact and near dedup, decontamination, heuristic rules, model quality
scores, diverse selection. Each is one `Stage` (see `stage.py`): records in, kept and dropped-with-reason out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.curate.filter import dedup as dd
from sftlab.curate.filter.config import DecontamSettings, DedupSettings
from sftlab.curate.filter.decontam import Decontaminator
from sftlab.curate.filter.diversity import DiversitySettings, embed, select
from sftlab.curate.filter.heuristics import HeuristicSettings, check
from sftlab.curate.filter.pool import PoolRecord, prompt_text
from sftlab.curate.filter.scorers import ScoreCache, Scorer, ScorerSettings, combine, score_records
from sftlab.curate.filter.stage import Drop, Log, StageResult, partition
from sftlab.data.loading import load_conversations
from sftlab.kvstore import stable_key

Result = StageResult[PoolRecord]


class _Lazy(Sequence):
    """`read(record)` for each record, computed when indexed: a stage's texts or conversations never all held."""

    def __init__(self, records: list[PoolRecord], read: Callable[[PoolRecord], Any]) -> None:
        self.records, self.read = records, read

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        return self.read(self.records[i])


def _compared_text(what: str) -> Callable[[PoolRecord], str]:
    """The text near dedup compares: the prompt, or prompt and response (`near_on`)."""
    return (lambda r: r.prompt) if what == "prompt" else (lambda r: r.prompt + "\n" + r.response)


class PoolStage:
    """Defaults shared by the filter's stages: a funnel row even with no record left, drops labelled by name."""

    name = ""
    runs_on_empty = True

    @property
    def drop_label(self) -> str:
        return self.name


class ExactDedup(PoolStage):
    """Drop a repeated normalised prompt + response, then (optionally) a repeated prompt; the first one stays."""

    name = "exact dedup"

    def __init__(self, settings: DedupSettings) -> None:
        self.s = settings

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        seen_pair: dict[bytes, PoolRecord] = {}
        seen_prompt: dict[bytes, PoolRecord] = {}

        def why(r: PoolRecord) -> Drop | None:
            prompt_text = r.prompt
            pair, prompt = dd.exact_digest(prompt_text + "\x00" + r.response), dd.exact_digest(prompt_text)
            if self.s.exact and pair in seen_pair:
                return Drop("exact duplicate (prompt + response)", duplicate_of=seen_pair[pair])
            if self.s.exact_prompt and prompt in seen_prompt:
                return Drop("exact duplicate prompt", duplicate_of=seen_prompt[prompt])
            seen_pair.setdefault(pair, r)
            seen_prompt.setdefault(prompt, r)
            return None

        return partition(records, why)


class NearDedup(PoolStage):
    """MinHash LSH near-duplicates of the prompt and/or prompt + response (`near_on`), the earlier one kept."""

    name = "near dedup"

    def __init__(self, settings: DedupSettings) -> None:
        self.s = settings

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        result = Result([], funnel_extra={"threshold": self.s.threshold})
        dropped: set[int] = set()
        for what in self.s.near_on:
            texts = _Lazy(records, _compared_text(what))
            hits = dd.near_duplicates(texts, self.s.threshold, self.s.num_perm, self.s.ngram, skip=dropped)
            for i, j in hits.items():
                result.dropped.append((records[i], Drop(f"near-duplicate {what.replace('_', ' + ')}",
                                                        duplicate_of=records[j])))
                dropped.add(i)
        result.kept = [r for i, r in enumerate(records) if i not in dropped]
        return result


class Decontaminate(PoolStage):
    """Drop records that share an n-gram with, or nearly repeat, a prompt or answer of an evaluation set."""

    name = "decontaminate"

    def __init__(self, settings: DecontamSettings) -> None:
        self.s = settings

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        eval_texts, answers = [], []
        for spec in self.s.eval:
            for conv in load_conversations(spec)[0]:
                eval_texts.append(prompt_text(conv))
                if conv.last_response:
                    answers.append(conv.last_response)
        deco = Decontaminator(eval_texts, self.s.ngram, self.s.near_threshold, answers=answers)
        result = Result([])
        for start in range(0, len(records), dd.SKETCH_CHUNK):  # sketches of one chunk at a time: bounded memory
            part = records[start:start + dd.SKETCH_CHUNK]
            prompts = [r.prompt for r in part]
            sigs = zip(*dd.sketch(prompts), strict=True) if deco.index is not None else [None] * len(part)
            for r, prompt, sig in zip(part, prompts, sigs, strict=True):
                conv = r.conv if deco.short else None  # its user turns, each compared whole with short eval texts
                turns = [t.content for t in conv.prompt_turns if t.role == "user"] if conv else []
                hit = deco.find(prompt, r.response, sig, turns)
                if hit:
                    result.dropped.append((r, Drop(hit.reason, hit.detail)))
                else:
                    result.kept.append(r)
        result.funnel_extra["eval_texts"] = len(eval_texts) + len(answers)
        return result


class Heuristics(PoolStage):
    """Rule-based quality checks (empty, too short/long, refusal, truncated, repetitive, wrong language...)."""

    name = "heuristics"

    def __init__(self, settings: HeuristicSettings) -> None:
        self.s = settings

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        def why(r: PoolRecord) -> Drop | None:
            reason = check(r.prompt, r.response, self.s)
            return Drop(reason) if reason else None

        return partition(records, why)


class ModelScores(PoolStage):
    """Score every record with each scorer (cached), combine into a quality percentile, drop below `min_quality`."""

    name = "model scores"
    drop_label = "quality"  # type: ignore[assignment]
    runs_on_empty = False

    def __init__(self, scorers: list[ScorerSettings], min_quality: float | None, cache_path: Path) -> None:
        self.scorers, self.min_quality, self.cache_path = scorers, min_quality, cache_path

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        cache = ScoreCache(self.cache_path)
        keys = [stable_key(r.source, r.id, r.prompt, r.response) for r in records]
        all_scores: dict[str, list[float | None]] = {}
        for s in self.scorers:
            log(f"filter: scoring {len(records)} records with {s.type} ({s.model or s.function or ''})")
            vals = score_records(Scorer(s), _Lazy(records, lambda r: r.conv), keys, cache)
            all_scores[s.name] = vals
            for r, v in zip(records, vals, strict=True):
                r.scores[s.name] = None if v is None else round(float(v), 4)
        for r, q in zip(records, combine(all_scores, self.scorers), strict=True):
            r.scores["quality"] = float(q)

        def why(r: PoolRecord) -> Drop | None:
            low = self.min_quality is not None and not r.scores["quality"] >= self.min_quality
            return Drop(f"quality below {self.min_quality}") if low else None

        result = partition(records, why)
        result.funnel_extra["scorers"] = [s.type for s in self.scorers]
        return result


class DiverseSelection(PoolStage):
    """Choose `target_size` records by quality and prompt diversity (deita, k-center, k-means; `none`: quality)."""

    name = "diversity selection"

    def __init__(self, settings: DiversitySettings, target_size: int, seed: int) -> None:
        self.s, self.target_size, self.seed = settings, target_size, seed

    def run(self, records: list[PoolRecord], log: Log) -> Result:
        quality = np.array([r.scores.get("quality", 0.0) for r in records], dtype=np.float64)
        emb = None
        if records and self.s.method != "none":
            log(f"filter: embedding {len(records)} prompts ({self.s.embedder})")
            emb = embed([r.prompt for r in records], self.s.embedder, self.s.batch_size, self.s.embed_dtype)
            chosen = select(emb, quality, self.target_size, self.s, self.seed)
        else:
            chosen = [int(i) for i in np.argsort(-quality, kind="stable")[: self.target_size]]
        chosen_set = set(chosen)
        result = Result([records[i] for i in chosen], funnel_extra={"method": self.s.method,
                                                                    "target_size": self.target_size},
                        artefacts={"candidates": records, "embeddings": emb, "chosen": chosen})
        for i, r in enumerate(records):
            if i in chosen_set:
                continue
            if self.s.method == "deita" and emb is not None and chosen and \
                    float((emb[chosen] @ emb[i]).max()) > 1.0 - self.s.min_distance:
                result.dropped.append((r, Drop("too similar to a selected prompt")))
            else:
                result.dropped.append((r, Drop("not selected (target size reached)")))
        return result
