"""The filter's settings (one pydantic schema per stage) and how the command's options fold into them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sftlab.curate.filter.diversity import DiversitySettings
from sftlab.curate.filter.heuristics import HeuristicSettings
from sftlab.curate.filter.scorers import ScorerSettings
from sftlab.data.loading import DataSpec
from sftlab.yamlconfig import apply_overrides, read_yaml_mapping, validated


class DedupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Drop records whose normalised prompt+response was seen before.")
    exact_prompt: bool = Field(True, description="Also drop a repeated normalised prompt (keep its first answer).")
    near: bool = Field(True, description="MinHash LSH near-duplicates.")
    near_on: list[str] = Field(["prompt", "prompt_response"], description="Texts compared: prompt and/or "
                                                                          "prompt_response.")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word shingles.")
    ngram: int = Field(3, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: a closer Jaccard estimate).")


class DecontamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval: list[DataSpec] = Field(default_factory=list, description="Evaluation sets that must not leak.")
    ngram: int = Field(13, ge=3, description="Words in a shared n-gram that counts as overlap.")
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
    output_format: Literal["auto", "jsonl", "parquet", "hf"] = Field(
        "auto", description="auto: .parquet is Parquet, anything else JSONL; hf: a `save_to_disk` folder.")
    target_size: int = Field(1000, ge=1, description="How many records to select.")
    seed: int = Field(0, description="Seed of the randomised selection methods (kcenter start, kmeans).")
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    decontaminate: DecontamSettings = Field(default_factory=DecontamSettings)
    heuristics: HeuristicSettings | None = Field(default_factory=HeuristicSettings)
    scorers: list[ScorerSettings] = Field(default_factory=list)
    min_quality: float | None = Field(None, ge=0, le=1, description="Drop records whose combined quality "
                                                                    "(a percentile rank) is below this.")
    diversity: DiversitySettings = Field(default_factory=DiversitySettings)
    report_dir: str | None = Field(None, description="Default: <output without suffix>.report/")
    examples_per_reason: int = Field(3, ge=0, description="Dropped records shown per reason in the report.")

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


def scorer_entries(options: list[str]) -> list[dict[str, str]]:
    """`--scorer TYPE[:MODEL]` options as config entries (`custom:module:function` names a function)."""
    entries = []
    for option in options:
        kind, _, arg = option.partition(":")
        key = "function" if kind == "custom" else "model"
        entries.append({"type": kind, **({key: arg} if arg else {})})
    return entries


def filter_config_with_options(path: Path | None, overrides: dict[str, Any], pool: list[str] | None = None,
                               output: str | None = None, output_format: str | None = None,
                               target_size: int | None = None,
                               eval_sets: list[str] | None = None, scorers: list[str] | None = None,
                               diversity: str | None = None) -> FilterConfig:
    """The config file (if any), then the command's options, then `--set` overrides (dotted keys), validated."""
    raw: dict = read_yaml_mapping(path, "filter config") if path else {}
    if pool:
        raw["pool"] = pool
    if output:
        raw["output"] = output
    if output_format:
        raw["output_format"] = output_format
    if target_size is not None:  # 0 is refused by the config, not taken for "not given"
        raw["target_size"] = target_size
    if eval_sets:
        raw.setdefault("decontaminate", {})["eval"] = eval_sets
    if scorers:
        raw["scorers"] = scorer_entries(scorers)
    if diversity:
        raw.setdefault("diversity", {})["method"] = diversity
    apply_overrides(raw, overrides)
    return make_filter_config(raw, str(path) if path else "options")
