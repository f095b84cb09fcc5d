"""Side-by-side before/after comparison of a base and a tuned model on the same prompts and decoding."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.schema import Conversation
from sftlab.data.writers import write_json, write_text
from sftlab.evaluate.checks import mentions_identity, rate, same_language
from sftlab.evaluate.nll import response_nll
from sftlab.generation.base import SamplingParams, as_messages
from sftlab.generation.transformers_backend import TransformersGenerator


@dataclass
class EvalPrompt:
    prompt: str
    kind: str = "general"  # identity | general


@dataclass
class Comparison:
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)  # model label -> metrics

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "rows": self.rows}


def summarise(rows: list[dict[str, Any]], label: str, name: str | None, author: str | None = None) -> dict[str, Any]:
    ident = [r for r in rows if r["kind"] == "identity"]
    general = [r for r in rows if r["kind"] == "general"]
    out: dict[str, Any] = {
        "stopped_at_end_of_turn": rate([r[label]["finished"] for r in rows]),
        "same_language_as_prompt": rate([same_language(r["prompt"], r[label]["text"]) for r in rows]),
        "mean_reply_tokens": round(sum(r[label]["n_tokens"] for r in rows) / max(1, len(rows)), 1),
    }
    if name:
        out["identity_correct"] = rate([mentions_identity(r[label]["text"], name, author) for r in ident])
        out["general_answered_with_identity"] = rate(
            [mentions_identity(r[label]["text"], name, author) for r in general])
    return out


def compare_models(model, tokenizer, prompts: list[EvalPrompt], *, adapter: bool, base_model=None,
                   reference: list[Conversation] | None = None, name: str | None = None,
                   author: str | None = None, params: SamplingParams | None = None, batch_size: int = 8) -> Comparison:
    """Generate greedily with base and tuned models, same prompts and template; score both.

    With `adapter=True`, `model` is a PEFT model and the base is the same weights with the adapter
    disabled (one copy in memory). Otherwise `base_model` is a separate model.
    """
    params = params or SamplingParams(max_new_tokens=96)
    variants = {"base": (base_model or model, model.disable_adapter() if adapter else None),
                "tuned": (model, None)}
    rows = [{"prompt": p.prompt, "kind": p.kind} for p in prompts]
    comp = Comparison(rows=rows)
    for label, (m, ctx) in variants.items():
        with ctx if ctx is not None else nullcontext():
            m.eval()
            gens = TransformersGenerator(m, tokenizer, batch_size=batch_size).generate(
                [as_messages(p.prompt) for p in prompts], params)
            for row, g in zip(rows, gens, strict=True):
                row[label] = g[0].to_dict()
            comp.summary[label] = summarise(rows, label, name, author)
            if reference:
                comp.summary[label]["heldout_response_nll"] = response_nll(m, tokenizer, reference)
    return comp


def comparison_markdown(comp: Comparison, title: str = "Before / after") -> str:
    labels = list(comp.summary)
    keys = [k for k in comp.summary[labels[0]]]
    lines = [f"# {title}", "", "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in keys:
        cells = []
        for lab in labels:
            v = comp.summary[lab].get(k)
            cells.append(f"{v['nll']} (ppl {v['ppl']}, {v['tokens']} tokens)" if isinstance(v, dict) else str(v))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "## Generations (greedy)", ""]
    for r in comp.rows:
        lines.append(f"**[{r['kind']}] {r['prompt']}**\n")
        for lab in labels:
            g = r[lab]
            end = "stopped" if g["finished"] else "did not stop"
            text = g["text"].replace("\n", " ")[:400]
            lines.append(f"- *{lab}* ({g['n_tokens']} tokens, {end}): {text}")
        lines.append("")
    return "\n".join(lines)


def write_comparison(comp: Comparison, out_dir: Path, stem: str = "comparison") -> tuple[Path, Path]:
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(js, comp.to_dict())
    write_text(md, comparison_markdown(comp))
    return js, md
