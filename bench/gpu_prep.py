"""Helpers for `bench/gpu.sh`: model shapes, long training sequences, and the one summary table.

    python bench/gpu_prep.py shape SRC DST --shape 1b     # gemma-3-1b's shape on SRC's tokenizer (no weights)
    python bench/gpu_prep.py data TOKENIZER_DIR OUT.jsonl --records 512 --min-tokens 1024 --max-tokens 1900
    python bench/gpu_prep.py summary RESULTS_DIR          # the table of every train_throughput_gpu_*.json

Shapes are configs only: the benchmark draws random weights for them (`--random-weights`), since tokens/s, MFU
and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

# gemma-3-1b's text model (26 layers, 1152 wide, 4 query heads and 1 KV head of 256, 5 sliding : 1 global)
GEMMA_1B = {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256}
TINY_WIDE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3}  # --smoke's second shape
SHAPES = {"270m": {}, "1b": GEMMA_1B, "tiny-wide": TINY_WIDE}
_COMMON = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will can more about what up "
         "time some into only other new out could also two any these may first then do people many like after "
         "world model data train answer question because each how most over such well through between state "
         "both under never same another while last might great since against right came take used three small "
         "large number part place case point group system program problem fact water example result")
WORDS = _COMMON.split()


def make_shape(src: Path, dst: Path, shape: str) -> None:
    """SRC's config with the shape's sizes, and SRC's tokenizer files (no weights)."""
    config = json.loads((src / "config.json").read_text())
    config.update(SHAPES[shape])
    if "layer_types" in config:  # keep the model's local:global attention pattern over the new depth
        pattern = config.get("_sliding_window_pattern", 6)
        config["layer_types"] = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                 for i in range(config["num_hidden_layers"])]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy(f, dst / f.name)


def make_data(tokenizer_dir: Path, out: Path, records: int, lo: int, hi: int, seed: int = 0) -> None:
    """Conversations of lo..hi tokens (a short prompt, a long reply) in the tokenizer's own count."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(2000))
    per_word = len(tok(sample, add_special_tokens=False)["input_ids"]) / 2000
    with out.open("w", encoding="utf-8") as f:
        for i in range(records):
            target = rng.randint(lo, hi)
            n_prompt = rng.randint(16, 96)
            n_reply = max(8, int((target - n_prompt) / per_word) - 16)
            prompt = " ".join(rng.choice(WORDS) for _ in range(int(n_prompt / per_word))) + "?"
            reply = " ".join(rng.choice(WORDS) for _ in range(n_reply)) + "."
            f.write(json.dumps({"id": f"long{i}", "messages": [{"role": "user", "content": prompt},
                                                              {"role": "assistant", "content": reply}]}) + "\n")


def summary(results: Path) -> None:
    """One table over every shape and method: tokens/s, MFU, peak memory, and the ratios to TRL's defaults."""
    print("| shape | method | tool | tokens/s steady | tokens/s whole run | MFU steady | peak MB | vs TRL tokens/s "
          "| vs TRL memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(results.glob("train_throughput_gpu_*.json")):
        report = json.loads(path.read_text())
        shape = path.stem.removeprefix("train_throughput_gpu_").rsplit("_", 1)[0]
        for method, res in report.get("throughput", {}).items():
            trl = res.get("trl")
            for tool in TOOLS:
                print(_row(shape, method, tool, res.get(tool), trl, tool in res.get("failed", [])))
    print("MFU: useful model FLOP/s (steady state) over the datasheet bf16 peak (--peak-tflops); in brackets "
          "without it: the share of the bf16 matmul rate measured in each run. Peak MB: allocated GPU memory on a "
          "GPU, resident memory on a CPU")


TOOLS = ("sftlab", "trl", "trl+liger")


def _row(shape: str, method: str, tool: str, s: dict | None, trl: dict | None, failed: bool) -> str:
    """One tool's line; a tool without a summary failed (e.g. out of memory), was not asked for, or its stage
    hit the time limit first."""
    if not isinstance(s, dict) or "tokens_per_s" not in s:
        why = "failed (see stages.log)" if failed else "not run (not asked for, or the stage's time limit came first)"
        return f"| {shape} | {method} | {tool} | {why} | | | | | |"
    mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else f"({100 * s['fraction_of_bf16_peak']:.1f}%)"
    ok = isinstance(trl, dict) and "tokens_per_s" in trl
    speed = f"{s['steady_tokens_per_s'] / trl['steady_tokens_per_s']:.2f}x" if ok else "-"
    memory = f"{s['peak_mb'] / trl['peak_mb']:.2f}x" if ok else "-"
    return (f"| {shape} | {method} | {tool} | {s['steady_tokens_per_s']:.0f} | {s['tokens_per_s']:.0f} | {mfu} | "
            f"{s['peak_mb']:.0f} | {speed} | {memory} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shape")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--shape", choices=sorted(SHAPES), required=True)
    d = sub.add_parser("data")
    d.add_argument("tokenizer", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--records", type=int, default=512)
    d.add_argument("--min-tokens", type=int, default=1024)
    d.add_argument("--max-tokens", type=int, default=1900)
    r = sub.add_parser("summary")
    r.add_argument("results", type=Path)
    a = ap.parse_args()
    if a.cmd == "shape":
        make_shape(a.src, a.dst, a.shape)
    elif a.cmd == "data":
        make_data(a.tokenizer, a.out, a.records, a.min_tokens, a.max_tokens)
    else:
        summary(a.results)


if __name__ == "__main__":
    main()
