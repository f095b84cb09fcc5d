"""Which lever gives what: LoRA forward+backward throughput on one batch, adding one lever at a time.

    python bench/train_levers.py            # gemma-3-270m, 8 sequences of 40-250 tokens
    python bench/train_levers.py --quick    # tiny random model

Levers: bf16 autocast (vs fp32), response-only logits with the fused chunked cross-entropy (vs full logits
through the model's forward), frozen base weights stored in bf16 (vs fp32 cast at every matmul), and packing
the sequences into rows with restarting position ids (vs padding to the longest). Prints tokens/s and the
ratio to the first line, which is what a plain transformers/TRL step does.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path


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

    from sftlab.models.loading import resolve_model_path
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

    def padded():
        n = max(lens)
        ids = torch.randint(10, vocab, (len(lens), n))
        att = torch.zeros(len(lens), n, dtype=torch.long)
        lab = torch.full((len(lens), n), -100)
        for i, k in enumerate(lens):
            att[i, :k] = 1
            lab[i, k // 4:k] = ids[i, k // 4:k]
        return {"input_ids": ids, "attention_mask": att, "labels": lab}

    def packed():
        n = sum(lens)
        ids = torch.randint(10, vocab, (1, n))
        lab = torch.full((1, n), -100)
        pos, o = [], 0
        for k in lens:
            lab[0, o + k // 4:o + k] = ids[0, o + k // 4:o + k]
            pos += list(range(k))
            o += k
        return {"input_ids": ids, "position_ids": torch.tensor([pos]), "labels": lab}

    def step(model, batch, fast: bool, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fast and "position_ids" in batch:
                lm = model.get_base_model()
                hidden = lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                          use_cache=False).last_hidden_state
                from sftlab.train.loss import ChunkedLinearCrossEntropy

                y = batch["labels"][:, 1:]
                keep = y != -100
                total = ChunkedLinearCrossEntropy.apply(hidden[:, :-1][keep], lm.get_output_embeddings().weight,
                                                        y[keep], 256, None)
                loss = total / keep.sum()
            elif fast:
                total, n = response_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                loss = total / n
            else:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
        loss.backward()
        for p in model.parameters():
            p.grad = None

    def model(bf16_base: bool):
        m = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))
        if bf16_base:
            freeze_base_in(m, torch.bfloat16)
        return m

    tokens = sum(lens)
    rows = [("fp32, full logits (plain transformers/TRL step)", False, False, False, padded),
            ("+ bf16 autocast", False, True, False, padded),
            ("+ response-only logits, fused chunked CE", False, True, True, padded),
            ("+ frozen base weights in bf16", True, True, True, padded),
            ("  packing instead of padding (not kept)", True, True, True, packed)]
    first = None
    print(f"{a.model if not a.quick else 'tiny'}: LoRA r=16, {len(lens)} sequences, {tokens} tokens "
          f"(padded to {len(lens) * max(lens)}), 75% response tokens")
    cache: dict[bool, object] = {}
    for name, bf16_base, bf16, fast, make in rows:
        m = cache.get(bf16_base) or model(bf16_base)
        cache = {bf16_base: m}
        batch = make()
        step(m, batch, fast, bf16)
        t = time.perf_counter()
        for _ in range(a.repeats):
            step(m, batch, fast, bf16)
        tps = tokens * a.repeats / (time.perf_counter() - t)
        first = first or tps
        print(f"{name:50s} {tps:8.1f} tok/s  {tps / first:5.2f}x")


if __name__ == "__main__":
    main()
