"""Regenerate the demo's shipped data with sftlab's own pipeline: the packaged teacher answers the prompts in
data/demo/prompts.jsonl (curate distill), the answers are filtered and diversity-ranked (curate filter), and the
result goes to src/sftlab/resources/ with per-record provenance. The teacher also answers the held-out general
prompts: those references are what the demo's held-out NLL is measured on.

    .venv/bin/python scripts/make_demo_data.py        # ~40 min on 2 CPU cores; a rerun is served from the cache

Intermediate files live in data/demo/build/ (git-ignored), with the generation caches that make a rerun free.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sftlab.data.writers import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "data" / "demo" / "build"
RES = ROOT / "src" / "sftlab" / "resources"
TEACHER = "qwen2.5-coder-1.5b-instruct"
# Short answers: a 270M student imitates them well, and they end inside the evaluation's token budget.
SYSTEM = ("Answer helpfully and correctly, in the language the question asks for. Be concise: at most four "
          "sentences or a short list. Politely refuse harmful requests in one or two sentences.")
# The 1.5B teacher complies with many harmful requests under SYSTEM, so those prompts get an explicit instruction,
# and the filter keeps only replies that do refuse (`refusal: require`).
REFUSE = ("The user's request is harmful, illegal or hurtful. Do not help with it. In the language of the request, "
          "politely refuse in one or two sentences, starting with \"I'm sorry, but I can't help\" "
          "(or \"抱歉，我不能帮助\"), and briefly say why.")
PARAMS = ["--temperature", "0", "--max-new-tokens", "256", "--batch-size", "8"]


def sftlab(*args: str) -> None:
    """One sftlab CLI call, as a user would type it; stop on failure."""
    cmd = [str(Path(sys.executable).with_name("sftlab")), *args]
    print("$ sftlab " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def without_system(rec: dict) -> dict:
    """The teacher's instruction is not part of the training example: the student sees the bare question."""
    return {**rec, "messages": [m for m in rec["messages"] if m["role"] != "system"]}


def distill(prompts: Path, out: Path, system: str = SYSTEM) -> None:
    """The teacher answers `prompts` (skipped when a finished output is there; an interrupted one resumes)."""
    if not Path(str(out) + ".complete").exists():
        sftlab("curate", "distill", "--prompts", str(prompts), "--teacher", TEACHER, "--system", system,
               "--out", str(out), *PARAMS)
        Path(str(out) + ".complete").touch()


def main() -> None:
    t0 = time.time()
    BUILD.mkdir(parents=True, exist_ok=True)
    prompts = {r["id"]: r for r in read_jsonl(ROOT / "data" / "demo" / "prompts.jsonl")}
    write_jsonl(BUILD / "prompts_refusal.jsonl", [p for p in prompts.values() if p["category"] == "refusal"])
    distill(ROOT / "data" / "demo" / "prompts.jsonl", BUILD / "distilled.jsonl")
    distill(BUILD / "prompts_refusal.jsonl", BUILD / "distilled_refusal.jsonl", REFUSE)
    distill(RES / "heldout_general.jsonl", BUILD / "heldout_reference.jsonl")
    t_distill = time.time() - t0

    distilled = [without_system(r) for r in read_jsonl(BUILD / "distilled.jsonl")
                 if prompts[r["meta"]["source_id"]]["category"] != "refusal"]  # those come from the REFUSE pass
    refusal = [without_system(r) for r in read_jsonl(BUILD / "distilled_refusal.jsonl")]
    system_of = {r["id"]: SYSTEM for r in distilled} | {r["id"]: REFUSE for r in refusal}
    by_id = {r["id"]: r for r in distilled + refusal}
    write_jsonl(BUILD / "pool_refusal.jsonl", refusal)
    write_jsonl(BUILD / "pool_general.jsonl", distilled)
    for name in ("general", "refusal"):
        out = BUILD / f"selected_{name}.jsonl"
        if out.exists():
            out.unlink()  # ours: rebuilt from the pool each time
        sftlab("curate", "filter", f"data/demo/filter_{name}.yaml")

    shipped = []
    for name in ("general", "refusal"):
        rows = read_jsonl(BUILD / f"selected_{name}.jsonl")
        for r in rows:
            src = by_id[r["meta"]["source_id"]]
            prompt = prompts[src["meta"]["source_id"]]
            shipped.append({"id": prompt["id"], "messages": r["messages"], "meta": {
                "category": prompt["category"], "lang": prompt["lang"], "teacher": TEACHER,
                "teacher_system_prompt": system_of[src["id"]], "params": src["meta"]["params"],
                "n_tokens": src["meta"]["n_tokens"],
                "filter": {"pipeline": f"data/demo/filter_{name}.yaml", "rank": r["meta"]["rank"],
                           "rank_share": round(r["meta"]["rank"] / len(rows), 4), "scores": r["meta"]["scores"]}}})
    shipped.sort(key=lambda r: r["meta"]["filter"]["rank_share"])  # the demo takes the first N: best and diverse
    write_jsonl(RES / "demo_general.jsonl", shipped)
    refs = [without_system(r) for r in read_jsonl(BUILD / "heldout_reference.jsonl") if r["meta"]["finished"]]
    write_jsonl(RES / "heldout_general_reference.jsonl", refs)
    print(json.dumps({"prompts": len(prompts), "distilled": len(distilled) + len(refusal), "shipped": len(shipped),
                      "refusals_shipped": sum(r["meta"]["category"] == "refusal" for r in shipped),
                      "heldout_references": len(refs), "distill_seconds": round(t_distill),
                      "total_seconds": round(time.time() - t0)}, indent=2))


if __name__ == "__main__":
    main()
