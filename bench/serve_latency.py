"""`sftlab serve` under load, before vs after generation moved off the event loop; same tiny model, same run.

    python bench/serve_latency.py                          # tiny random model, CPU, ~1 minute
    python bench/serve_latency.py --json bench/results/serve_latency.json

Two measurements per server, each server in its own process on 127.0.0.1 (the load generator in this one):
  1. p50/p99 latency of GET /v1/models while 32 chat generations run (probed every 10 ms until they finish);
  2. throughput of 200 concurrent short chat requests (all sent at once; wall time until the last answer).
"before" is src/sftlab/serve/server.py at --before (a git ref; default: the commit before the change), loaded from
`git show` into a temporary module; "after" is the working tree's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REF = "3d33489a96a5e8cd48746b9c09961d985cb342c1"  # last commit with the synchronous server
MAX_PROBES = 5000  # bounds the /v1/models probe loop whatever happens


def serve(impl: str, model_dir: str, port: int, max_queue: int, batch_size: int) -> None:
    """Child process: one server implementation on 127.0.0.1:port."""
    import importlib.util

    import uvicorn

    from sftlab.generation.factory import load_transformers_generator

    spec = importlib.util.spec_from_file_location(f"serve_{Path(impl).stem}", impl)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    gen = load_transformers_generator(model_dir, batch_size=batch_size, model_id="tiny")
    kwargs = {"max_queue": max_queue} if "max_queue" in module.create_app.__code__.co_varnames else {}
    app = module.create_app(gen, "tiny", max_tokens_limit=256, **kwargs)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _chat(i: int, max_tokens: int) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"Question {i}: tell me about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0}


async def _latency_under_load(base: str, generations: int, max_tokens: int) -> dict:
    """/v1/models latency while `generations` chat requests are in flight."""
    limits = httpx.Limits(max_connections=generations + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=_chat(i, max_tokens)))
                 for i in range(generations)]
        await asyncio.sleep(0.05)  # let the generations reach the server first
        latencies = []
        while not all(t.done() for t in tasks) and len(latencies) < MAX_PROBES:
            t = time.perf_counter()
            r = await client.get("/v1/models")
            latencies.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.01)
        replies = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    ok = [r for r in replies if r.status_code == 200]
    return {"generations": generations, "ok": len(ok), "probes": len(latencies),
            "models_p50_ms": 1000 * statistics.median(latencies), "models_p99_ms": 1000 * _percentile(latencies, 0.99),
            "models_max_ms": 1000 * max(latencies), "generation_wall_s": wall,
            "completion_tokens": sum(r.json()["usage"]["completion_tokens"] for r in ok)}


async def _throughput(base: str, requests: int, max_tokens: int) -> dict:
    """Wall time for `requests` short chat requests sent at once."""
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=requests)) as client:
        t0 = time.perf_counter()
        replies = await asyncio.gather(*[client.post("/v1/chat/completions", json=_chat(i, max_tokens))
                                         for i in range(requests)])
        wall = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    for r in replies:
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    return {"requests": requests, "wall_s": wall, "requests_per_s": statuses.get("200", 0) / wall,
            "statuses": statuses}


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def measure(impl: str, model_dir: str, a: argparse.Namespace) -> dict:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", impl, "--model-dir", model_dir, "--port", str(port),
                             "--max-queue", str(a.max_queue), "--batch-size", str(a.batch_size)])
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        asyncio.run(_throughput(base, 8, a.short_max_tokens))  # warm-up
        latency = asyncio.run(_latency_under_load(base, a.generations, a.max_tokens))
        throughput = asyncio.run(_throughput(base, a.requests, a.short_max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"latency_under_load": latency, "throughput": throughput}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=BEFORE_REF, help="git ref of the 'before' server.py")
    ap.add_argument("--generations", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64, help="per generation in the latency measurement")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--short-max-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=256, help="after only; >= --requests so none is refused")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.serve:
        serve(a.serve, a.model_dir, a.port, a.max_queue, a.batch_size)
        return

    from sftlab.testing import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="serve_latency_"))
    model_dir = str(save_tiny_model(tmp / "tiny"))
    before = tmp / "server_before.py"
    before.write_text(subprocess.run(["git", "show", f"{a.before}:src/sftlab/serve/server.py"], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)
    results = {"before": measure(str(before), model_dir, a),
               "after": measure(str(ROOT / "src/sftlab/serve/server.py"), model_dir, a)}
    report = {"config": {k: v for k, v in vars(a).items() if k not in ("serve", "model_dir", "port", "json")},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "model": "tiny random Llama (sftlab.testing), CPU", "results": results}
    _print_table(results, a)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {a.json}")


def _print_table(results: dict, a: argparse.Namespace) -> None:
    b, f = results["before"], results["after"]
    rows = [
        (f"/v1/models p50 during {a.generations} generations (ms)", "latency_under_load", "models_p50_ms"),
        (f"/v1/models p99 during {a.generations} generations (ms)", "latency_under_load", "models_p99_ms"),
        (f"{a.generations} generations x {a.max_tokens} tokens, wall (s)", "latency_under_load", "generation_wall_s"),
        (f"{a.requests} concurrent short requests, wall (s)", "throughput", "wall_s"),
        (f"{a.requests} concurrent short requests, req/s", "throughput", "requests_per_s"),
    ]
    print("| measurement | before | after | after/before |\n|---|---|---|---|")
    probes = b["latency_under_load"]["probes"], f["latency_under_load"]["probes"]
    print(f"| /v1/models probes answered while the generations ran | {probes[0]} | {probes[1]} | |")
    for label, group, key in rows:
        x, y = b[group][key], f[group][key]
        print(f"| {label} | {x:.1f} | {y:.1f} | {y / x:.2f}x |")
    print(f"statuses before {b['throughput']['statuses']}, after {f['throughput']['statuses']}")


if __name__ == "__main__":
    main()
