"""The reasoning recipe's data: word problems with correct, disjoint answers; GSM8K train/test subsets; the
answers-only and think variants from a real best-of-k run against a local HTTP teacher; and the math evaluator
and numeric reward reading both reply formats (a reasoning block that never closes gives no answer)."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sftlab.curate.best_of_k import best_of_k
from sftlab.curate.rewards import make_reward, numeric_match
from sftlab.data.loading import load_conversations
from sftlab.errors import ConfigError, DataError
from sftlab.evaluate.numeric_answers import final_answer_accuracy
from sftlab.generation import SamplingParams
from sftlab.generation.openai_http import OpenAIHTTPGenerator
from sftlab.recipe.preparers.reasoning import (
    arithmetic_word_problems,
    gsm8k_subset,
    reasoning_variants,
    strip_final_answer,
)
from sftlab.recipe.preparers.word_problems import NAMES
from sftlab.textutil import extract_final_number, normalize

GSM_REF = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
P = [{"role": "user", "content": "q"}]


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _gsm8k_file(path, n):
    path.write_text("".join(json.dumps({"question": f"Q{i}: what is {i} + {i}?", "answer": f"{i}+{i}={2 * i}\n"
                                        f"#### {2 * i}"}) + "\n" for i in range(n)))
    return path


def _worked(answer):
    """The (a, op, b, result) steps of a worked answer and its final number."""
    steps = [tuple(m.groups()) for m in re.finditer(r"^(\d+) ([-+*/]) (\d+) = (\d+)$", answer, flags=re.M)]
    return steps, int(answer.rsplit("#### ", 1)[1])


def test_word_problems_are_worked_correctly_and_read_as_gsm8k(tmp_path):
    counts = arithmetic_word_problems(tmp_path, seed=3, train=120, heldout=40)
    assert counts["train"] == counts["train_synthetic"] == 120 and counts["heldout"] == 40
    assert set(counts["steps_train"]) == {"2", "3", "4"}
    ops = set()
    for r in _rows(tmp_path / "train.jsonl") + _rows(tmp_path / "heldout.jsonl"):
        steps, final = _worked(r["answer"])
        assert 2 <= len(steps) <= 4 and 0 <= final <= 2000
        for i, (a, op, b, c) in enumerate(steps):
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and (op != "/" or a % b == 0)
            assert i == 0 or a == int(steps[i - 1][3])  # one running quantity
            ops.add(op)
        assert int(steps[-1][3]) == final and str(steps[0][0]) in r["question"]
    assert ops == {"+", "-", "*", "/"}
    convs, _ = load_conversations(str(tmp_path / "heldout.jsonl"))  # the math evaluator's reader
    assert len(convs) == 40 and convs[0].turns[0].role == "user" and extract_final_number(convs[0].turns[-1].content)


def _shape(question):
    """What a problem is, whatever name it uses: its text with names, pronouns and numbers blanked, and its numbers."""
    text = normalize(question)
    for name, *_ in NAMES:
        text = text.replace(name.lower(), "NAME")
    text = re.sub(r"\b(she|he|her|him|his)\b", "PRON", text)
    return re.sub(r"\d+", "#", text), tuple(re.findall(r"\d+", text))


def test_heldout_is_disjoint_from_train_by_text_and_by_template_and_numbers(tmp_path):
    arithmetic_word_problems(tmp_path, seed=0, train=400, heldout=150)
    train, held = _rows(tmp_path / "train.jsonl"), _rows(tmp_path / "heldout.jsonl")
    assert not {normalize(r["question"]) for r in train} & {normalize(r["question"]) for r in held}
    assert not {_shape(r["question"]) for r in train} & {_shape(r["question"]) for r in held}
    assert len({_shape(r["question"]) for r in train}) == 400  # no repeats inside train either
    more = tmp_path / "more"
    arithmetic_word_problems(more, seed=0, train=500, heldout=150)
    assert _rows(more / "heldout.jsonl") == held  # the held-out set does not move with the train size
    assert _rows(more / "train.jsonl")[:400] == train
    other = tmp_path / "other"
    arithmetic_word_problems(other, seed=1, train=10, heldout=5)
    assert _rows(other / "heldout.jsonl") != held[:5]


def test_gsm8k_train_problems_go_to_train_only_and_quick_is_small(tmp_path):
    src = _gsm8k_file(tmp_path / "gsm.jsonl", 30)
    counts = arithmetic_word_problems(tmp_path / "a", train=10, heldout=5, gsm8k=src, gsm8k_train=6, seed=2)
    train, held = _rows(tmp_path / "a/train.jsonl"), _rows(tmp_path / "a/heldout.jsonl")
    assert counts["train"] == 16 and counts["train_gsm8k"] == 6 and len(held) == 5
    assert all(r["question"].startswith("Q") for r in train[10:]) and not any(r["question"].startswith("Q")
                                                                              for r in train[:10] + held)
    again = arithmetic_word_problems(tmp_path / "b", train=10, heldout=5, gsm8k=src, gsm8k_train=6, seed=2)
    assert again == counts and _rows(tmp_path / "b/train.jsonl") == train  # seeded: the same sample
    quick = arithmetic_word_problems(tmp_path / "q", quick=True, gsm8k=src, gsm8k_train=6)
    assert (quick["train"], quick["train_gsm8k"], quick["heldout"]) == (10, 2, 4)


def test_gsm8k_subset_is_fixed_and_seeded(tmp_path):
    src = _gsm8k_file(tmp_path / "test.jsonl", 50)
    assert gsm8k_subset(tmp_path / "a", source=src, n=20, seed=7) == {"eval": 20, "source_problems": 50}
    first = _rows(tmp_path / "a/eval.jsonl")
    gsm8k_subset(tmp_path / "b", source=src, n=20, seed=7)
    assert _rows(tmp_path / "b/eval.jsonl") == first and len({r["question"] for r in first}) == 20
    order = [int(r["question"][1:].split(":")[0]) for r in first]
    assert order == sorted(order)  # file order, so a subset reads like the original
    assert gsm8k_subset(tmp_path / "q", source=src, quick=True)["eval"] == 4
    with pytest.raises(ConfigError, match="only 50"):
        gsm8k_subset(tmp_path / "c", source=src, n=51)


def test_gsm8k_subset_of_the_real_test_set(tmp_path, shared_data):
    counts = gsm8k_subset(tmp_path, source=shared_data / "gsm8k/test.jsonl", n=200)
    assert counts == {"eval": 200, "source_problems": 1319}
    assert all(extract_final_number(r["answer"]) for r in _rows(tmp_path / "eval.jsonl"))


@pytest.mark.parametrize(("text", "error", "match"), [
    (None, DataError, r"gsm\.jsonl: file not found"),
    ('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "2"}\n', DataError,
     r"gsm\.jsonl, line 1, field 'answer': no final '#### N'"),
    ('{"question": "q", "answer": "#### 1"}\n{"answer": "#### 2"}\n', DataError, r"line 2, field 'question'"),
    ('{"question": "q", "answer": "#### 1"}\n{oops\n', DataError, r"gsm\.jsonl, line 2: invalid JSON"),
])
def test_bad_gsm8k_input_names_file_record_and_field(tmp_path, text, error, match):
    src = tmp_path / "gsm.jsonl"
    if text is not None:
        src.write_text(text)
    with pytest.raises(error, match=match):
        arithmetic_word_problems(tmp_path / "o", quick=True, gsm8k=src, gsm8k_train=1)
    with pytest.raises(error, match=match):
        gsm8k_subset(tmp_path / "o", source=src, n=1)


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs `gsm8k`"):
        arithmetic_word_problems(tmp_path, gsm8k_train=3)
    with pytest.raises(ConfigError, match="min_steps"):
        arithmetic_word_problems(tmp_path, min_steps=3, max_steps=2)


class _Teacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers each question with its scripted replies."""

    replies: dict[str, list[str]] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        script = self.replies[body["messages"][-1]["content"]]
        choices = [{"index": i, "finish_reason": "stop", "message": {"content": script[i % len(script)]}}
                   for i in range(body.get("n", 1))]
        data = json.dumps({"choices": choices, "usage": {"completion_tokens": 10 * len(choices)}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture()
def teacher():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield OpenAIHTTPGenerator(f"http://127.0.0.1:{srv.server_address[1]}/v1", "teacher", api_key_env=None)
    srv.shutdown()


def _step_by_step(problem, final, ending):
    """A reply in the teacher's style: the worked steps, then `ending` stating `final`."""
    steps = "\n".join(f"{i + 1}. {a} {op} {b} = {c}" for i, (a, op, b, c) in enumerate(_worked(problem["answer"])[0]))
    return f"To solve this, let's go step by step.\n{steps}\n\n" + ending.format(final)


ENDINGS = ["Therefore, the answer is \\({}\\).", "So the final answer is $\\boxed{{{}}}$.", "#### {}",
           "**Answer:** {}"]


def test_best_of_k_then_variants_from_a_real_http_teacher(tmp_path, teacher):
    arithmetic_word_problems(tmp_path / "prep", quick=True, seed=5)
    problems = _rows(tmp_path / "prep/train.jsonl")
    for i, p in enumerate(problems):  # sample 0 is wrong, sample 1 right in one of the teacher's styles
        right = int(p["answer"].rsplit("#### ", 1)[1])
        _Teacher.replies[p["question"]] = [_step_by_step(p, right + 1, "The answer is {}."),
                                           _step_by_step(p, right, ENDINGS[i % len(ENDINGS)])]
    _Teacher.replies[problems[-1]["question"]] = ["I am not sure."]  # never right: no record
    convs, _ = load_conversations(str(tmp_path / "prep/train.jsonl"))
    stats = best_of_k(convs, teacher, make_reward("numeric"), tmp_path / "bok.jsonl",
                      SamplingParams(n=2, temperature=1.0, max_new_tokens=64), reward_name="numeric", min_score=1.0)
    kept = _rows(tmp_path / "bok.jsonl")
    assert stats.records == len(kept) == 7 and all(r["meta"]["sample_index"] == 1 for r in kept)
    assert kept[0]["meta"]["reference"] == problems[0]["answer"]  # best-of-k keeps the reference

    counts = reasoning_variants(tmp_path / "var", source=tmp_path / "bok.jsonl")
    assert counts == {"source_records": 7, "records": 7, "skipped": {}}
    answers, thinks = _rows(tmp_path / "var/answers_only.jsonl"), _rows(tmp_path / "var/think.jsonl")
    for a, t, p in zip(answers, thinks, problems, strict=False):
        final = p["answer"].rsplit("#### ", 1)[1]
        assert a["messages"][0] == t["messages"][0] == {"role": "user", "content": p["question"]}
        assert a["messages"][1] == {"role": "assistant", "content": f"The answer is {final}."}
        reply = t["messages"][1]["content"]
        assert reply.startswith("<think>\nTo solve this") and reply.endswith(f"\n</think>\nThe answer is {final}.")
        assert "####" not in reply and "boxed" not in reply and reply.count("answer") == 1
        assert extract_final_number(reply) == extract_final_number(a["messages"][1]["content"]) == final
    assert len(load_conversations(str(tmp_path / "var/think.jsonl"))[0]) == 7  # ordinary SFT data


def test_variants_skip_and_count_records_without_a_usable_answer(tmp_path):
    def rec(reply, reference="#### 7", **extra):
        return {"id": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                                        {"role": "assistant", "content": reply}], "meta": {"reference": reference}}
    rows = [rec("3 + 4 = 7\nThe answer is 7."), rec("3 + 4 = 8\nThe answer is 8."), rec("7", reference=None),
            rec("The answer is 7."), rec("3 + 4 = 7", reference="no number")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = reasoning_variants(tmp_path, source=tmp_path / "s.jsonl")
    assert counts == {"source_records": 5, "records": 1, "skipped": {
        "teacher's answer differs from the reference": 1, "no reference answer": 2, "no usable reasoning": 1}}
    think = "<think>\n3 + 4 = 7\n</think>\nThe answer is 7."
    assert _rows(tmp_path / "think.jsonl")[0]["messages"] == [{"role": "user", "content": "q"},
                                                              {"role": "assistant", "content": think}]
    (tmp_path / "bad.jsonl").write_text(json.dumps(rec("ok")) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2, field 'messages'"):
        reasoning_variants(tmp_path, source=tmp_path / "bad.jsonl")


@pytest.mark.parametrize(("reply", "reasoning"), [
    ("9 * 2 = 18\nSo she makes \\(\\boxed{18}\\) dollars.", "9 * 2 = 18\nSo she makes \\(18\\) dollars."),
    ("x = 3.5\nShe has 3.5 kg. The answer is 3.5.", "x = 3.5\nShe has 3.5 kg."),
    ("a\n\n**Answer:** 42\n", "a"), ("a\nThe final answer is $\\boxed{42}$.", "a"), ("a\n#### 4\nmore", "a"),
    ("step\nHence the answer is 5", "step"), ("He answers 4 questions.", "He answers 4 questions."),
])
def test_the_teachers_own_answer_statement_is_stripped_from_its_reasoning(reply, reasoning):
    assert strip_final_answer(reply) == reasoning


THINK = "<think>\nFirst 17 apples. The answer is 17 so far, then #### 25 more... 17 + 25 = 42\n</think>\n"


@pytest.mark.parametrize(("text", "number"), [
    ("The answer is 42.", "42"),
    (THINK + "The answer is 42.", "42"),  # numbers and markers inside the reasoning do not count
    ("<think>\nFirst 17, then 25, so 17 + 25 = 42", None),  # ran out of tokens inside the reasoning: no answer
    ("<think>a</think> The answer is 3. <think>\nnow 42", None),  # a second block left open
    ("17 + 25 = 42\n</think>\nThe answer is 42.", "42"),  # the template opened the block in the prompt
    ("<think>\n17 + 25 = 42\n</think>\n", None),  # reasoning, then nothing
    ("She makes 9 * 2 = $18.\n#### 18", "18"),
    ("The answer is 9 eggs a day, so she makes \\boxed{18} dollars.", "18"),  # the last marker wins
    ("Therefore, the answer is \\(18\\).", "18"),
    ("**Answer:** 18, which is 2 more than 16", "18"),
    ("The answer is **18**, which is 2 more than 16", "18"),
])
def test_final_number_of_both_reply_formats(text, number):
    assert extract_final_number(text) == number


@pytest.mark.parametrize(("reply", "score"), [
    ("Janet's ducks lay 16 eggs.\n1. 16 - 3 - 4 = 9 eggs are left.\n2. 9 * 2 = 18 dollars.\n\n"
     "So Janet makes \\(\\boxed{18}\\) dollars every day.", 1.0),
    ("16 - 3 - 4 = 9\n9 * $2 = $18\nThe answer is: $18", 1.0),
    ("16 - 3 - 4 = 9\n9 * 2 = 17\nSo she makes $17 every day.", 0.0),
    ("9 eggs at $2 each.\nTherefore, the answer is \\(18\\).", 1.0),
    ("<think>\n9 * 2 = 18", 0.0),
])
def test_numeric_reward_scores_step_by_step_replies_by_their_final_number(reply, score):
    assert numeric_match(P, reply, GSM_REF) == score


def test_math_evaluator_scores_both_formats_on_the_heldout_set(tmp_path, teacher):
    arithmetic_word_problems(tmp_path, quick=True, seed=9)
    held = _rows(tmp_path / "heldout.jsonl")
    finals = [p["answer"].rsplit("#### ", 1)[1] for p in held]
    _Teacher.replies = {held[0]["question"]: [f"The answer is {finals[0]}."],
                        held[1]["question"]: [f"<think>\n1 + 1 = 2, so 2\n</think>\nThe answer is {finals[1]}."],
                        held[2]["question"]: [f"<think>\nso far {finals[2]}"],  # never closed: wrong
                        held[3]["question"]: [f"The answer is {int(finals[3]) + 1}."]}
    convs, _ = load_conversations(str(tmp_path / "heldout.jsonl"))
    r = final_answer_accuracy(teacher, convs, max_new_tokens=32)
    assert [s["correct"] for s in r["samples"]] == [[True], [True], [False], [False]]
    assert r["accuracy"] == 0.5 and r["n"] == 4 and r["correct"] == 2 and r["ci95"][0] < 0.5 < r["ci95"][1]


def test_gsm8k_form_records_are_solutions_too(tmp_path):
    """Worked answers ending `#### N` (GSM8K, the generated problems) give the same two variants."""
    from sftlab.recipe.preparers.reasoning import reasoning_variants

    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"question": "Tom has 3 apples and buys 4. How many?",
                               "answer": "3 + 4 = 7 apples.\n#### 7"}) + "\n")
    made = reasoning_variants(tmp_path / "out", source=src)
    think = json.loads((tmp_path / "out/think.jsonl").read_text())["messages"][-1]["content"]
    answer = json.loads((tmp_path / "out/answers_only.jsonl").read_text())["messages"][-1]["content"]
    assert made["records"] == 1 and answer == "The answer is 7."
    assert think == "<think>\n3 + 4 = 7 apples.\n</think>\nThe answer is 7."
