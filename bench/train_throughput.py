"""Training throughput and memory: sftlab vs TRL's SFTTrainer on the same job, in the same invocation.

Same model, same tokenized data (sftlab's verified masks, handed to TRL as `input_ids` + `assistant_masks`),
same batch size, gradient accumulation, optimizer steps, learning rate, seed and precision (bf16 autocast
with fp32 master weights). TRL runs with its defaults otherwise. Each run is its own subprocess (so peak RSS
is per run), and runs alternate sftlab/TRL so that machine noise hits both.

    python bench/train_throughput.py                 # gemma-3-270m, LoRA and full, 2 repeats
    python bench/train_throughput.py --quick         # tiny random model, seconds
    python bench/train_throughput.py --check-loss    # fp32 loss-curve equivalence only
    python bench/train_throughput.py --model DIR --random-weights --trl-liger   # on a GPU (see bench/gpu.sh)

Prints per configuration: trained (non-padding) tokens/s, wall time, peak RSS, final loss, the sftlab/TRL
ratios, and useful model FLOP/s as a fraction of this machine's bf16 matmul rate, measured in each run's own
process right before, during (after every optimizer step, off the clock) and after it (the VM's speed drifts).
On a GPU, memory is the peak of allocated GPU memory and the matmul rate is the GPU's.
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
LORA_RANK = 16


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
def _peak_memory() -> dict:
    """Peak resident memory of this worker; on a GPU also the peak of allocated GPU memory, which then counts."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": rss, "peak_gpu_mb": gpu, "peak_mb": gpu if gpu is not None else rss}


def _synchronize() -> None:
    """Kernels run asynchronously on a GPU: wait for them before reading the clock."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepMeter:
    """The same counting for both tools: real (non-padding) tokens, response tokens and squared lengths of every
    collated batch, and the clock at the end of every optimizer step. Steady state = everything after step 1
    (step 1 pays the one-off costs: sftlab compiles its layers there, both tools create their kernels).

    After every step it also samples the machine's bf16 matmul rate (~0.1 s, taken off the clock): this VM's
    speed drifts within a run, so %peak compares a run with the machine it had while it ran."""

    def __init__(self) -> None:
        self.counts = {"tokens": 0, "trained_tokens": 0, "length_squares": 0}
        self.marks: list[dict] = []
        self.start = 0.0
        self.probe_s = 0.0  # time spent sampling the matmul rate, excluded from every clock reading
        self.probe_gflops: list[float] = []

    def wrap(self, collate):
        import torch

        from sftlab.templates.masking import IGNORE_INDEX

        def counting(features):
            batch = collate(features)
            mask = batch.get("attention_mask")
            lengths = mask.sum(1) if mask is not None else torch.full((len(batch["input_ids"]),),
                                                                       batch["input_ids"].shape[1])
            self.counts["tokens"] += int(lengths.sum())
            self.counts["length_squares"] += int((lengths * lengths).sum())
            self.counts["trained_tokens"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            return batch

        return counting

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                meter.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _synchronize()
                meter.marks.append({"t": time.perf_counter() - meter.probe_s, **meter.counts})
                t = time.perf_counter()
                meter.probe_gflops += bf16_matmul_gflops(reps=3, samples=1)
                meter.probe_s += time.perf_counter() - t

        return Clock()

    def steady(self) -> dict:
        first, last = self.marks[0], self.marks[-1]
        out = {k: last[k] - first[k] for k in self.counts}
        return {**out, "wall_s": last["t"] - first["t"]}

    def step_seconds(self) -> list[float]:
        """Seconds of every optimizer step (the first includes compiling): shows recompiles and stalls."""
        times = [self.start] + [m["t"] for m in self.marks]
        return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


def run_sftlab(spec: dict) -> dict:
    import sftlab.train.run as run_module
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    cfg = make_config({
        "model": spec["model"], "data": [spec["data"]], "method": spec["method"], "max_steps": spec["steps"],
        "batch_size": spec["batch_size"], "grad_accum": spec["grad_accum"], "learning_rate": spec["lr"],
        "lr_scheduler": "constant", "warmup_ratio": 0.0, "seed": spec["seed"], "precision": spec["precision"],
        "max_length": spec["max_length"], "output_dir": spec["out"], "save_steps": 10_000,
        "group_by_length": spec["group_by_length"], "logging_steps": 1,
        "lora": {"r": LORA_RANK, "alpha": 2 * LORA_RANK, "dropout": 0.0},
        "gradient_checkpointing": spec.get("gradient_checkpointing", False),  # "auto": sftlab's default
        "compile_loss": spec.get("compile_loss", "auto"), "compile": spec.get("compile", "auto"),
        "attn_implementation": spec.get("attn_implementation", "auto"),
    })
    meter = StepMeter()
    collator = run_module.PadCollator
    run_module.PadCollator = lambda pad_id: meter.wrap(collator(pad_id))
    result = train(cfg, overwrite=True, callbacks=[meter.callback()])
    rows = [json.loads(x) for x in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {**meter.counts, "wall_s": result.metrics["train_runtime"] - meter.probe_s, "losses": losses,
            **_peak_memory(), "steady": meter.steady(), "step_s": meter.step_seconds(),
            "matmul_gflops_during": meter.probe_gflops,
            **{k: result.metrics[k] for k in ("attn_implementation", "compiled_layers", "padding_share")}}


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
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    bf16 = spec["precision"] == "bf16"
    args = SFTConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, seed=spec["seed"], data_seed=spec["seed"], bf16=bf16,
        use_cpu=not torch.cuda.is_available(), logging_steps=1, save_strategy="no", report_to=[],
        max_length=None, disable_tqdm=True, use_liger_kernel=spec.get("liger", False),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    meter = StepMeter()
    trainer.data_collator = meter.wrap(trainer.data_collator)
    trainer.add_callback(meter.callback())
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(Losses())
    out = trainer.train()
    return {**meter.counts, "wall_s": out.metrics["train_runtime"] - meter.probe_s, "losses": losses,
            **_peak_memory(), "steady": meter.steady(), "step_s": meter.step_seconds(),
            "matmul_gflops_during": meter.probe_gflops}


# --------------------------------------------------------------------------------------------- main
def bf16_matmul_gflops(n: int = 2048, reps: int = 10, samples: int = 5) -> list[float]:
    """GFLOP/s of `samples` timed batches of bf16 n x n matrix products (this machine's matmul peak; on a GPU,
    8192 x 8192 products on the GPU).

    This VM's matmul speed drifts with its neighbours (measured 740-1900 GFLOP/s within minutes), so each
    training run is compared with the peak measured in its own process before, during and after it."""
    import torch

    from sftlab.models.loading import default_device

    device = default_device()
    n = 8192 if device == "cuda" else n
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(samples):
        _synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _synchronize()
        rates.append(2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return rates


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
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = m.get_decoder().layers
    lora = sum(LORA_RANK * (x.in_features + x.out_features) for x in layers.modules()
               if isinstance(x, torch.nn.Linear))  # the adapters of `all-linear` LoRA
    return {"body": total - emb - head, "lora": lora, "hidden": config.hidden_size, "vocab": config.vocab_size,
            "layers": config.num_hidden_layers, "attention_width": config.num_attention_heads * head_dim}


def useful_flops(r: dict, shape: dict, method: str) -> float:
    """Model FLOPs, nanoGPT/PaLM style, counted on real (non-padding) tokens only.

    Weights: forward 2N per token; backward 2N (activation grads) + 2N more for weight grads in full
    fine-tuning; LoRA: 4N for the frozen weights plus 6N for the (rank-16) adapters. The output layer is only
    needed at response positions. Attention scores and values (QK^T, AV): 12 * layers * heads * head_dim per
    token and context token, forward + backward, i.e. 12 * L * H * Q * sum(len^2) over the sequences; not
    halved for the causal mask, as in PaLM and nanoGPT."""
    k = 4 if method == "lora" else 6
    body = k * shape["body"] * r["tokens"] + (6 * shape["lora"] * r["tokens"] if method == "lora" else 0)
    head = k * shape["hidden"] * shape["vocab"] * r["trained_tokens"]
    attention = 12 * shape["layers"] * shape["attention_width"] * r["length_squares"]
    return body + head + attention


def summarize(rs: list[dict], shape: dict, method: str, peak_tflops: float | None = None) -> dict:
    """Medians over the repeats of one configuration; %peak on the steady state and on the whole run; MFU (steady
    useful FLOP/s over the device's datasheet bf16 peak) when `peak_tflops` is given."""
    def med(f):
        return statistics.median(f(r) for r in rs)

    mfu = med(lambda r: useful_flops(r["steady"], shape, method) / r["steady"]["wall_s"] / (peak_tflops * 1e12)) \
        if peak_tflops else None
    return {"mfu": mfu, "steady_trained_tokens_per_s": med(lambda r: r["steady"]["trained_tokens"]
                                                                      / r["steady"]["wall_s"]),
        "tokens_per_s": med(lambda r: r["tokens"] / r["wall_s"]),
        "steady_tokens_per_s": med(lambda r: r["steady"]["tokens"] / r["steady"]["wall_s"]),
        "wall_s": med(lambda r: r["wall_s"]), "peak_mb": max(r["peak_mb"] for r in rs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        "final_loss": rs[0]["losses"][-1], "peak_gflops": med(lambda r: r["peak_gflops"]),
        "useful_gflops": med(lambda r: useful_flops(r["steady"], shape, method) / r["steady"]["wall_s"] / 1e9),
        "fraction_of_bf16_peak": med(lambda r: useful_flops(r["steady"], shape, method) / r["steady"]["wall_s"]
                                     / 1e9 / r["peak_gflops"]),
        "fraction_of_bf16_peak_e2e": med(lambda r: useful_flops(r, shape, method) / r["wall_s"] / 1e9
                                         / r["peak_gflops"]),
        "runs": rs}


def method_report(runs: dict[str, list[dict]], failed: list[str], shape: dict, method: str,
                  peak_tflops: float | None) -> dict:
    """Each finished tool's summary, its ratios to TRL, and the tools whose run failed."""
    summary = {kind: summarize(rs, shape, method, peak_tflops) for kind, rs in runs.items() if rs}
    ratios = {kind: {"speed_ratio": s["tokens_per_s"] / summary["trl"]["tokens_per_s"],
                     "steady_speed_ratio": s["steady_tokens_per_s"] / summary["trl"]["steady_tokens_per_s"],
                     "memory_ratio": s["peak_mb"] / summary["trl"]["peak_mb"]}
              for kind, s in summary.items() if kind != "trl" and "trl" in summary}
    return {**summary, "ratios": ratios, "failed": failed}


def worker_call(kind: str, spec: dict, optional: bool = False) -> dict | None:
    """Run one configuration in its own process; an optional one (e.g. TRL + Liger) that fails is reported and
    skipped instead of ending the benchmark."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = f.name + ".out"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", f.name, "--result", out],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        if optional:
            print(f"{kind} worker failed (skipped):\n{proc.stderr[-2000:]}")
            return None
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(out).read_text())


def with_random_weights(model: str) -> Path:
    """A copy of `model` (config, tokenizer) with freshly initialised fp32 weights, saved as safetensors beside
    it (`<model>-random-weights`, reused by later invocations)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.models.loading import resolve_model_path

    path = Path(resolve_model_path(model))
    out = path.with_name(path.name + "-random-weights")
    if (out / "model.safetensors").exists():
        return out
    partial = out.with_name(out.name + ".partial")  # renamed when complete: a killed run leaves no half model
    shutil.rmtree(partial, ignore_errors=True)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).save_pretrained(partial)
    for f in path.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy(f, partial / f.name)
    shutil.rmtree(out, ignore_errors=True)
    return partial.rename(out)


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


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
    ap.add_argument("--data", type=Path, help="a conversations file to train on instead of identity + Alpaca")
    ap.add_argument("--random-weights", action="store_true",
                    help="the model's architecture and tokenizer with freshly drawn weights (where the weights "
                         "cannot travel, e.g. to a GPU machine); speed does not depend on the weights' values")
    ap.add_argument("--trl-liger", action="store_true", help="also run TRL with use_liger_kernel (GPU)")
    ap.add_argument("--compile", default="auto", help="sftlab's `compile` setting (auto: on for >= 100M params)")
    ap.add_argument("--max-length", type=int, default=512, help="longest sequence (longer ones are dropped)")
    ap.add_argument("--sftlab-defaults", action="store_true",
                    help="sftlab with its defaults (gradient_checkpointing auto, length grouping) instead of "
                         "TRL's batches without checkpointing")
    ap.add_argument("--peak-tflops", type=float, help="the device's datasheet bf16 peak, for MFU (H100/H200: 989)")
    ap.add_argument("--keep-going", action="store_true", help="a failing run (e.g. out of memory) is reported "
                                                              "and skipped, not the end of the benchmark")
    ap.add_argument("--worker", choices=["sftlab", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        spec = json.loads(Path(a.spec).read_text())
        before = bf16_matmul_gflops()
        res = (run_sftlab if a.worker == "sftlab" else run_trl)(spec)
        res["matmul_gflops_samples"] = before + res["matmul_gflops_during"] + bf16_matmul_gflops()
        res["peak_gflops"] = statistics.median(res["matmul_gflops_samples"])
        Path(a.result).write_text(json.dumps(res))
        return

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    tmp = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    model = a.model
    if a.quick:
        from sftlab.testing import save_tiny_model

        model = str(save_tiny_model(tmp / "tiny"))
    elif a.random_weights:
        model = str(with_random_weights(model))
    data = a.data or tmp / "data.jsonl"
    if not a.data:
        build_data(data, a.general)
    base = {"model": model, "data": str(data), "steps": a.steps, "batch_size": a.batch_size,
            "grad_accum": a.grad_accum, "lr": 1e-4, "seed": 0, "max_length": a.max_length}
    report: dict = {"model": a.model, "random_weights": a.random_weights, "config": base, "device": device_name()}

    def save() -> None:  # after every section: a run cut short still leaves its results
        if a.json:
            a.json.write_text(json.dumps(report, indent=2))

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
        save()
    if a.check_loss:
        return

    # 2. throughput, bf16 autocast for both, alternating runs
    shape = model_shape(model)
    print(f"\n== throughput: {model}, {a.steps} steps, batch {a.batch_size}x{a.grad_accum}, bf16 autocast, "
          f"{a.repeats} alternating repeats ==")
    on_gpu = report["device"].startswith("cuda")
    print(f"%peak: useful model FLOP/s over the bf16 {8192 if on_gpu else 2048}^2 matmul rate "
          "measured in the same process before, during (each step, off the clock) and after the run (median); "
          "steady = after optimizer step 1, e2e = whole run")
    widths = [6, 9, 8, 8, 7, 8, 8, 7, 7, 7]
    print(fmt_row(["method", "tool", "tok/s", "steady", "wall s", "GPU MB" if on_gpu else "peak MB", "loss",
                   "mm GF", "%peak", "e2e %"], widths))
    samples: list[float] = []
    report["throughput"] = {}
    for method in a.methods.split(","):
        kinds = [k for k in ["sftlab", *(["sftlab+gc"] if a.sftlab_gc else []), "trl",
                             *(["trl+liger"] if a.trl_liger else [])] if k.split("+")[0] in a.tools.split(",")]
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        failed: list[str] = []
        for rep in range(a.repeats):
            for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
                # no length grouping unless --sftlab-grouped: every tool sees the same batches in the same order
                spec = {**base, "method": method, "precision": "bf16",
                        "group_by_length": (a.sftlab_grouped or a.sftlab_defaults) and kind.startswith("sftlab"),
                        "lr": 1e-4 if method == "lora" else 1e-5, "out": str(tmp / f"{kind}-{method}-{rep}"),
                        "gradient_checkpointing": "auto" if a.sftlab_defaults and kind == "sftlab"
                        else kind == "sftlab+gc", "compile": a.compile,
                        "liger": kind == "trl+liger"}
                result = worker_call(kind.split("+")[0], spec, optional=kind == "trl+liger" or a.keep_going)
                if result is not None:
                    runs[kind].append(result)
                    samples += result["matmul_gflops_samples"]
                else:
                    failed.append(kind)
                # summarised after every run: a stage cut by a time limit still leaves the tools it finished
                report["throughput"][method] = method_report(runs, failed, shape, method, a.peak_tflops)
                save()
        res = report["throughput"][method]
        for kind in runs:
            if kind in res:
                s = res[kind]
                print(fmt_row([method, kind, f"{s['tokens_per_s']:.1f}", f"{s['steady_tokens_per_s']:.1f}",
                               f"{s['wall_s']:.1f}", f"{s['peak_mb']:.0f}", f"{s['final_loss']:.4f}",
                               f"{s['peak_gflops']:.0f}", f"{100 * s['fraction_of_bf16_peak']:.1f}%",
                               f"{100 * s['fraction_of_bf16_peak_e2e']:.1f}%"], widths))
        for kind, r in res["ratios"].items():
            print(f"{method}: {kind}/TRL tokens/s = {r['speed_ratio']:.2f}x whole run, "
                  f"{r['steady_speed_ratio']:.2f}x steady state; peak memory {kind}/TRL = {r['memory_ratio']:.2f}")
    if samples:
        report["bf16_matmul_gflops"] = {"median": statistics.median(samples), "min": min(samples),
                                        "max": max(samples), "samples": samples}
        print(f"bf16 matmul GFLOP/s over all {len(samples)} samples: median {statistics.median(samples):.0f}, "
              f"min {min(samples):.0f}, max {max(samples):.0f}")
    save()


if __name__ == "__main__":
    main()
