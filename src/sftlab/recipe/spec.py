"""A recipe YAML: the stages of one use case, in order, each writing into its own folder of the run.

```yaml
name: identity
description: base model -> instruct model that says who it is
student: gemma-3-270m            # shown in RESULTS.md
teacher: qwen2.5-coder-1.5b-instruct
stages:
  - {id: data, type: prepare, function: shipped_identity_mix, params: {name: Orca}}
  - id: lora
    type: train                  # a `sftlab train` config; output_dir is the stage folder
    config: {model: gemma-3-270m, data: [{path: "${data}/train.jsonl"}], method: lora}
  - id: eval
    type: eval                   # an evaluation suite, base vs each trained model
    models: [lora]
    suite: {evaluators: [{type: identity, name: Orca, identity_prompts: "${heldout:identity}"}]}
result: {eval: eval, metrics: [identity.identity_rate]}
```

`${ID}` is stage ID's folder, `${heldout:KIND}` the shipped held-out prompts (identity | general), `${resources}` the
shipped data folder, `${run:NAME}` the run folder of recipe NAME (listed in `requires:`). `quick:` holds dotted
overrides applied by `--quick` (the tiny-model smoke run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sftlab.errors import ConfigError
from sftlab.generation.base import GENERATION_BATCH
from sftlab.yamlconfig import read_yaml_mapping, validated

REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
RUN_REF = re.compile(r"\$\{run:([A-Za-z0-9_-]+)\}")
STAGE_ID = r"^[a-z0-9][a-z0-9_-]*$"


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STAGE_ID, description="Stage name: its folder in the run, and `${id}` in later stages.")


class PrepareStage(_Stage):
    type: Literal["prepare"] = "prepare"
    function: str = Field(description="A preparer name (sftlab.recipe.preparers) or module:function.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the preparer.")


class DistillStage(_Stage):
    type: Literal["distill"] = "distill"
    job: dict[str, Any] = Field(description="`sftlab curate distill` options (out is the stage's data.jsonl).")


class BestOfKStage(_Stage):
    type: Literal["best_of_k"] = "best_of_k"
    job: dict[str, Any] = Field(description="`sftlab curate best-of-k` options (out is the stage's data.jsonl).")


class FilterStage(_Stage):
    type: Literal["filter"] = "filter"
    config: dict[str, Any] = Field(description="A `sftlab curate filter` config (output is the stage's "
                                               "selected.jsonl).")


class TrainStage(_Stage):
    type: Literal["train"] = "train"
    config: dict[str, Any] = Field(description="A `sftlab train` config (output_dir is the stage's model/).")


class EvalStage(_Stage):
    type: Literal["eval"] = "eval"
    models: list[str] = Field(min_length=1, description="Train stages to evaluate, each against its base model.")
    suite: dict[str, Any] = Field(description="An evaluation suite (see evals/): every evaluator on base and tuned.")
    head_to_head: list[tuple[str, str]] = Field(
        default_factory=list, description="Pairs of train stages compared with the suite's judge evaluators only.")
    batch_size: int = Field(GENERATION_BATCH, ge=1, description="Generation batch size.")
    dtype: str = Field("auto", description="Weights dtype for generation; auto: bf16 where it is fast (~2x faster "
                                           "on a CPU with AVX512-BF16/AMX), else fp32.")


Stage = Annotated[PrepareStage | DistillStage | BestOfKStage | FilterStage | TrainStage | EvalStage,
                  Field(discriminator="type")]


class ResultSpec(BaseModel):
    """What RESULTS.md shows for this recipe: headline metrics of one eval stage, one row per trained model."""

    model_config = ConfigDict(extra="forbid")

    eval: str | None = Field(None, description="The eval stage whose results are the recipe's result (none for a "
                                               "recipe that only measures).")
    metrics: list[str] = Field(default_factory=list, description="EVALUATOR.METRIC (e.g. identity.identity_rate), "
                                                                 "or EVALUATOR for a judge's win-rate.")
    method: dict[str, str] = Field(default_factory=dict, description="Per model: how it was trained, in words.")
    measures: list[str] = Field(default_factory=list, description="Prepare stages whose returned numbers are results "
                                                                  "too (e.g. a scorer's AUC), listed under the table.")

    @model_validator(mode="after")
    def _shows_something(self) -> ResultSpec:
        """An eval stage needs its headline metrics; without one the recipe's result is its measures."""
        if self.eval and not self.metrics:
            raise ValueError("result.metrics: name at least one metric of the eval stage")
        if not self.eval and not self.measures:
            raise ValueError("result: name an eval stage with its metrics, or measures")
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STAGE_ID, description="Recipe name; the run folder defaults to runs/<name>.")
    description: str = Field("", description="One line: the use case and the claim it measures.")
    student: str = Field("", description="The model trained (for RESULTS.md).")
    teacher: str = Field("", description="The model whose answers or grades made the data (for RESULTS.md).")
    seed: int = Field(0, ge=0, description="Passed to every preparer (train and curate stages set their own).")
    requires: list[str] = Field(default_factory=list, description="Recipes whose runs this one reads with "
                                                                  "`${run:NAME}` (run first by `sftlab results`).")
    stages: list[Stage] = Field(min_length=1)
    result: ResultSpec | None = None
    quick: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides for --quick, e.g. "
                                                                    "`stages.data.params.n: 4`.")

    @field_validator("stages")
    @classmethod
    def _unique_ids(cls, stages: list[Any]) -> list[Any]:
        ids = [s.id for s in stages]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"stage ids must be unique: {', '.join(dup)}")
        return stages

    @model_validator(mode="after")
    def _references_point_back(self) -> Recipe:
        """Every `${id}` and model name refers to an earlier stage (of the right type for models)."""
        seen: dict[str, str] = {}
        for stage in self.stages:
            for ref in sorted(references(stage.model_dump())):
                if ref not in seen:
                    raise ValueError(f"stage '{stage.id}' uses ${{{ref}}}, which is not an earlier stage")
            if isinstance(stage, EvalStage):
                for m in [*stage.models, *(x for pair in stage.head_to_head for x in pair)]:
                    if seen.get(m) != "train":
                        raise ValueError(f"stage '{stage.id}': '{m}' is not an earlier train stage")
            seen[stage.id] = stage.type
        if self.result and self.result.eval and seen.get(self.result.eval) != "eval":
            raise ValueError(f"result.eval '{self.result.eval}' is not an eval stage")
        for m in self.result.measures if self.result else []:
            if seen.get(m) != "prepare":
                raise ValueError(f"result.measures: '{m}' is not a prepare stage")
        return self

    def stage(self, stage_id: str) -> Any:
        return next(s for s in self.stages if s.id == stage_id)


def references(value: Any) -> set[str]:
    """The stage ids a config value refers to with `${id}`."""
    if isinstance(value, str):
        return {m for m in REF.findall(value) if m != "resources"}
    if isinstance(value, dict):
        return set().union(set(), *(references(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(set(), *(references(v) for v in value))
    return set()


def is_recipe(path: Path) -> bool:
    """A YAML with `stages:` is a recipe (recipes/ also holds plain train and filter configs)."""
    try:
        return "stages" in read_yaml_mapping(path, "recipe")
    except ConfigError:
        return False


def load_recipe(path: str | Path, quick: bool = False) -> Recipe:
    """Read and check a recipe; with `quick`, its `quick:` overrides are applied first."""
    from sftlab.recipe.quick import apply_quick

    raw = read_yaml_mapping(path, "recipe")
    if quick:
        raw = apply_quick(raw, str(path))
    return validated(Recipe, raw, str(path))
