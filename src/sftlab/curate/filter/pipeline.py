"""`sftlab curate filter`: a large pool in, a small, high-quality, diverse SFT set out, every decision explained.

Stages, in order (each optional and reported as one funnel step):
  read + validate -> exact dedup -> near dedup (MinHash LSH) -> decontaminate against eval sets ->
  heuristic quality rules -> model quality scores (+ min_quality) -> diverse selection of `target_size`.
Cheap stages run first so the expensive ones see fewer records. Outputs: the selected set (messages JSONL with
source id, scores and rank in `meta`), decisions.jsonl (one line per pool record: kept or the stage and reason
that dropped it), and a report (JSON, Markdown, PNG plots).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from sftlab.artifacts.layout import FILTER_REPORT_NAME
from sftlab.artifacts.records import FilterReport, write_record
from sftlab.curate.filter import dedup as dd
from sftlab.curate.filter.decontam import Decontaminator
from sftlab.curate.filter.diversity import DiversitySettings, embed, project_2d, select
from sftlab.curate.filter.heuristics import HeuristicSettings, check
from sftlab.curate.filter.scorers import ScoreCache, Scorer, ScorerSettings, combine, score_records
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation
from sftlab.data.writers import atomic_open, write_text
from sftlab.generation.cache import stable_key
from sftlab.yamlconfig import read_yaml_mapping, validated


class DedupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Drop records whose normalised prompt+response was seen before.")
    exact_prompt: bool = Field(True, description="Also drop a repeated normalised prompt (keep its first answer).")
    near: bool = Field(True, description="MinHash LSH near-duplicates.")
    near_on: list[str] = Field(["prompt", "prompt_response"], description="Texts compared: prompt and/or "
                                                                          "prompt_response.")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word shingles.")
    ngram: int = Field(3, ge=1)
    num_perm: int = Field(128, ge=16)


class DecontamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval: list[DataSpec] = Field(default_factory=list, description="Evaluation sets that must not leak.")
    ngram: int = Field(13, ge=3)
    near_threshold: float | None = Field(0.8, description="MinHash Jaccard vs eval prompts; null: n-grams only.")

    @field_validator("eval", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str | dict) else v
        return [{"path": x, "require_response": False} if isinstance(x, str) else x for x in v]


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: list[DataSpec] = Field(description="Sources, concatenated; bad records are skipped and counted.")
    output: str = Field(description="Selected set (.jsonl, messages format with provenance in meta).")
    target_size: int = Field(1000, ge=1)
    seed: int = 0
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    decontaminate: DecontamSettings = Field(default_factory=DecontamSettings)
    heuristics: HeuristicSettings | None = Field(default_factory=HeuristicSettings)
    scorers: list[ScorerSettings] = Field(default_factory=list)
    min_quality: float | None = Field(None, ge=0, le=1, description="Drop records whose combined quality "
                                                                    "(a percentile rank) is below this.")
    diversity: DiversitySettings = Field(default_factory=DiversitySettings)
    report_dir: str | None = Field(None, description="Default: <output without suffix>.report/")
    examples_per_reason: int = Field(3, ge=0)

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str | dict) else v
        return [{"path": x, "on_error": "skip"} if isinstance(x, str) else {"on_error": "skip", **x} for x in v]

    @property
    def report_path(self) -> Path:
        out = Path(self.output)
        return Path(self.report_dir) if self.report_dir else out.with_name(out.stem + ".report")


def make_filter_config(raw: dict[str, Any], source: str = "filter config") -> FilterConfig:
    return validated(FilterConfig, raw, source)


def load_filter_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FilterConfig:
    return make_filter_config({**read_yaml_mapping(path, "filter config"), **(overrides or {})}, str(path))


@dataclass
class PoolRecord:
    index: int
    id: str
    source: str
    conv: Conversation
    prompt: str
    response: str
    scores: dict[str, float | None] = field(default_factory=dict)
    stage: str = ""  # the stage that dropped it ("" = alive / selected)
    reason: str = ""  # the category counted in the funnel
    detail: str = ""  # the specifics, where there are any (which eval text it overlaps)
    duplicate_of: str | None = None
    location: str = ""  # where in its source (e.g. "line 12")


def _prompt_text(conv: Conversation) -> str:
    return "\n".join(t.content for t in conv.prompt_turns if t.role in ("system", "user", "tool"))


@dataclass
class FilterResult:
    selected: list[PoolRecord]
    records: list[PoolRecord]
    funnel: list[dict[str, Any]]
    report: dict[str, Any]


class _Funnel:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, stage: str, before: int, dropped: Counter, seconds: float, **extra: Any) -> None:
        self.steps.append({"stage": stage, "in": before, "kept": before - sum(dropped.values()),
                           "dropped": dict(dropped.most_common()), "seconds": round(seconds, 2), **extra})


def read_pool(cfg: FilterConfig) -> tuple[list[PoolRecord], Counter, list[dict[str, Any]]]:
    records: list[PoolRecord] = []
    seen: dict[str, int] = {}
    skipped: Counter = Counter()
    sources = []
    for spec in cfg.pool:
        convs, rep = load_conversations(spec)
        skipped.update(rep.skipped)
        sources.append(rep.to_dict())
        stem = Path(spec.path).name
        for j, c in enumerate(convs):
            rid = c.id or f"{stem}:{j}"
            if rid in seen:  # readers derive ids from content: identical records would share one
                seen[rid] += 1
                rid = f"{rid}#{seen[rid]}"
            else:
                seen[rid] = 0
            records.append(PoolRecord(len(records), rid, stem, c, _prompt_text(c), c.last_response or "",
                                      location=str(c.meta.get("location", f"record {j}"))))
    return records, skipped, sources


def run_filter(cfg: FilterConfig, console: Console | None = None) -> FilterResult:
    console = console or Console(stderr=True)
    funnel = _Funnel()
    t = time.time()
    records, skipped, sources = read_pool(cfg)
    funnel.add("read + validate", len(records) + sum(skipped.values()), skipped, time.time() - t)
    console.print(f"filter: read {len(records)} records ({sum(skipped.values())} skipped) from "
                  f"{len(cfg.pool)} source(s)")
    alive = list(records)
    dup_examples: list[dict[str, str]] = []

    def drop(rec: PoolRecord, stage: str, reason: str, counter: Counter, dup: PoolRecord | None = None,
             detail: str = "") -> None:
        rec.stage, rec.reason, rec.detail = stage, reason, detail
        counter[reason] += 1
        if dup is not None:
            rec.duplicate_of = dup.id
            if len(dup_examples) < 20:
                dup_examples.append({"kind": reason, "kept": dup.id, "dropped": rec.id,
                                     "kept_prompt": dup.prompt[:160], "dropped_prompt": rec.prompt[:160]})

    # exact duplicates
    if cfg.dedup.exact or cfg.dedup.exact_prompt:
        t, c = time.time(), Counter()
        before = len(alive)
        seen_pr: dict[str, PoolRecord] = {}
        seen_p: dict[str, PoolRecord] = {}
        keep = []
        for r in alive:
            kpr = dd.exact_key(r.prompt + "\x00" + r.response)
            kp = dd.exact_key(r.prompt)
            if cfg.dedup.exact and kpr in seen_pr:
                drop(r, "exact dedup", "exact duplicate (prompt + response)", c, seen_pr[kpr])
            elif cfg.dedup.exact_prompt and kp in seen_p:
                drop(r, "exact dedup", "exact duplicate prompt", c, seen_p[kp])
            else:
                seen_pr.setdefault(kpr, r)
                seen_p.setdefault(kp, r)
                keep.append(r)
        alive = keep
        funnel.add("exact dedup", before, c, time.time() - t)

    # near duplicates
    if cfg.dedup.near:
        t, c = time.time(), Counter()
        before = len(alive)
        dropped: set[int] = set()
        for what in cfg.dedup.near_on:
            texts = [r.prompt if what == "prompt" else r.prompt + "\n" + r.response for r in alive]
            hits = dd.near_duplicates(texts, cfg.dedup.threshold, cfg.dedup.num_perm, cfg.dedup.ngram, skip=dropped)
            for i, j in hits.items():
                drop(alive[i], "near dedup", f"near-duplicate {what.replace('_', ' + ')}", c, alive[j])
                dropped.add(i)
        alive = [r for i, r in enumerate(alive) if i not in dropped]
        funnel.add("near dedup", before, c, time.time() - t, threshold=cfg.dedup.threshold)

    # decontamination
    if cfg.decontaminate.eval:
        t, c = time.time(), Counter()
        before = len(alive)
        eval_texts = []
        for spec in cfg.decontaminate.eval:
            for conv in load_conversations(spec)[0]:
                eval_texts.append(_prompt_text(conv))
                if conv.last_response:
                    eval_texts.append(conv.last_response)
        deco = Decontaminator(eval_texts, cfg.decontaminate.ngram, cfg.decontaminate.near_threshold)
        sigs = list(zip(*dd.sketch([r.prompt for r in alive]), strict=True)) if deco.index is not None and alive \
            else [None] * len(alive)
        keep = []
        for r, sig in zip(alive, sigs, strict=True):
            why = deco.check(r.prompt, r.response, sig)
            if why:
                drop(r, "decontaminate", why.split(" (")[0].split(":")[0], c, detail=why)
            else:
                keep.append(r)
        alive = keep
        funnel.add("decontaminate", before, c, time.time() - t, eval_texts=len(eval_texts))

    # heuristics
    if cfg.heuristics is not None:
        t, c = time.time(), Counter()
        before = len(alive)
        keep = []
        for r in alive:
            why = check(r.prompt, r.response, cfg.heuristics)
            if why:
                drop(r, "heuristics", why, c)
            else:
                keep.append(r)
        alive = keep
        funnel.add("heuristics", before, c, time.time() - t)

    # model scores
    quality = np.zeros(len(alive), dtype=np.float64)
    if cfg.scorers and alive:
        t, c = time.time(), Counter()
        before = len(alive)
        cache = ScoreCache(cfg.report_path / "scores.sqlite")
        keys = [stable_key(r.source, r.id, r.prompt, r.response) for r in alive]
        all_scores: dict[str, list[float | None]] = {}
        for s in cfg.scorers:
            console.print(f"filter: scoring {len(alive)} records with {s.type} ({s.model or s.function or ''})")
            vals = score_records(Scorer(s), [r.conv for r in alive], keys, cache)
            all_scores[s.name] = vals
            for r, v in zip(alive, vals, strict=True):
                r.scores[s.name] = None if v is None else round(float(v), 4)
        quality = np.array(combine(all_scores, cfg.scorers))
        for r, q in zip(alive, quality, strict=True):
            r.scores["quality"] = float(q)
        if cfg.min_quality is not None:
            keep_mask = quality >= cfg.min_quality
            for r, k in zip(alive, keep_mask, strict=True):
                if not k:
                    drop(r, "quality", f"quality below {cfg.min_quality}", c)
            alive = [r for r, k in zip(alive, keep_mask, strict=True) if k]
            quality = quality[keep_mask]
        funnel.add("model scores", before, c, time.time() - t, scorers=[s.type for s in cfg.scorers])

    # diverse selection
    t, c = time.time(), Counter()
    before = len(alive)
    emb = None
    if alive and cfg.diversity.method != "none":
        console.print(f"filter: embedding {len(alive)} prompts ({cfg.diversity.embedder})")
        emb = embed([r.prompt for r in alive], cfg.diversity.embedder, cfg.diversity.batch_size,
                    cfg.diversity.embed_dtype)
        chosen = select(emb, quality, cfg.target_size, cfg.diversity, cfg.seed)
    else:
        chosen = [int(i) for i in np.argsort(-quality, kind="stable")[: cfg.target_size]]
    chosen_set = set(chosen)
    for i, r in enumerate(alive):
        if i in chosen_set:
            continue
        if cfg.diversity.method == "deita" and emb is not None and chosen and \
                float((emb[chosen] @ emb[i]).max()) > 1.0 - cfg.diversity.min_distance:
            drop(r, "diversity selection", "too similar to a selected prompt", c)
        else:
            drop(r, "diversity selection", "not selected (target size reached)", c)
    selected = [alive[i] for i in chosen]
    funnel.add("diversity selection", before, c, time.time() - t, method=cfg.diversity.method,
               target_size=cfg.target_size)
    if len(selected) < cfg.target_size:
        console.print(f"[yellow]filter: only {len(selected)} records passed every stage (target "
                      f"{cfg.target_size})[/]")

    report = _write_outputs(cfg, records, selected, funnel.steps, sources, dup_examples, alive, emb, chosen)
    console.print(f"filter: selected {len(selected)} of {len(records)} -> {cfg.output}; report in "
                  f"{cfg.report_path}")
    return FilterResult(selected, records, funnel.steps, report)


def _write_outputs(cfg: FilterConfig, records: list[PoolRecord], selected: list[PoolRecord],
                   funnel: list[dict[str, Any]], sources: list[dict[str, Any]], dup_examples: list[dict[str, str]],
                   last_alive: list[PoolRecord], emb: np.ndarray | None, chosen: list[int]) -> dict[str, Any]:
    import json

    rep_dir = cfg.report_path
    rep_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(cfg.output) as f:
        for rank, r in enumerate(selected):
            d = r.conv.to_dict()
            d["id"] = r.id
            d["meta"] = {**d.get("meta", {}), "source": r.source, "source_id": r.id, "location": r.location,
                         "rank": rank, "scores": r.scores}
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with atomic_open(rep_dir / "decisions.jsonl") as f:
        for r in records:
            row = {"id": r.id, "source": r.source, "location": r.location, "kept": not r.stage,
                   "stage": r.stage or "selected", "reason": r.detail or r.reason, "duplicate_of": r.duplicate_of,
                   "scores": r.scores}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    examples: dict[str, list[dict[str, str]]] = {}
    for r in records:
        if r.stage:
            key = f"{r.stage}: {r.reason}"
            bucket = examples.setdefault(key, [])
            if len(bucket) < cfg.examples_per_reason:
                bucket.append({"id": r.id, "prompt": r.prompt[:200], "response": r.response[:300],
                               "reason": r.detail or r.reason})
    score_names = sorted({k for r in records for k in r.scores})
    dist = {}
    for name in score_names:
        kept = [r.scores[name] for r in selected if r.scores.get(name) is not None]
        allv = [r.scores[name] for r in records if r.scores.get(name) is not None]
        dist[name] = {"all": _summary(allv), "selected": _summary(kept)}
    report = {"output": cfg.output, "pool_records": len(records), "selected": len(selected),
              "target_size": cfg.target_size, "funnel": funnel, "sources": sources, "score_distributions": dist,
              "removed_examples": examples, "duplicates": dup_examples,
              "config": json.loads(cfg.model_dump_json())}
    figs = _plots(records, selected, funnel, score_names, last_alive, emb, chosen)
    for name, png in figs.items():
        (rep_dir / f"{name}.png").write_bytes(png)
    report["plots"] = sorted(f"{n}.png" for n in figs)
    write_record(rep_dir / FILTER_REPORT_NAME, FilterReport(**report))
    write_text(rep_dir / "curation_report.md", _markdown(report))
    return report


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.array(values, dtype=float)
    return {"n": len(a), "mean": round(float(a.mean()), 4), "p10": round(float(np.percentile(a, 10)), 4),
            "p50": round(float(np.percentile(a, 50)), 4), "p90": round(float(np.percentile(a, 90)), 4)}


def _plots(records, selected, funnel, score_names, last_alive, emb, chosen) -> dict[str, bytes]:
    from sftlab import plotting

    figs = {"funnel": plotting.bar_chart({s["stage"]: s["kept"] for s in funnel}, "records kept after each stage",
                                         horizontal=True)}
    sel_ids = {id(r) for r in selected}
    for name in score_names:
        series = {"selected": [r.scores[name] for r in records if id(r) in sel_ids and r.scores.get(name) is not None],
                  "not selected": [r.scores[name] for r in records
                                   if id(r) not in sel_ids and r.scores.get(name) is not None]}
        if any(series.values()):
            figs[f"score_{name}"] = plotting.histograms({k: v for k, v in series.items() if v}, f"{name} score")
    if emb is not None and len(emb) >= 3:
        xy = project_2d(emb)
        mask = np.zeros(len(emb), dtype=bool)
        mask[chosen] = True
        figs["prompt_map"] = plotting.scatter_map(xy.tolist(), mask.tolist(),
                                                  f"prompt embeddings (PCA): {int(mask.sum())} selected of "
                                                  f"{len(emb)} candidates")
    return figs


def _markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Curation report: {rep['output']}", "",
             f"Selected **{rep['selected']}** of **{rep['pool_records']}** pool records (target "
             f"{rep['target_size']}).", "", "## Funnel", "", "| stage | in | kept | dropped (reason: count) | s |",
             "|---|---|---|---|---|"]
    for s in rep["funnel"]:
        why = "; ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['in']} | {s['kept']} | {why} | {s['seconds']} |")
    lines += ["", "![funnel](funnel.png)", ""]
    if rep["score_distributions"]:
        lines += ["## Scores", "", "| score | all (mean, p10/p50/p90) | selected (mean, p10/p50/p90) |",
                  "|---|---|---|"]
        for name, d in rep["score_distributions"].items():
            cells = [f"{x['mean']} ({x['p10']}/{x['p50']}/{x['p90']}, n={x['n']})" if x else "-"
                     for x in (d["all"], d["selected"])]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        lines += [""] + [f"![{p}]({p})" for p in rep["plots"] if p.startswith("score_")] + [""]
    if "prompt_map.png" in rep["plots"]:
        lines += ["## Coverage", "", "![prompt map](prompt_map.png)", ""]
    if rep["duplicates"]:
        lines += ["## Duplicates found (examples)", ""]
        lines += [f"- {d['kind']}: `{d['dropped']}` copies `{d['kept']}`: {d['dropped_prompt'][:100]!r}"
                  for d in rep["duplicates"][:10]]
        lines.append("")
    if rep["removed_examples"]:
        lines += ["## Removed records, by reason (examples)", ""]
        for reason, exs in rep["removed_examples"].items():
            lines.append(f"### {reason}")
            for e in exs:
                lines.append(f"- `{e['id']}` prompt: {' '.join(e['prompt'].split())[:120]!r} / response: "
                             f"{' '.join(e['response'].split())[:160]!r}")
            lines.append("")
    return "\n".join(lines)
