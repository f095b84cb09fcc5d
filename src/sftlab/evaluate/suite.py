"""Evaluation suites declared in YAML: base vs tuned, same prompts, same decoding, every number with its n.

```yaml
name: orca
max_new_tokens: 128
evaluators:
  - type: nll                      # held-out response NLL / perplexity
    data: {path: runs/demo/data/heldout.jsonl}
  - type: instruction_following    # answered, stopped at end of turn, no role tags
    data: {path: ../shared/data/alpaca_en_demo.json, max_records: 20}
  - type: identity
    name: Orca
    author: the sftlab team
  - type: math                     # final-answer accuracy; k > 1 with temperature > 0 gives pass@k
    format: "(?s)<think>.+</think>\\s*The answer is .+"   # optional: share of replies in the trained format
    data: {path: ../shared/data/gsm8k/test.jsonl, max_records: 50}
  - type: tool_calls               # each first reply: the right call, or no call where none is needed
    data: {path: ../shared/data/glaive_toolcall_en_demo.json, max_records: 20}
    tools_in_prompt: false
  - type: judge                    # pairwise win-rate, both orders
    judge: smollm2-135m-instruct   # a model, or module:function
    prompts: ["Give me three tips for staying healthy."]
  - type: custom
    function: my_evals:polite      # fn(prompt, reply, record) -> bool | float
    prompts: ["Say hello."]
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sftlab.data.loading import DataSpec
from sftlab.data.shipped import heldout_prompts
from sftlab.errors import DataError
from sftlab.textutil import not_utf8
from sftlab.yamlconfig import read_yaml_mapping, regex_error, validated


def default_prompts(kind: str) -> list[str]:
    """A quick default check (5 identity, 6 general prompts) drawn from the held-out set."""
    return heldout_prompts(kind)[:5 if kind == "identity" else 6]


class _Evaluator(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, description="Name in the results; defaults to the type (made unique).")
    max_new_tokens: int | None = Field(None, ge=1, description="Overrides the suite's budget.")


class _Prompted(_Evaluator):
    prompts: list[str] | None = Field(None, description="Inline prompts.")
    data: DataSpec | None = Field(None, description="Or a dataset; its prompts are used (replies are ignored).")


class NLLEval(_Evaluator):
    type: Literal["nll"] = "nll"
    data: DataSpec = Field(description="Held-out SFT data; the NLL of its last replies is measured.")
    max_length: int = Field(1024, description="Tokens per example at most (longer ones are truncated).")


class InstructionEval(_Prompted):
    type: Literal["instruction_following"] = "instruction_following"


class IdentityEval(_Evaluator):
    type: Literal["identity"] = "identity"
    name: str = Field(description="The identity the model should claim, e.g. Orca.")
    author: str | None = Field(None, description="Who built it; naming the author also counts.")
    identity_prompts: list[str] = Field(default_factory=lambda: default_prompts("identity"),
                                        description="Questions whose reply should claim the identity.")
    general_prompts: list[str] = Field(default_factory=lambda: default_prompts("general"),
                                       description="Other questions, where claiming it unasked is collapse.")


class MathEval(_Evaluator):
    type: Literal["math"] = "math"
    data: DataSpec
    k: int = Field(1, ge=1, description="Samples per problem; pass@k when > 1.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature of the k samples (0: greedy).")
    format: str | None = Field(None, description="A regular expression the whole (stripped) first reply must match, "
                                                 "e.g. a think block then 'The answer is N.': the share that does is "
                                                 "`format_followed`, whether or not the answer is right.")

    @field_validator("format")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None and (why := regex_error(v)):
            raise ValueError(f"not a regular expression: {why}")
        return v


class ToolCallEval(_Evaluator):
    type: Literal["tool_calls"] = "tool_calls"
    data: DataSpec
    tools_in_prompt: bool = Field(True, description="Describe the tools in a system message (e.g. a base model "
                                                    "shown them); false: the turns alone, for a model trained to "
                                                    "call tools it is never shown.")


class JudgeEval(_Prompted):
    type: Literal["judge"] = "judge"
    judge: str = Field("smollm2-135m-instruct", description="Judge model (name, folder, .gguf) or module:function "
                                                            "taking (prompt, answer_a, answer_b) -> 'A'|'B'|'tie'.")
    base_url: str | list[str] | None = Field(None, description="OpenAI-compatible endpoint serving the judge; a "
                                                               "list: several serving it, least-loaded first.")
    mode: Literal["auto", "generate", "logprob", "rubric", "yes_no", "critique"] = Field(
        "auto", description="logprob: p('A') vs p('B') from a local judge (never unparseable); generate: parse the "
                            "judge's reply (any engine); rubric: grade each answer alone, 1-5, from a local judge's "
                            "digit probabilities (no position bias); yes_no: ask a local judge whether each answer "
                            "alone is good, read p('Yes'); critique: the rubric, but the judge writes a short "
                            "critique of each answer alone, then 'Grade: N' (any engine); auto: logprob for a local "
                            "model, generate for an endpoint.")
    references: bool = Field(False, description="Rubric mode with `data`: show the judge each record's reply as a "
                                                "reference answer (reference-guided grading).")
    cut_off: Literal["judge", "loses"] = Field(
        "judge", description="A reply that had not ended at the token budget. judge: the judge decides, seeing it "
                             "marked as cut off; loses: an answer that ended beats it and two such replies tie, "
                             "without asking the judge (the rubric's own rule, which the 1.5B judge does not apply: "
                             "it grades run-on answers up). A second judge evaluator that differs only here reuses "
                             "the first one's grades.")


class CustomEval(_Prompted):
    type: Literal["custom"] = "custom"
    function: str = Field(description="module:function(prompt, reply, record) -> bool | float | None")


EvaluatorConfig = Annotated[NLLEval | InstructionEval | IdentityEval | MathEval | ToolCallEval | JudgeEval |
                            CustomEval, Field(discriminator="type")]


class EvalSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("eval", description="Suite name in the results.")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget (greedy) for every evaluator.")
    evaluators: list[EvaluatorConfig]

    def unique_names(self) -> list[str]:
        names, seen = [], {}
        for ev in self.evaluators:
            base = ev.label or ev.type
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
        return names


def check_suite_files(suite: EvalSuite) -> None:
    """Every local file an evaluator reads exists: checked before any model loads, not after the base model has
    generated for the evaluators before it."""
    for i, ev in enumerate(suite.evaluators):
        spec = getattr(ev, "data", None)
        if spec is not None and spec.type not in ("hf", "sql") and spec.query is None and not Path(spec.path).exists():
            raise DataError("file not found", source=spec.path, field=f"evaluators.{i}.data.path")


def make_suite(raw: dict[str, Any], source: str = "suite") -> EvalSuite:
    return validated(EvalSuite, raw, source)


def load_suite(path: str | Path) -> EvalSuite:
    return make_suite(read_yaml_mapping(path, "evaluation suite"), str(path))


def read_prompt_file(path: Path) -> list[str]:
    """Prompts from a file: one a line, or JSONL records with a `prompt` field. A UTF-8 BOM (Windows editors
    write one) is not part of the first prompt, as the data readers read it."""
    raw = path.read_bytes()
    try:  # decoded whole, BOM and all, so a bad byte's line and column count in the file as it is
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        message, line = not_utf8(raw, e)
        raise DataError(message, source=str(path), record=f"line {line}", reason="not UTF-8") from None
    prompts = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"not valid JSON ({e})", source=str(path), record=f"line {i}") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise DataError("expected a JSON object with a text `prompt`", source=str(path), record=f"line {i}",
                            field="prompt")
        prompts.append(record["prompt"])
    if not prompts:  # else the base model loads, then the evaluator fails as if --prompts had not been given
        raise DataError("no prompts: the file is empty or holds only blank lines", source=str(path),
                        reason="empty source")
    return prompts


def options_suite(prompts: Path | None = None, reference: Path | None = None, name: str | None = None,
                  author: str | None = None, max_new_tokens: int = 128) -> EvalSuite:
    """The suite `sftlab eval` runs without a suite file: instruction following on the prompts (default: the
    identity and general defaults), plus response NLL on `reference` and an identity check for `name`."""
    texts = read_prompt_file(prompts) if prompts else default_prompts("identity") + default_prompts("general")
    evs: list[dict] = [{"type": "instruction_following", "prompts": texts}]
    if reference:
        evs.insert(0, {"type": "nll", "data": {"path": str(reference)}})
    if name:
        evs.append({"type": "identity", "name": name, "author": author})
    return make_suite({"name": "eval", "max_new_tokens": max_new_tokens, "evaluators": evs})
