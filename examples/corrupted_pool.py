"""Quality beats quantity, measured: train on a corrupted pool vs on its filtered subset.

1. Pool: short Alpaca records from ../shared/data/alpaca_en_demo.json; a known fraction of responses is
   corrupted (truncated mid-sentence, swapped with another prompt's response, degraded: word salad, looping,
   boilerplate refusal). A clean held-out set is kept aside for evaluation.
2. `sftlab curate filter` on the pool: dedup, heuristics, IFD score from SmolLM2-135M, DEITA selection.
3. The same student (gemma-3-270m base, LoRA, same hyperparameters, same epochs) trained (a) on the whole pool
   and (b) on the filtered subset.
4. Held-out response NLL on the clean references for base, (a) and (b), plus side-by-side greedy samples.

    python examples/corrupted_pool.py --out runs/corrupted-pool
    python examples/corrupted_pool.py --model <tiny model dir> --pool 60 --target 20 --epochs 0.5  # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sftlab.curate.filter.pipeline import make_filter_config, run_filter
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.writers import write_json, write_text
from sftlab.evaluate.runner import run_suite
from sftlab.evaluate.subjects import load_subjects
from sftlab.evaluate.suite import make_suite
from sftlab.recipe.preparers.pools import corrupt_pool, read_labels, selection_quality
from sftlab.train.config import make_config
from sftlab.train.run import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--scorer-model", default="smollm2-135m-instruct")
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--corrupt", type=float, default=0.4)
    ap.add_argument("--target", type=int, default=150)
    ap.add_argument("--heldout", type=int, default=60)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/corrupted-pool"))
    ap.add_argument("--reuse", action="store_true", help="keep runs whose eval.json exists (after a crash)")
    args = ap.parse_args()
    t0 = time.time()
    data = args.out / "data"
    made = corrupt_pool(data, seed=args.seed, source=args.data, pool=args.pool, corrupt_share=args.corrupt,
                        heldout=args.heldout)
    heldout = load_conversations(DataSpec(path=str(data / "heldout.jsonl")))[0]
    print(f"pool {made['pool']} ({made['corrupted']} corrupted), held-out references {made['heldout']}")

    cfg = make_filter_config({
        "pool": [str(data / "pool.jsonl")], "output": str(data / "filtered.jsonl"), "target_size": args.target,
        "seed": args.seed, "scorers": [{"type": "ifd", "model": args.scorer_model}],
        "diversity": {"method": "deita", "min_distance": 0.05}})
    res = run_filter(cfg)
    quality = selection_quality([r.id for r in res.selected], read_labels(data / "labels.jsonl"))
    filt = {**{k: quality[k] for k in ("selected", "corrupted_in_pool", "corrupted_selected", "corrupted_share_pool",
                                       "corrupted_share_selected", "selected_by_kind")},
            "funnel": [{k: s[k] for k in ("stage", "in", "kept", "dropped")} for s in res.funnel]}
    print(json.dumps(filt, indent=2))

    results: dict = {"filter": filt, "runs": {}}
    suite = make_suite({"name": "corrupted-pool", "max_new_tokens": 96, "evaluators": [
        {"type": "nll", "data": {"path": str(data / "heldout.jsonl")}},
        {"type": "instruction_following", "prompts": [c.turns[0].content for c in heldout[:8]]}]})
    n_pool = len(load_conversations(DataSpec(path=str(data / "pool.jsonl")))[0])
    n_filtered = len(load_conversations(DataSpec(path=str(data / "filtered.jsonl")))[0])
    plan = [("whole_pool", data / "pool.jsonl", args.epochs),  # same epochs: less compute for the subset
            ("filtered", data / "filtered.jsonl", args.epochs),
            ("filtered_same_steps", data / "filtered.jsonl", args.epochs * n_pool / max(1, n_filtered))]
    for name, path, epochs in plan:
        if args.reuse and (args.out / name / "eval.json").exists():
            ev_dict = json.loads((args.out / name / "eval.json").read_text())
            steps = json.loads((args.out / name / "train_metrics.json").read_text()).get("global_step")
            results["runs"][name] = {"examples": len(load_conversations(DataSpec(path=str(path)))[0]),
                                     "epochs": round(epochs, 2), "steps": steps, "eval": ev_dict}
            continue
        tcfg = make_config({"name": name, "model": args.model, "data": [{"path": str(path)}], "method": "lora",
                            "epochs": epochs, "batch_size": 4, "grad_accum": 2, "learning_rate": 4e-4,
                            "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "max_length": 384,
                            "save_steps": 1000, "output_dir": str(args.out / name), "seed": args.seed})
        result = train(tcfg, overwrite=True)
        subjects = load_subjects(result.base_model, adapter=result.final_dir,
                                 cache_path=args.out / "generations.sqlite")
        ev = run_suite(suite, subjects)
        write_json(args.out / name / "eval.json", ev.to_dict())
        results["runs"][name] = {"examples": len(load_conversations(DataSpec(path=str(path)))[0]),
                                 "epochs": round(epochs, 2), "steps": result.metrics.get("global_step"),
                                 "eval": ev.to_dict()}
    base_nll = results["runs"]["whole_pool"]["eval"]["evaluators"]["nll"]["metrics"]["response_nll"]["base"]
    rows = [("base (no SFT)", base_nll)] + [(name, r["eval"]["evaluators"]["nll"]["metrics"]["response_nll"]["tuned"])
                                            for name, r in results["runs"].items()]
    ifr = {name: r["eval"]["evaluators"]["instruction_following"]["metrics"]["answered_and_stopped"]["tuned"]["value"]
           for name, r in results["runs"].items()}
    md = ["# Corrupted pool vs filtered subset", "",
          f"Pool {made['pool']} Alpaca records, {made['corrupted']} corrupted ({filt['corrupted_share_pool']:.0%}); "
          f"filter kept "
          f"{filt['selected']} ({filt['corrupted_selected']} corrupted, {filt['corrupted_share_selected']:.0%}).", "",
          "| model | train examples | epochs | optimizer steps | held-out response NLL (clean refs) | "
          "answered and stopped |", "|---|---|---|---|---|---|"]
    for name, m in rows:
        r = results["runs"].get(name, {})
        md.append(f"| {name} | {r.get('examples', 0)} | {r.get('epochs', '-')} | {r.get('steps', '-')} | "
                  f"{m['value']} (ppl {m['ppl']}, {m['n']} tokens) | {ifr.get(name, '-')} |")
    md += ["", "## Side by side (greedy)", ""]
    samples = {name: r["eval"]["evaluators"]["instruction_following"]["samples"] for name, r in results["runs"].items()}
    for i, row in enumerate(samples["whole_pool"][:6]):
        md.append(f"**{row['prompt']}**\n")
        md.append(f"- *base*: {' '.join(row['base']['text'].split())[:200]}")
        for name in samples:
            md.append(f"- *{name}*: {' '.join(samples[name][i]['tuned']['text'].split())[:300]}")
        md.append("")
    results["seconds"] = round(time.time() - t0)
    write_json(args.out / "results.json", results)
    write_text(args.out / "results.md", "\n".join(md))
    print("\n".join(md[:12]))
    print(f"done in {results['seconds']} s: {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
