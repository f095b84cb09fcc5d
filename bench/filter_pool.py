"""`sftlab curate filter` on large synthetic pools: records/s and peak memory at 100k, 300k and 1M records.

Each pool is generated on the fly and streamed to a temporary JSONL (2% planted near-copies, 1% exact copies, 2%
responses the heuristics drop), then filtered in its own process (exact + near dedup on prompt and prompt +
response, heuristics, no model scorer, no diverse selection), so peak RSS is that run's alone. Next to it
(`--runs stream`), the same dedup and heuristic code streamed chunk by chunk with only the dedup indexes kept. The
CPU is often shared, so the machine's load is printed with the table, and records per CPU-second (less
sensitive to neighbours than wall time).

    python bench/filter_pool.py                          # 100k, 300k, 1M; table + bench/results/filter_pool.json
    python bench/filter_pool.py --runs pipeline          # curate filter alone (the README table)
    python bench/filter_pool.py --sizes 20000 --no-save  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_pool(path: Path, n: int, seed: int = 0) -> None:
    """n records, written as they are drawn (memory: the last 2,000 records, the pool for planted copies)."""
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    recent: deque[tuple[str, str]] = deque(maxlen=2000)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.01:  # exact copy
                p, r = recent[rng.randrange(len(recent))]
            elif recent and roll < 0.03:  # near copy: one word of the response edited
                p, words = recent[rng.randrange(len(recent))][0], recent[rng.randrange(len(recent))][1].split()
                words[rng.randrange(len(words))] = "edited"
                r = " ".join(words)
            else:
                p = " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 20))) + "?"
                r = " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 60))) + "."
                if roll > 0.99:
                    r = "ok"  # too short
                elif roll > 0.98:
                    r = " ".join(["the same three words"] * 20) + "."  # looping
                recent.append((p, r))
            f.write(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": p},
                                                           {"role": "assistant", "content": r}]}) + "\n")


def run_measured(cmd: list[str]) -> dict:
    """Run one worker process: wall seconds, CPU seconds and peak RSS of that process alone."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def pipeline_cmd(pool: Path, out: Path, n: int) -> list[str]:
    config = out.with_suffix(".yaml")
    config.write_text(json.dumps({"pool": [str(pool)], "output": str(out), "target_size": n,
                                  "dedup": {"near_on": ["prompt", "prompt_response"]},
                                  "diversity": {"method": "none"}}))  # JSON is YAML
    return [sys.executable, "-m", "sftlab", "curate", "filter", str(config)]


def stream_worker(pool: Path, out: Path, chunk: int = 20000) -> None:
    """The pipeline's dedup and heuristic stages over a stream: only the dedup indexes grow with the pool."""
    from sftlab.curate.filter import dedup as dd
    from sftlab.curate.filter.heuristics import HeuristicSettings, check

    seen_pr: set[bytes] = set()
    seen_p: set[bytes] = set()
    near = {what: dd.NearDuplicateIndex() for what in ("prompt", "prompt_response")}
    settings, kept, key = HeuristicSettings(), 0, 0
    with pool.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as w:
        while lines := [line for _, line in zip(range(chunk), f, strict=False)]:
            alive = []
            for line in lines:
                msgs = json.loads(line)["messages"]
                p, r = msgs[0]["content"], msgs[-1]["content"]
                kpr, kp = bytes.fromhex(dd.exact_key(p + "\x00" + r)), bytes.fromhex(dd.exact_key(p))
                if kpr not in seen_pr and kp not in seen_p:
                    seen_pr.add(kpr)
                    seen_p.add(kp)
                    alive.append((p, r, line))
            for what, index in near.items():
                sigs, sets = dd.sketch([p if what == "prompt" else p + "\n" + r for p, r, _ in alive])
                survivors = []
                for item, sig, sh in zip(alive, sigs, sets, strict=True):
                    key += 1
                    if index.add(key, sig, sh) is None:
                        survivors.append(item)
                alive = survivors
            for p, r, line in alive:
                if check(p, r, settings) is None:
                    w.write(line)
                    kept += 1
    print(kept)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(n: int, tmp: Path, runs: list[str]) -> list[dict]:
    pool = tmp / f"pool_{n}.jsonl"
    write_pool(pool, n)
    rows = []
    commands = {"pipeline": ("curate filter (pipeline)", pipeline_cmd(pool, tmp / f"sel_{n}.jsonl", n)),
                "stream": ("streamed stages (indexes only)", [sys.executable, __file__, "--worker", str(pool),
                                                              str(tmp / f"stream_{n}.jsonl")])}
    for name, cmd in (commands[r] for r in runs):
        load = load_average()
        row = {"records": n, "run": name, "load_before": load, **run_measured(cmd), "load_after": load_average()}
        row["records_per_s"] = round(n / row["wall_s"])
        row["records_per_cpu_s"] = round(n / row["cpu_s"])
        row["rss_kb_per_record"] = round(row["peak_rss_mb"] * 1024 / n, 2)
        rows.append(row)
        print_row(row)
    pool.unlink()
    return rows


def print_row(r: dict) -> None:
    print(f"| {r['records']:>9,} | {r['run']:<31} | {r['records_per_s']:>9,} | {r['records_per_cpu_s']:>9,} | "
          f"{r['wall_s']:>7} | {r['peak_rss_mb']:>7,} | {r['rss_kb_per_record']:>6} | {r['load_before']} -> "
          f"{r['load_after']} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--runs", default="pipeline,stream", help="pipeline (curate filter) and/or stream")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    ap.add_argument("--worker", nargs=2, metavar=("POOL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        stream_worker(Path(args.worker[0]), Path(args.worker[1]))
        return
    print(f"{os.cpu_count()} CPUs; load average (1, 5, 15 min) at start: {load_average()}")
    print("| records | run | records/s | records/CPU-s | wall s | peak RSS MB | RSS KB/record | load 1/5/15 min |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sftlab-filter-pool-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            rows += measure(n, Path(tmp), args.runs.split(","))
            if not args.no_save:  # after every size: a long run stopped early keeps what it measured
                RESULTS.mkdir(exist_ok=True)
                (RESULTS / "filter_pool.json").write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows},
                                                                     indent=2))


if __name__ == "__main__":
    main()
