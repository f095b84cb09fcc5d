"""Training throughput and memory: sftlab vs TRL's SFTTrainer on the same job, in the same invocation.

Same model, same tokenized data (sftlab's verified masks, handed to TRL as `input_ids` + `assistant_masks`),
same batch size, gradient accumulation, optimizer steps, learning rate, seed and precision (bf16 autocast
with fp32 master weights). TRL runs with its defaults otherwise. Each run is its own subprocess (so peak RSS
is per run), and runs alternate sftlab/TRL so that machine noise hits both.

    python bench/train_throughput.py                 # gemma-3-270m, LoRA and full, 2 repeats
    python bench/train_throughput.py --quick         # tiny random model, seconds
    python bench/train_throughput.py --check-loss    # fp32 loss-curve equivalence only

Prints per configuration: trained (non-padding) tokens/s, wall time, peak RSS, final loss, the sftlab/TRL
ratios, and useful model FLOP/s as a fraction of this machine's bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------------------------- data
def build_data(path: Path, n_general: int) -> None:
    """Identity + Alpaca sample (the real length distribution), or the built-in sets without ../shared."""
    from importlib.resources import files

    from sftlab.data.loading import DataSpec, load_conversations
    from sftlab.data.writers import write_jsonl

    subs = {"name": "Orca", "author": "Acme"}
    res = files("sftlab") / "resources"
    convs = load_conversations(DataSpec(path=str(res / "identity.jsonl"), substitutions=subs))[0]
    convs += load_conversations(DataSpec(path=str(res / "general.jsonl")))[0]
    if SHARED.exists():
        convs += load_conversations(DataSpec(path=str(SHARED / "identity.json"), substitutions=subs))[0]
        convs += load_conversations(DataSpec(path=str(SHARED / "alpaca_en_demo.json"), max_records=n_general))[0]
    write_jsonl(path, convs)


# ------------------------------------------------------------------------------------------ workers
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sftlab(spec: dict) -> dict:
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    cfg = make_config({
        "model": spec["model"], "data": [spec["data"]], "method": spec["method"], "max_steps": spec["steps"],
        "batch_size": spec["batch_size"], "grad_accum": spec["grad_accum"], "learning_rate": spec["lr"],
        "lr_scheduler": "constant", "warmup_ratio": 0.0, "seed": spec["seed"], "precision": spec["precision"],
        "max_length": spec["max_length"], "output_dir": spec["out"], "save_steps": 10_000,
        "group_by_length": spec["group_by_length"], "logging_steps": 1,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "gradient_checkpointing": spec.get("gradient_checkpointing", False),
    })
    result = train(cfg, overwrite=True)
    rows = [json.loads(x) for x in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"tokens": result.metrics["tokens_seen"], "trained_tokens": result.metrics["trained_tokens_seen"],
            "wall_s": result.metrics["train_runtime"], "losses": losses, "peak_rss_mb": _peak_rss_mb()}


def run_trl(spec: dict) -> dict:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from sftlab.data.loading import load_conversations
    from sftlab.models.loading import load_model, load_tokenizer, resolve_model_path
    from sftlab.templates.chat_templates import ensure_chat_template
    from sftlab.templates.masking import IGNORE_INDEX
    from sftlab.train.dataset import tokenize_all

    set_seed(spec["seed"])
    path = resolve_model_path(spec["model"])
    tok = load_tokenizer(path)
    ensure_chat_template(tok, "auto")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    convs = load_conversations(spec["data"])[0]
    examples, _ = tokenize_all(tok, convs, "assistant", spec["max_length"], "drop")
    ds = datasets.Dataset.from_list([
        {"input_ids": e.input_ids, "assistant_masks": [int(x != IGNORE_INDEX) for x in e.labels]} for e in examples])
    model = load_model(path, torch.float32)
    if spec["method"] == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    bf16 = spec["precision"] == "bf16"
    args = SFTConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, seed=spec["seed"], data_seed=spec["seed"], bf16=bf16,
        use_cpu=not torch.cuda.is_available(), logging_steps=1, save_strategy="no", report_to=[],
        max_length=None, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    counts = {"tokens": 0, "trained": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        counts["tokens"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        counts["trained"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch

    trainer.data_collator = counting
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(Losses())
    out = trainer.train()
    return {"tokens": counts["tokens"], "trained_tokens": counts["trained"], "wall_s": out.metrics["train_runtime"],
            "losses": losses, "peak_rss_mb": _peak_rss_mb()}


# --------------------------------------------------------------------------------------------- main
def bf16_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def model_shape(model: str) -> dict:
    """Non-embedding params, hidden size and vocabulary, for the useful-FLOPs model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.models.loading import resolve_model_path

    path = resolve_model_path(model)
    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "text_config", config)
    import torch

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in m.parameters())
    emb = m.get_input_embeddings().weight.numel()
    head = 0 if config.tie_word_embeddings else m.get_output_embeddings().weight.numel()
    return {"body": total - emb - head, "hidden": config.hidden_size, "vocab": config.vocab_size}


def useful_flops(r: dict, shape: dict, method: str) -> float:
    """Forward 2N per token; backward 2N (activation grads) + 2N more for weight grads in full fine-tuning.
    The output layer is only needed at response positions (forward + backward to the hidden state)."""
    body = (4 if method == "lora" else 6) * shape["body"] * r["tokens"]
    head = (4 if method == "lora" else 6) * shape["hidden"] * shape["vocab"] * r["trained_tokens"]
    return body + head


def worker_call(kind: str, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = f.name + ".out"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", f.name, "--result", out],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(out).read_text())


def fmt_row(cols: list, widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cols, widths, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model, a few seconds")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--general", type=int, default=200, help="Alpaca records in the data mix")
    ap.add_argument("--check-loss", action="store_true", help="only the fp32 loss-equivalence check")
    ap.add_argument("--skip-check", action="store_true", help="skip the fp32 loss-equivalence check")
    ap.add_argument("--json", type=Path, help="also write all results here")
    ap.add_argument("--tools", default="sftlab,trl", help="which tools to run (e.g. sftlab alone for %%peak)")
    ap.add_argument("--sftlab-grouped", action="store_true",
                    help="sftlab with its default length-grouped batching (batches then differ from TRL's)")
    ap.add_argument("--sftlab-gc", action="store_true",
                    help="also run sftlab with gradient checkpointing (TRL's default) as a third configuration")
    ap.add_argument("--worker", choices=["sftlab", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        spec = json.loads(Path(a.spec).read_text())
        res = (run_sftlab if a.worker == "sftlab" else run_trl)(spec)
        Path(a.result).write_text(json.dumps(res))
        return

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    tmp = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    model = a.model
    if a.quick:
        from sftlab.testing import save_tiny_model

        model = str(save_tiny_model(tmp / "tiny"))
    data = tmp / "data.jsonl"
    build_data(data, a.general)
    base = {"model": model, "data": str(data), "steps": a.steps, "batch_size": a.batch_size,
            "grad_accum": a.grad_accum, "lr": 1e-4, "seed": 0, "max_length": 512}
    report: dict = {"model": model, "config": base}

    # 1. loss equivalence in fp32, same data order (no length grouping), both methods
    check_steps = min(a.steps, 4)
    if not a.skip_check:
        print(f"== loss equivalence (fp32, same order, {check_steps} steps, "
              f"batch {a.batch_size // 2}x{a.grad_accum}) ==")
    report["loss_check"] = {}
    for method in ([] if a.skip_check else a.methods.split(",")):
        spec = {**base, "method": method, "precision": "fp32", "group_by_length": False, "steps": check_steps,
                "batch_size": max(1, a.batch_size // 2), "lr": 1e-4 if method == "lora" else 1e-5}
        s = worker_call("sftlab", {**spec, "out": str(tmp / f"chk-s-{method}")})
        t = worker_call("trl", {**spec, "out": str(tmp / f"chk-t-{method}")})
        diff = max(abs(x - y) / max(abs(y), 1e-9) for x, y in zip(s["losses"], t["losses"], strict=True))
        ok = diff < 2e-3 and len(s["losses"]) == len(t["losses"]) == check_steps
        print(f"{method:5s} sftlab {[round(x, 5) for x in s['losses']]}")
        print(f"      trl    {[round(x, 5) for x in t['losses']]}")
        print(f"      max relative difference {diff:.2e}: {'OK' if ok else 'MISMATCH'}")
        report["loss_check"][method] = {"sftlab": s["losses"], "trl": t["losses"], "max_rel_diff": diff, "ok": ok}
    if a.check_loss:
        return

    # 2. throughput, bf16 autocast for both, alternating runs
    peak = bf16_peak_gflops()
    shape = model_shape(model)
    print(f"\n== throughput: {model}, {a.steps} steps, batch {a.batch_size}x{a.grad_accum}, bf16 autocast, "
          f"{a.repeats} alternating repeats; bf16 matmul peak {peak:.0f} GFLOP/s ==")
    widths = [6, 9, 10, 8, 9, 8, 9]
    print(fmt_row(["method", "tool", "tok/s", "wall s", "peak MB", "loss", "%peak"], widths))
    report["throughput"] = {}
    for method in a.methods.split(","):
        kinds = [k for k in ["sftlab", *(["sftlab+gc"] if a.sftlab_gc else []), "trl"]
                 if k.split("+")[0] in a.tools.split(",")]
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for rep in range(a.repeats):
            for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
                # no length grouping unless --sftlab-grouped: every tool sees the same batches in the same order
                spec = {**base, "method": method, "precision": "bf16",
                        "group_by_length": a.sftlab_grouped and kind.startswith("sftlab"),
                        "lr": 1e-4 if method == "lora" else 1e-5, "out": str(tmp / f"{kind}-{method}-{rep}"),
                        "gradient_checkpointing": kind == "sftlab+gc"}
                runs[kind].append(worker_call(kind.split("+")[0], spec))
        summary = {}
        for kind, rs in runs.items():
            tps = statistics.median(r["tokens"] / r["wall_s"] for r in rs)
            flops = statistics.median(useful_flops(r, shape, method) / r["wall_s"] for r in rs) / 1e9
            summary[kind] = {"tokens_per_s": tps, "wall_s": statistics.median(r["wall_s"] for r in rs),
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "final_loss": rs[0]["losses"][-1],
                             "useful_gflops": flops, "fraction_of_bf16_peak": flops / peak, "runs": rs}
            s = summary[kind]
            print(fmt_row([method, kind, f"{tps:.1f}", f"{s['wall_s']:.1f}", f"{s['peak_rss_mb']:.0f}",
                           f"{s['final_loss']:.4f}", f"{100 * s['fraction_of_bf16_peak']:.1f}%"], widths))
        ratios = {}
        for kind in (kinds[:-1] if "trl" in kinds else []):
            ratio = summary[kind]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
            mem = summary[kind]["peak_rss_mb"] / summary["trl"]["peak_rss_mb"]
            print(f"{method}: {kind}/TRL tokens/s = {ratio:.2f}x, peak memory {kind}/TRL = {mem:.2f}")
            ratios[kind] = {"speed_ratio": ratio, "memory_ratio": mem}
        report["throughput"][method] = {**summary, "ratios": ratios}
    report["bf16_peak_gflops"] = peak
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
