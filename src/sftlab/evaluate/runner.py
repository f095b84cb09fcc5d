"""Run an evaluation suite on two (or more) models with the same prompts and decoding; write JSON + Markdown.

Each per-model evaluator returns metrics as {"value", "n", "ci95"?} plus per-prompt samples; a pairwise
evaluator (judge) compares the first two subjects. Generations go through a cache keyed by the model version,
so re-running a suite on the same model only generates what is new. The result is the typed record
`sftlab.artifacts.SuiteResult`, rendered by `sftlab.artifacts.render`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.artifacts.layout import EvalFiles
from sftlab.artifacts.records import SuiteResult, write_record
from sftlab.artifacts.render import suite_markdown
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation, Turn
from sftlab.data.writers import write_text
from sftlab.errors import ConfigError
from sftlab.evaluate.checks import mentions_identity, same_language, wilson_interval
from sftlab.evaluate.judge import (
    CUT_OFF,
    SCALES,
    AnyJudge,
    CritiqueJudge,
    GradingJudge,
    LogprobJudge,
    ModelJudge,
    RubricJudge,
    cut_off_check,
    cut_off_rule,
    pairwise_winrate,
)
from sftlab.evaluate.nll import heldout_response_nll
from sftlab.evaluate.numeric_answers import final_answer_accuracy
from sftlab.evaluate.suite import (
    CustomEval,
    EvalSuite,
    IdentityEval,
    InstructionEval,
    JudgeEval,
    MathEval,
    NLLEval,
    ToolCallEval,
)
from sftlab.evaluate.toolcalls import tool_cases
from sftlab.generation.base import GENERATION_BATCH, Generation, Generator, Messages, SamplingParams, as_messages
from sftlab.textutil import THINK_CLOSE, THINK_OPEN, answer_of
from sftlab.userfn import import_callable


@dataclass
class Subject:
    """One model under test. `model`/`tokenizer` are needed only for NLL; `context` wraps every call
    (e.g. a PEFT model's `disable_adapter` makes the same weights act as the base)."""

    label: str
    generator: Generator
    model: Any = None
    tokenizer: Any = None
    context: Callable[[], AbstractContextManager] = nullcontext


def metric(value: float | None, n: int, successes: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"value": None if value is None else round(float(value), 4), "n": n}
    if successes is not None:
        out["ci95"] = list(wilson_interval(successes, n))
    return {**out, **extra}


def rate_metric(flags: list[bool]) -> dict[str, Any]:
    n = len(flags)
    return metric(sum(flags) / n if n else None, n, sum(flags))


# A reply that runs on into a new turn: a chat template's role tags, or a line that opens a dialogue turn
# ("User: ...", "Assistant:", a role name alone on its line as a template header decodes) - anywhere, a think
# block included: a model that writes the next turn has run into it, whatever it wraps that in.
_TURN_START = re.compile(r"<\|?(im_start|start_of_turn|end_of_turn|user|assistant)\|?>"
                         r"|(^|\n)\s*((user|human|assistant)\s*[:\n]|(model|system)[ \t]*\n)", re.I)
# ... and, in the answer only, an invented next question or prompt-format header. In a think block these lines are
# the model's notes ("Question: <the prompt restated>", "System: 2x + y = 7", "Model: f(x) = ..."), not a turn.
_ANSWER_TURN_START = re.compile(r"(^|\n)\s*(model|system|### ?(instruction|input|response)|q|question)\s*[:\n]",
                                re.I)


def _thoughts_and_answer(reply: str) -> tuple[list[str], list[str]]:
    """The reply's think blocks and the text outside them, each piece on its own (a piece's start is a line start).
    A '</think>' before any '<think>' closes a block the prompt opened; a block never closed runs to the end."""
    thoughts, rest, pos = [], [], 0
    close, opened = reply.find(THINK_CLOSE), reply.find(THINK_OPEN)
    if close >= 0 and (opened < 0 or close < opened):
        thoughts.append(reply[:close])
        pos = close + len(THINK_CLOSE)
    while (start := reply.find(THINK_OPEN, pos)) >= 0:
        rest.append(reply[pos:start])
        end = reply.find(THINK_CLOSE, start)
        thoughts.append(reply[start + len(THINK_OPEN):end if end >= 0 else len(reply)])
        pos = end + len(THINK_CLOSE) if end >= 0 else len(reply)
    rest.append(reply[pos:])
    return thoughts, rest


def runs_into_new_turn(reply: str) -> bool:
    """Role tags or a dialogue-turn line anywhere; an invented question or prompt header outside think blocks."""
    thoughts, answer = _thoughts_and_answer(reply)
    return (any(_TURN_START.search(t) for t in thoughts + answer)
            or any(_ANSWER_TURN_START.search(a) for a in answer))


def _prompt_convs(ev) -> list[Conversation]:
    if getattr(ev, "prompts", None):
        return [Conversation(turns=[Turn("user", p)], id=f"p{i}") for i, p in enumerate(ev.prompts)]
    data = getattr(ev, "data", None)
    if data is None:
        raise ValueError(f"evaluator '{ev.type}' needs `prompts` or `data`")
    spec = data.model_copy(update={"require_response": False}) if isinstance(data, DataSpec) else data
    return load_conversations(spec)[0]


def _generate(subject: Subject, prompts: list[Messages], max_new_tokens: int, n: int = 1,
              temperature: float = 0.0, seed: int = 0):
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed)
    with subject.context():
        return subject.generator.generate(prompts, params)


def _samples(prompts: list[str], gens) -> list[dict[str, Any]]:
    return [{"prompt": p, **g[0].to_dict()} for p, g in zip(prompts, gens, strict=True)]


def eval_nll(ev: NLLEval, subject: Subject, budget: int) -> tuple[dict, list]:
    if subject.model is None:
        return {"response_nll": metric(None, 0, note="needs local weights")}, []
    convs = load_conversations(ev.data)[0]
    with subject.context():
        r = heldout_response_nll(subject.model, subject.tokenizer, convs, max_length=ev.max_length)
    return {"response_nll": metric(r["nll"], r["tokens"], ppl=r["ppl"], examples=r["examples"])}, []


def eval_instruction(ev: InstructionEval, subject: Subject, budget: int) -> tuple[dict, list]:
    convs = _prompt_convs(ev)
    prompts = [c.prompt_turns[-1].content for c in convs]
    gens = _generate(subject, [as_messages(c) for c in convs], budget)
    replies = [g[0] for g in gens]
    # answered: something after any think block (a reply that only thinks, or never stops thinking, answers nothing)
    ok = [bool(answer_of(r.text).strip()) and r.finished and not runs_into_new_turn(r.text) for r in replies]
    return {
        "answered_and_stopped": rate_metric(ok),
        "stopped_at_end_of_turn": rate_metric([r.finished for r in replies]),
        "ran_into_new_turn": rate_metric([runs_into_new_turn(r.text) for r in replies]),
        "same_language_as_prompt": rate_metric([same_language(p, r.text) for p, r in zip(prompts, replies,
                                                                                          strict=True)]),
        "mean_reply_tokens": metric(sum(r.n_tokens for r in replies) / max(1, len(replies)), len(replies)),
    }, _samples(prompts, gens)


def eval_identity(ev: IdentityEval, subject: Subject, budget: int) -> tuple[dict, list]:
    prompts = ev.identity_prompts + ev.general_prompts
    gens = _generate(subject, [as_messages(p) for p in prompts], budget)
    hits = [mentions_identity(g[0].text, ev.name, ev.author) for g in gens]
    k = len(ev.identity_prompts)
    samples = _samples(prompts, gens)
    for i, s in enumerate(samples):
        s["kind"] = "identity" if i < k else "general"
    return {"identity_correct": rate_metric(hits[:k]),
            "general_answered_with_identity": rate_metric(hits[k:])}, samples


def eval_math(ev: MathEval, subject: Subject, budget: int) -> tuple[dict, list]:
    problems = load_conversations(ev.data)[0]
    with subject.context():
        r = final_answer_accuracy(subject.generator, problems, max_new_tokens=budget, k=ev.k,
                                  temperature=ev.temperature)
    key = "accuracy" if ev.k == 1 else f"pass@{ev.k}"
    samples = [{"prompt": s["question"], "text": s["replies"][0], "reference": s["reference"],
                "correct": any(s["correct"])} for s in r["samples"]]
    metrics = {key: metric(r[key], r["n"], r["correct"], **({"unscored": r["unscored"]} if r["unscored"] else {}))}
    if ev.format is not None:
        follows = [re.fullmatch(ev.format, s["text"].strip()) is not None for s in samples]
        metrics["format_followed"] = rate_metric(follows)
    return metrics, samples


def eval_tool_calls(ev: ToolCallEval, subject: Subject, budget: int) -> tuple[dict, list]:
    """Every conversation's first assistant turn: the call it made (right function, arguments valid against the
    tool's schema, shown or not) or, where it made none, a reply without a call."""
    cases = tool_cases(load_conversations(ev.data)[0], ev.tools_in_prompt)
    gens = _generate(subject, [c.messages for c in cases], budget)
    scores = [c.score(g[0].text_with_calls) for g, c in zip(gens, cases, strict=True)]  # a structured call too
    calls = [s for s, c in zip(scores, cases, strict=True) if c.expected]
    none_needed = [s for s, c in zip(scores, cases, strict=True) if not c.expected]
    samples = [{"prompt": c.prompt, "kind": c.kind, **g[0].to_dict(), "expected": c.expected and c.expected["name"],
                **s} for g, c, s in zip(gens, cases, scores, strict=True)]
    metrics = {key: rate_metric([s[flag] for s in calls]) for key, flag in (
        ("tool_call_correct", "correct"), ("parseable_call", "parsed"), ("right_function", "right_function"),
        ("names_right_function", "names_function"), ("args_valid", "args_valid"),
        ("same_arguments", "same_arguments"))}
    return {**metrics, "no_call_when_none_needed": rate_metric([s["no_call"] for s in none_needed]),
            "stopped_at_end_of_turn": rate_metric([g[0].finished for g in gens])}, samples


def eval_custom(ev: CustomEval, subject: Subject, budget: int) -> tuple[dict, list]:
    fn = import_callable(ev.function, "evaluator")
    convs = _prompt_convs(ev)
    gens = _generate(subject, [as_messages(c) for c in convs], budget)
    values = []
    for c, g in zip(convs, gens, strict=True):
        v = fn(c.prompt_turns[-1].content, g[0].text, c.to_dict())
        values.append(None if v is None else float(v))
    scored = [v for v in values if v is not None]
    boolean = all(v in (0.0, 1.0) for v in scored)
    m = metric(sum(scored) / len(scored) if scored else None, len(scored),
               int(sum(scored)) if boolean and scored else None, unscored=len(values) - len(scored))
    samples = _samples([c.prompt_turns[-1].content for c in convs], gens)
    for s, v in zip(samples, values, strict=True):
        s["score"] = v
    return {ev.function.rsplit(":", 1)[-1]: m}, samples


PER_MODEL = {"nll": eval_nll, "instruction_following": eval_instruction, "identity": eval_identity,
             "math": eval_math, "tool_calls": eval_tool_calls, "custom": eval_custom}


def build_judge(ev: JudgeEval, references: dict[str, str] | None = None):
    if ":" in ev.judge and not ev.base_url and not Path(ev.judge).exists():
        return import_callable(ev.judge, "judge")
    if ev.mode == "logprob" or ev.mode in SCALES or (ev.mode == "auto" and not ev.base_url):
        from sftlab.models.loading import load_lm

        if ev.mode in SCALES:  # each answer graded alone
            return RubricJudge(*load_lm(ev.judge), scale=ev.mode, references=references)
        return LogprobJudge(*load_lm(ev.judge))
    from sftlab.generation.factory import build_generator

    generator = build_generator(ev.judge, base_url=ev.base_url, batch_size=GENERATION_BATCH)
    return CritiqueJudge(generator) if ev.mode == "critique" else ModelJudge(generator)


def _references(ev: JudgeEval, convs: list[Conversation]) -> dict[str, str] | None:
    """Prompt -> the dataset's reply, for reference-guided rubric grading."""
    if not ev.references:
        return None
    if ev.mode != "rubric" or ev.data is None:
        raise ConfigError("judge `references: true` needs `mode: rubric` and `data` whose records have replies")
    refs = {c.prompt_turns[-1].content: c.turns[-1].content for c in convs if c.turns[-1].role == "assistant"}
    if len(refs) < len(convs):
        raise ConfigError(f"judge `references: true`: {len(convs) - len(refs)} of {len(convs)} records in "
                          f"{ev.data.path} have no reply to use as the reference")
    return refs


def judged_text(g: Generation) -> str:
    """What the judge reads: the reply, marked when it ran out of tokens (a judge that cannot see the cut would
    grade an answer that never ends as merely long)."""
    return g.text if g.finished else g.text + CUT_OFF


def eval_judge(ev: JudgeEval, subjects: list[Subject], budget: int, judge=None,
               judges: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tuned (last subject) vs base (first), judged in both orders. `judges` (evaluator config -> its judge, filled
    here) lets several comparisons share one judge and the grades it has given: an answer seen before is not
    graded again."""
    if len(subjects) < 2:
        raise ValueError("the judge evaluator compares two models")
    first, second = subjects[-1], subjects[0]  # the tuned model (last) against the base (first)
    convs = _prompt_convs(ev)
    prompts = [c.prompt_turns[-1].content for c in convs]
    msgs = [as_messages(c) for c in convs]
    references = _references(ev, convs)  # checked before any generation
    gen_a = [g[0] for g in _generate(first, msgs, budget)]
    gen_b = [g[0] for g in _generate(second, msgs, budget)]
    a, b = [judged_text(g) for g in gen_a], [judged_text(g) for g in gen_b]
    ended = [(x.finished, y.finished) for x, y in zip(gen_a, gen_b, strict=True)]
    ruled = ev.cut_off == "loses"
    if judge is None and not (ruled and all(cut_off_rule(*e) is not None for e in ended)):
        judges = {} if judges is None else judges
        key = ev.model_dump_json(exclude={"cut_off", "label"})  # the same judge, the same grades
        if key not in judges:
            judges[key] = build_judge(ev, references)
        judge = judges[key]
    labels = (first.label, second.label)
    r = pairwise_winrate(judge, prompts, a, b, labels, ended if ruled else None)
    if not ruled:
        r["one_cut_off"] = cut_off_check([v["outcome"] for v in r["verdicts"]], ended, labels)
    samples = [{"prompt": p, first.label: x, second.label: y, **v}
               for p, x, y, v in zip(prompts, a, b, r.pop("verdicts"), strict=True)]
    if isinstance(judge, GradingJudge):  # the grades behind each verdict, for reading why a pair tied
        for s, p, x, y in zip(samples, prompts, a, b, strict=True):
            if s["by"] != "judge":
                continue
            grades = judge.grade_many([(p, x), (p, y)])  # already graded: read from the judge's cache
            s["grades"] = {k: g if g is None else round(g, 2) for k, g in zip(labels, grades, strict=True)}
            if isinstance(judge, CritiqueJudge):
                s["critiques"] = dict(zip(labels, (judge.critiques[p, x], judge.critiques[p, y]), strict=True))
    kind = type(judge).__name__ if isinstance(judge, AnyJudge) else "function" if judge else "cut-off rule only"
    return {"type": "judge", "pairwise": {"judge": ev.judge, "kind": kind, "labels": [first.label, second.label], **r},
            "samples": samples}


def run_suite(suite: EvalSuite, subjects: list[Subject], log: Callable[[str], None] = lambda s: None,
              judge=None, judges: dict[str, Any] | None = None) -> SuiteResult:
    """Every evaluator on every subject, in suite order. `judge` overrides the judge evaluators' judge; `judges`
    shares them with other runs (see eval_judge)."""
    result = SuiteResult(suite=suite.name, subjects={s.label: s.generator.model_id for s in subjects})
    for name, ev in zip(suite.unique_names(), suite.evaluators, strict=True):
        budget = ev.max_new_tokens or suite.max_new_tokens
        if isinstance(ev, JudgeEval):
            log(f"eval {name}: judging {subjects[-1].label} vs {subjects[0].label} (both orders)")
            result.evaluators[name] = eval_judge(ev, subjects, budget, judge, judges)
            continue
        entry: dict[str, Any] = {"type": ev.type, "metrics": {}, "samples": []}
        per_subject_samples = {}
        for subject in subjects:
            log(f"eval {name}: {subject.label}")
            metrics, samples = PER_MODEL[ev.type](ev, subject, budget)
            for key, m in metrics.items():
                entry["metrics"].setdefault(key, {})[subject.label] = m
            per_subject_samples[subject.label] = samples
        entry["samples"] = _side_by_side(per_subject_samples)
        result.evaluators[name] = entry
    return result


def _side_by_side(per_subject: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    labels = [k for k, v in per_subject.items() if v]
    if not labels:
        return []
    rows = []
    for i, first in enumerate(per_subject[labels[0]]):
        row = {"prompt": first["prompt"], **({"kind": first["kind"]} if "kind" in first else {})}
        for lab in labels:
            row[lab] = {k: v for k, v in per_subject[lab][i].items() if k not in ("prompt", "kind")}
        rows.append(row)
    return rows


def write_result(res: SuiteResult, out_dir: Path, stem: str = "eval") -> tuple[Path, Path]:
    """eval.json (the typed record) and eval.md (its Markdown rendering)."""
    files = EvalFiles(out_dir, stem)
    write_record(files.json, res)
    write_text(files.markdown, suite_markdown(res))
    return files.json, files.markdown
