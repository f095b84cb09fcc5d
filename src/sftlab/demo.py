"""The main job: turn google/gemma-3-270m **base** into an instruct model with a new identity, and show it.

Data, all shipped in sftlab/resources (no other data needed): identity conversations ("I am {{name}}, built by
{{author}}") and general answers distilled from the packaged Qwen2.5-Coder-1.5B-Instruct teacher, then filtered
and diversity-ranked (`scripts/make_demo_data.py` regenerates them). Held-out prompts (identity paraphrases and
general prompts in no training file) and the teacher's answers to them are shipped too. Training: LoRA with bf16
autocast where the CPU has fast bf16 (else fp32). Check: greedy generations of base vs tuned on the held-out
prompts (held-out response NLL, identity and collapse, answered-and-stopped, a teacher-judged win-rate), then an
HTML + Markdown report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.artifacts.render import print_suite
from sftlab.data.shipped import heldout_prompts, resource, write_shipped_mix
from sftlab.evaluate.runner import SuiteResult, run_suite, write_result
from sftlab.evaluate.suite import EvalSuite, make_suite
from sftlab.train.config import TrainConfig, make_config
from sftlab.train.run import train

TEACHER = "qwen2.5-coder-1.5b-instruct"


@dataclass
class DemoData:
    train: Path
    reference: Path  # teacher answers to held-out general prompts, for the NLL check
    identity_prompts: list[str]
    general_prompts: list[str]
    counts: dict[str, int]


def demo_suite(name: str, author: str, data: DemoData, judge: str | None) -> EvalSuite:
    """Held-out NLL, identity + collapse, instruction following, and (with a judge) pairwise and rubric win-rates."""
    prompts = data.identity_prompts + data.general_prompts
    evaluators: list[dict] = [
        {"type": "nll", "data": {"path": str(data.reference)}},
        {"type": "identity", "name": name, "author": author, "identity_prompts": data.identity_prompts,
         "general_prompts": data.general_prompts},
        {"type": "instruction_following", "prompts": prompts},  # same prompts: served from the cache
    ]
    if judge:  # rubric: the teacher's pairwise p("A") vs p("B") was order-consistent on 0 of 49 pairs (README)
        evaluators.append({"type": "judge", "judge": judge, "mode": "rubric", "prompts": data.general_prompts})
    return make_suite({"name": f"demo ({name})", "max_new_tokens": 128, "evaluators": evaluators})


def build_demo_data(out_dir: Path, name: str, author: str, extra_data: list[str] | None = None,
                    general_examples: int | None = None, seed: int = 0, identity_repeats: int = 1) -> DemoData:
    """Write train.jsonl (shipped identity data `identity_repeats` times + distilled general data + any extra
    sources) and the references. Among 680 general answers the first 93-conversation identity set gave the
    identity on 79% of unseen paraphrases seen once and 90-95% seen twice; the 151-conversation set seen once
    95-97% (seeds 1 and 0), seen twice 92% (seed 1): no gain for 15% more training tokens, so once. The repeat is
    the usual mixing-ratio lever."""
    train_path = out_dir / "data" / "train.jsonl"
    counts = write_shipped_mix(train_path, name, author, identity_repeats=identity_repeats,
                               general_examples=general_examples, extra_data=extra_data, seed=seed)
    identity_prompts, general_prompts = heldout_prompts("identity"), heldout_prompts("general")
    counts |= {"heldout_identity": len(identity_prompts), "heldout_general": len(general_prompts)}
    return DemoData(train_path, resource("heldout_general_reference.jsonl"), identity_prompts, general_prompts,
                    counts)


def demo_train_config(model: str, train_path: Path, output_dir: Path, *, method: str = "lora", epochs: float = 2.0,
                      seed: int = 0, train_template_tokens: bool = False, **overrides: Any) -> TrainConfig:
    """The demo's training run; `scripts/tune_demo.py` compares `overrides` on a dev split of the shipped data."""
    return make_config({
        "name": "demo", "model": model, "data": [{"path": str(train_path)}], "method": method,
        "epochs": epochs, "batch_size": 8, "grad_accum": 1, "learning_rate": 4e-4 if method == "lora" else 3e-5,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "train_template_tokens": train_template_tokens},
        "max_length": 384, "save_steps": 25,
        "output_dir": str(output_dir), "seed": seed, **overrides,
    })


def run_demo(name: str = "Orca", author: str = "the sftlab team", model: str = "gemma-3-270m",
             out_dir: Path = Path("runs/demo"), extra_data: list[str] | None = None, epochs: float = 2.0,
             general_examples: int | None = None, method: str = "lora", judge: str | None = TEACHER,
             seed: int = 0, train_template_tokens: bool = False, console: Console | None = None) -> SuiteResult:
    console = console or Console()
    t0 = time.time()
    console.rule(f"[bold]sftlab demo[/]: {model} base -> instruct model named {name}, built by {author}")
    data = build_demo_data(out_dir, name, author, extra_data, general_examples, seed)
    console.print(f"data: {data.counts} (shipped with sftlab{', plus ' + ', '.join(extra_data) if extra_data else ''})")
    cfg = demo_train_config(model, data.train, out_dir / "train", method=method, epochs=epochs, seed=seed,
                            train_template_tokens=train_template_tokens)
    result = train(cfg, overwrite=True, console=console)
    t_train = time.time()

    from sftlab.evaluate.subjects import load_subjects

    console.print("evaluating base and tuned model (greedy, same prompts and template)...")
    subjects = load_subjects(result.base_model, **({"adapter": result.final_dir} if method == "lora"
                                                   else {"tuned": result.final_dir}),
                             cache_path=out_dir / "eval" / "generations.sqlite", dtype="auto")
    res = run_suite(demo_suite(name, author, data, judge), subjects, log=console.print)
    js, md = write_result(res, out_dir / "eval")
    t_eval = time.time()
    print_suite(res, console)
    from sftlab.report.build import write_report

    html, _ = write_report(out_dir)
    console.print(f"[green]done in {time.time() - t0:.0f}s[/] (data + training {t_train - t0:.0f}s, evaluation "
                  f"{t_eval - t_train:.0f}s): report {html}; eval {md} and {js}; model in {result.final_dir}")
    return res
