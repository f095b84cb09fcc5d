"""Regenerate the demo's shipped data with sftlab's own pipeline: the packaged teacher answers the prompts in
data/demo/prompts.jsonl (curate distill), the answers are filtered and diversity-ranked (curate filter), and the
result goes to src/sftlab/resources/ with per-record provenance. The teacher also answers the held-out general
prompts: those references are what the demo's held-out NLL is measured on. And it rewrites each hand-written
identity question three ways; the faithful rewrites, decontaminated against the held-out prompts, inherit the
original's answer (resources/identity_paraphrases.jsonl; 3.6 min of teacher time).

    .venv/bin/python scripts/make_demo_data.py        # ~45 min on 2 CPU cores; a rerun is served from the cache

Intermediate files live in data/demo/build/ (git-ignored), with the generation caches that make a rerun free.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from sftlab.data.shipped import heldout_prompts, prompt_key
from sftlab.data.writers import write_jsonl
from sftlab.textutil import CJK, words

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
# Identity paraphrases: the teacher rewrites each hand-written identity question; the rewrite inherits the
# original's answer. More ways of asking, same answers: the student links "you" questions to its identity
# rather than to the general answers' patterns ("What are your X?" -> "My X are ...").
PARAPHRASE_SYSTEM = "You rewrite questions. You never answer them."
PARAPHRASE = {  # the task, in the question's language
    "en": 'Write three different ways a user could ask an AI assistant this: "{q}"\nReply with the three '
          'questions only, one per line.',
    "zh": '用三种不同的说法改写这句对AI助手说的话：“{q}”\n只写改写后的三句话，每行一句，不要回答。'}
PARAPHRASES_PER_QUESTION = 3
STOPWORDS = {"the", "and", "are", "is", "was", "this", "that", "what", "who", "which", "how", "can", "for", "with"}
NEAR_HELDOUT = 0.5  # character 5-gram Jaccard to a held-out prompt at or above which a rewrite is dropped (the
# test that held-out prompts are unseen fails at 0.6)


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


def _second_person(text: str) -> bool:
    return bool(re.search(r"\b(you|your|yourself)\b|你|您", text, re.I))


def _content(text: str) -> set[str]:
    """Content words (CJK: characters) of a message, to check a rewrite still talks about the same thing."""
    return {w for w in words(text) if CJK.search(w) or (len(w) > 2 and w not in STOPWORDS)}


def faithful_rewrite(line: str, question: str) -> bool:
    """A rewrite the student may learn the original's answer from: the same language, still a question when the
    original is one, addressed to the assistant when the original is (else sharing a content word with it), not
    about "the user", and not the same sentence looped."""
    sentences = [x.strip() for x in re.split(r"[?？。.!！]", line) if x.strip()]
    return (3 <= len(line) <= 120 and bool(CJK.search(line)) == bool(CJK.search(question))
            and prompt_key(line) != prompt_key(question) and "user" not in line.lower()
            and len(sentences) == len(set(sentences))
            and (not question.rstrip().endswith(("?", "？")) or line.endswith(("?", "？")))
            and (_second_person(line) if _second_person(question) else bool(_content(line) & _content(question))))


def paraphrase_lines(text: str, question: str) -> list[str]:
    """The teacher's rewrites, one per line, cleaned of numbering and quotes; only the faithful ones."""
    lines = [re.sub(r"^\s*(?:\d+[.)、]|[-*•])\s*", "", x).strip().strip('"“”\'') for x in text.splitlines()]
    return [x for x in lines if faithful_rewrite(x, question)][:PARAPHRASES_PER_QUESTION]


def char_grams(text: str, n: int = 5) -> frozenset[str]:
    """Character 5-grams of the lowercased letters and digits: the held-out test's similarity measure."""
    t = "".join(ch for ch in text.lower() if ch.isalnum())
    return frozenset(t[i:i + n] for i in range(len(t) - n + 1)) or frozenset({t})


def near_heldout(text: str, heldout: list[frozenset[str]]) -> bool:
    g = char_grams(text)
    return any(len(g & h) / len(g | h) >= NEAR_HELDOUT for h in heldout)


def identity_paraphrases() -> dict[str, int]:
    """The teacher rewrites each identity question (curate distill); each kept rewrite becomes a conversation with
    the original's answer, and rewrites close to a held-out prompt are dropped (decontamination)."""
    originals = read_jsonl(RES / "identity.jsonl")
    prompts = BUILD / "identity_questions.jsonl"
    questions = [r["messages"][0]["content"] for r in originals]
    write_jsonl(prompts, [{"id": f"id{i:03d}", "prompt": PARAPHRASE["zh" if CJK.search(q) else "en"].format(q=q)}
                          for i, q in enumerate(questions)])
    distill(prompts, BUILD / "identity_rewrites.jsonl", PARAPHRASE_SYSTEM)
    heldout = [char_grams(p) for p in heldout_prompts("identity") + heldout_prompts("general")]
    seen = {prompt_key(r["messages"][0]["content"]) for r in originals}
    rows, counts = [], {"faithful_rewrites": 0, "near_heldout": 0, "duplicate": 0}
    for rec in read_jsonl(BUILD / "identity_rewrites.jsonl"):
        i = int(rec["meta"]["source_id"][2:])
        question, answer = questions[i], originals[i]["messages"][1]["content"]
        for line in paraphrase_lines(rec["messages"][-1]["content"], question):
            counts["faithful_rewrites"] += 1
            if near_heldout(line, heldout):
                counts["near_heldout"] += 1
            elif prompt_key(line) in seen:
                counts["duplicate"] += 1
            else:
                seen.add(prompt_key(line))
                rows.append({"id": f"{rec['meta']['source_id']}-p{len(rows)}", "messages": [
                    {"role": "user", "content": line}, {"role": "assistant", "content": answer}], "meta": {
                    "paraphrase_of": question, "teacher": TEACHER, "teacher_prompt": rec["messages"][-2]["content"],
                    "params": rec["meta"]["params"]}})
    write_jsonl(RES / "identity_paraphrases.jsonl", rows)
    return counts | {"kept": len(rows)}


def main() -> None:
    t0 = time.time()
    BUILD.mkdir(parents=True, exist_ok=True)
    prompts = {r["id"]: r for r in read_jsonl(ROOT / "data" / "demo" / "prompts.jsonl")}
    write_jsonl(BUILD / "prompts_refusal.jsonl", [p for p in prompts.values() if p["category"] == "refusal"])
    distill(ROOT / "data" / "demo" / "prompts.jsonl", BUILD / "distilled.jsonl")
    distill(BUILD / "prompts_refusal.jsonl", BUILD / "distilled_refusal.jsonl", REFUSE)
    distill(RES / "heldout_general.jsonl", BUILD / "heldout_reference.jsonl")
    paraphrased = identity_paraphrases()
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
                      "heldout_references": len(refs),
                      "identity_paraphrases": paraphrased, "distill_seconds": round(t_distill),
                      "total_seconds": round(time.time() - t0)}, indent=2))


if __name__ == "__main__":
    main()
