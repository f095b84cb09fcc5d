"""The main job: turn google/gemma-3-270m **base** into an instruct model with a new identity, and show it.

Data: identity conversations ("I am <name>, built by <author>") mixed with general instructions, read from
../shared/data when present (identity.json, alpaca_en_demo.json) plus the small sets shipped in
sftlab/resources, so the demo also runs without ../shared. Prompts used for the before/after check are
removed from the training data. Training: LoRA with bf16 autocast on the CPU. Check: greedy generations of
base vs tuned on held-out prompts (an evaluation suite: held-out response NLL, identity and collapse,
instruction following, judge win-rate), then an HTML + Markdown report of the run.
"""

from __future__ import annotations

import random
import time
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation
from sftlab.data.writers import write_jsonl
from sftlab.evaluate.runner import SuiteResult, run_suite, write_result
from sftlab.evaluate.suite import EvalSuite, make_suite
from sftlab.train.config import make_config
from sftlab.train.run import train

IDENTITY_PROMPTS = ["Who are you?", "What is your name?", "Who built you?", "你是谁？"]
GENERAL_PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy.",
                   "Translate 'good morning' into Spanish.", "What is 6 times 7?",
                   "Write one sentence about the sea.", "天空为什么是蓝色的？"]
EVAL_PROMPTS = IDENTITY_PROMPTS + GENERAL_PROMPTS


def demo_suite(name: str, author: str, heldout: Path, judge: str | None) -> EvalSuite:
    """Held-out NLL, identity + collapse, instruction following, and (with a judge) a pairwise win-rate."""
    evaluators: list[dict] = [
        {"type": "nll", "data": {"path": str(heldout)}},
        {"type": "identity", "name": name, "author": author, "identity_prompts": IDENTITY_PROMPTS,
         "general_prompts": GENERAL_PROMPTS},
        {"type": "instruction_following", "prompts": EVAL_PROMPTS},  # same prompts: served from the cache
    ]
    if judge:
        evaluators.append({"type": "judge", "judge": judge, "prompts": GENERAL_PROMPTS})
    return make_suite({"name": f"demo ({name})", "max_new_tokens": 96, "evaluators": evaluators})


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip("?？!！.。")


def build_demo_data(out_dir: Path, name: str, author: str, shared: Path | None, general_examples: int,
                    seed: int = 0) -> tuple[Path, Path, dict[str, int]]:
    """Write train.jsonl and heldout.jsonl (references for NLL) and return their paths and counts."""
    subs = {"name": name, "author": author}
    builtin = files("sftlab") / "resources"
    identity, general = [], []
    identity += load_conversations(DataSpec(path=str(builtin / "identity.jsonl"), substitutions=subs))[0]
    general += load_conversations(DataSpec(path=str(builtin / "general.jsonl")))[0]
    alpaca: list[Conversation] = []
    if shared and (shared / "identity.json").exists():
        identity += load_conversations(DataSpec(path=str(shared / "identity.json"), substitutions=subs))[0]
    if shared and (shared / "alpaca_en_demo.json").exists():
        alpaca = load_conversations(DataSpec(path=str(shared / "alpaca_en_demo.json")))[0]
        # short, complete answers: what a 270M model can imitate in a few minutes on a CPU
        alpaca = [c for c in alpaca if len(c.turns[-1].content) <= 400 and len(c.turns[0].content) <= 300]
    held = {_norm(p) for p in EVAL_PROMPTS}
    identity = [c for c in identity if _norm(c.turns[0].content) not in held]
    rng = random.Random(seed)
    rng.shuffle(alpaca)
    heldout, alpaca = alpaca[:24], alpaca[24:24 + general_examples]
    train_set = identity + general + alpaca
    rng.shuffle(train_set)
    train_path, held_path = out_dir / "data" / "train.jsonl", out_dir / "data" / "heldout.jsonl"
    write_jsonl(train_path, train_set)
    write_jsonl(held_path, heldout or general[-8:])
    counts = {"identity": len(identity), "general_builtin": len(general), "alpaca": len(alpaca),
              "heldout_reference": len(heldout or general[-8:])}
    return train_path, held_path, counts


def run_demo(name: str = "Orca", author: str = "the sftlab team", model: str = "gemma-3-270m",
             out_dir: Path = Path("runs/demo"), shared: Path | None = Path("../shared/data"),
             epochs: float = 2.0, general_examples: int = 160, method: str = "lora",
             judge: str | None = "smollm2-135m-instruct", console: Console | None = None) -> SuiteResult:
    console = console or Console()
    t0 = time.time()
    shared = shared if shared and shared.exists() else None
    console.rule(f"[bold]sftlab demo[/]: {model} base -> instruct model named {name}, built by {author}")
    train_path, held_path, counts = build_demo_data(out_dir, name, author, shared, general_examples)
    console.print(f"data: {counts} (shared data: {'yes' if shared else 'no, built-in only'})")
    cfg = make_config({
        "name": "demo", "model": model, "data": [{"path": str(train_path)}], "method": method,
        "epochs": epochs, "batch_size": 4, "grad_accum": 2, "learning_rate": 4e-4 if method == "lora" else 3e-5,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "max_length": 384, "save_steps": 25,
        "output_dir": str(out_dir / "train"), "seed": 0,
    })
    result = train(cfg, overwrite=True, console=console)

    from sftlab.evaluate.subjects import load_subjects

    console.print("evaluating base and tuned model (greedy, same prompts and template)...")
    subjects = load_subjects(result.base_model, **({"adapter": result.final_dir} if method == "lora"
                                                   else {"tuned": result.final_dir}),
                             cache_path=out_dir / "eval" / "generations.sqlite")
    res = run_suite(demo_suite(name, author, held_path, judge), subjects, log=console.print)
    js, md = write_result(res, out_dir / "eval")
    show_result(res, console)
    from sftlab.report.build import write_report

    html, _ = write_report(out_dir)
    console.print(f"[green]done in {time.time() - t0:.0f}s[/]: report {html}; eval {md} and {js}; "
                  f"model in {result.final_dir}")
    return res


def show_result(res: SuiteResult, console: Console, samples: int = 10) -> None:
    labels = list(res.subjects)
    table = Table(title=f"{' vs '.join(labels)}: {res.suite}")
    table.add_column("evaluator")
    table.add_column("metric")
    for label in labels:
        table.add_column(label)
    for name, entry in res.evaluators.items():
        for key, per in entry.get("metrics", {}).items():
            table.add_row(name, key, *(str((per.get(lab) or {}).get("value", "-")) for lab in labels))
        if "pairwise" in entry:
            p = entry["pairwise"]
            a, b = p["labels"]
            table.add_row(name, f"{a} vs {b}: wins / ties / losses", "",
                          f"{p[f'{a}_win_rate']} / {p['tie_rate']} / {p[f'{b}_win_rate']} (n={p['n']}, "
                          f"{p['inconsistent_orders']} order-inconsistent)")
    console.print(table)
    for entry in res.evaluators.values():
        rows = entry.get("samples") or []
        if not rows or not all(isinstance(rows[0].get(lab), dict) for lab in labels):
            continue
        for r in rows[:samples]:
            console.print(f"[bold]{r['prompt']}[/]")
            for label in labels:
                g = r[label]
                flag = "" if g.get("finished", True) else " [red](did not stop)[/]"
                console.print(f"  [cyan]{label}[/]{flag}: {g['text'][:200]!r}")
        break
