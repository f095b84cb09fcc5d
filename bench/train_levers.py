"""Which lever gives what: LoRA forward+backward throughput on the same batches, adding one lever at a time.

    python bench/train_levers.py            # gemma-3-270m, 8 sequences of 40-250 tokens, 3 repeats
    python bench/train_levers.py --quick    # tiny random model

Levers, cumulative: bf16 autocast (vs fp32); response-only logits through the fused chunked cross-entropy (vs
full logits through the model's forward); frozen base weights stored in bf16 (vs fp32 cast at every matmul);
the chunk softmax as one compiled kernel (vs eager ops); PEFT's fp32 cast of every adapter input switched off
(autocast casts it back anyway); every decoder layer compiled (regional compilation). All configurations run
in one process, alternating within each repeat (this VM's speed drifts), after one untimed warm-up each (which
also pays the compiles). Prints median tokens/s and the ratio to the first line, which is what a plain
transformers/TRL step does.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

# name, bf16 base, autocast, fast loss, compiled softmax, adapter input casts, compiled layers
ROWS = [
    ("fp32 base, fp32, full logits (plain transformers step)", False, False, False, False, True, False),
    ("+ bf16 autocast", False, True, False, False, True, False),
    ("+ response-only logits, fused chunked CE", False, True, True, False, True, False),
    ("+ frozen base weights in bf16", True, True, True, False, True, False),
    ("+ compiled chunk softmax", True, True, True, True, True, False),
    ("+ no PEFT fp32 cast of adapter inputs", True, True, True, True, False, False),
    ("+ compiled decoder layers", True, True, True, True, False, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.models.compile import compile_layers
    from sftlab.models.loading import resolve_model_path
    from sftlab.models.lora import set_adapter_input_casts
    from sftlab.train.loss import response_nll
    from sftlab.train.run import freeze_base_in

    model_path = resolve_model_path(a.model)
    if a.quick:
        from sftlab.testing import save_tiny_model

        model_path = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    rng = random.Random(0)
    torch.manual_seed(0)
    lens = [rng.randint(40, 250) for _ in range(8)]
    vocab = 20000 if not a.quick else 400
    n = max(lens)
    ids = torch.randint(10, vocab, (len(lens), n))
    att = torch.zeros(len(lens), n, dtype=torch.long)
    lab = torch.full((len(lens), n), -100)
    for i, k in enumerate(lens):
        att[i, :k] = 1
        lab[i, k // 4:k] = ids[i, k // 4:k]
    batch = {"input_ids": ids, "attention_mask": att, "labels": lab}

    def lora_model(bf16_base: bool):
        m = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))
        if bf16_base:
            freeze_base_in(m, torch.bfloat16)
        layers = compile_layers(m)
        return m, layers, [layer._compiled_call_impl for layer in layers]

    models = {False: lora_model(False), True: lora_model(True)}

    def step(row) -> None:
        _, bf16_base, bf16, fast, compiled_ce, casts, compiled_layers = row
        model, layers, compiled = models[bf16_base]
        set_adapter_input_casts(model, casts)
        for layer, impl in zip(layers, compiled, strict=True):
            layer._compiled_call_impl = impl if compiled_layers else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fast:
                total, count = response_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                            compile=compiled_ce)
                loss = total / count
            else:
                loss = model(**batch).loss
        loss.backward()
        for p in model.parameters():
            p.grad = None

    tokens = sum(lens)
    print(f"{a.model if not a.quick else 'tiny'}: LoRA r=16, {len(lens)} sequences, {tokens} tokens "
          f"(padded to {len(lens) * n}), 75% response tokens, {a.repeats} alternating repeats")
    for row in ROWS:  # warm-up: kernel creation and the compiles
        step(row)
    rates: dict[str, list[float]] = {row[0]: [] for row in ROWS}
    for rep in range(a.repeats):
        for row in (ROWS if rep % 2 == 0 else ROWS[::-1]):
            t = time.perf_counter()
            step(row)
            rates[row[0]].append(tokens / (time.perf_counter() - t))
    first = statistics.median(rates[ROWS[0][0]])
    for name, rs in rates.items():
        tps = statistics.median(rs)
        print(f"{name:58s} {tps:8.1f} tok/s  {tps / first:5.2f}x")


if __name__ == "__main__":
    main()
