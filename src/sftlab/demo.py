"""The main job: turn google/gemma-3-270m **base** into an instruct model with a new identity, and show it.

Data: identity conversations ("I am <name>, built by <author>") mixed with general instructions, read from
../shared/data when present (identity.json, alpaca_en_demo.json) plus the small sets shipped in
sftlab/resources, so the demo also runs without ../shared. Prompts used for the before/after check are
removed from the training data. Training: LoRA with bf16 autocast on the CPU. Check: greedy generations of
base vs tuned on held-out prompts, held-out response NLL, and four behaviour rates.
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
from sftlab.evaluate.compare import Comparison, EvalPrompt, compare_models, write_comparison
from sftlab.train.config import make_config
from sftlab.train.run import train

EVAL_PROMPTS = [
    EvalPrompt("Who are you?", "identity"),
    EvalPrompt("What is your name?", "identity"),
    EvalPrompt("Who built you?", "identity"),
    EvalPrompt("你是谁？", "identity"),
    EvalPrompt("What is the capital of France?", "general"),
    EvalPrompt("Give me three tips for staying healthy.", "general"),
    EvalPrompt("Translate 'good morning' into Spanish.", "general"),
    EvalPrompt("What is 6 times 7?", "general"),
    EvalPrompt("Write one sentence about the sea.", "general"),
    EvalPrompt("天空为什么是蓝色的？", "general"),
]


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
    held = {_norm(p.prompt) for p in EVAL_PROMPTS}
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
             console: Console | None = None) -> Comparison:
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

    from sftlab.data.loading import load_conversations as _load
    from sftlab.models.loading import load_model, load_tokenizer
    from sftlab.models.lora import load_adapter

    tokenizer = load_tokenizer(str(result.final_dir))
    base = load_model(result.base_model)
    tuned = load_adapter(base, result.final_dir) if method == "lora" else load_model(str(result.final_dir))
    reference = _load(DataSpec(path=str(held_path)))[0]
    console.print("generating with base and tuned model (greedy, same prompts and template)...")
    comp = compare_models(tuned, tokenizer, EVAL_PROMPTS, adapter=method == "lora",
                          base_model=None if method == "lora" else base, reference=reference, name=name,
                          author=author)
    js, md = write_comparison(comp, out_dir)
    show_comparison(comp, console)
    console.print(f"[green]done in {time.time() - t0:.0f}s[/]: {md} and {js}; model in {result.final_dir}")
    return comp


def show_comparison(comp: Comparison, console: Console) -> None:
    table = Table(title="base vs tuned (held-out prompts)")
    table.add_column("metric")
    for label in comp.summary:
        table.add_column(label)
    for key in comp.summary["base"]:
        cells = []
        for label in comp.summary:
            v = comp.summary[label][key]
            cells.append(f"{v['nll']:.3f}" if isinstance(v, dict) else str(v))
        table.add_row(key, *cells)
    console.print(table)
    for r in comp.rows:
        console.print(f"[bold][{r['kind']}] {r['prompt']}[/]")
        for label in ("base", "tuned"):
            g = r[label]
            flag = "" if g["finished"] else " [red](did not stop)[/]"
            console.print(f"  [cyan]{label}[/]{flag}: {g['text'][:200]!r}")
