"""Evaluation: every scorer on hand-made outputs with known scores, and whole suites on a tiny model."""

import json

import pytest

from sftlab.errors import ConfigError
from sftlab.evaluate.checks import mentions_identity, same_language, script
from sftlab.evaluate.judge import pairwise_winrate, parse_verdict
from sftlab.evaluate.runner import rate_metric, runs_into_new_turn
from sftlab.evaluate.suite import load_suite, make_suite, read_prompt_file
from sftlab.evaluate.toolcalls import parse_tool_call, score_no_call, score_tool_call


@pytest.mark.parametrize(("text", "expected"), [("Hello there", "latin"), ("你好，世界", "zh"), ("123 !", ""),
                                                ("我是 Orca，由 Acme 开发", "zh"),
                                                # a tuned model's reply and a prompt: Chinese with English names
                                                ("我是Orca，由the sftlab team开发的AI助手。", "zh"),
                                                ("你是OpenAI开发的ChatGPT吗？", "zh"),
                                                ("The Chinese word for hello is 你好.", "latin")])
def test_script(text, expected):
    assert script(text) == expected


def test_identity_and_language_checks():
    assert mentions_identity("I am ORCA.", "Orca") and mentions_identity("Built by Acme.", "Orca", "Acme")
    assert not mentions_identity("I am a student.", "Orca", "Acme")
    assert same_language("你是谁？", "我是 Orca。") and not same_language("Who?", "我是 Orca。")
    assert not same_language("Who?", "   ")


@pytest.mark.parametrize(("reply", "expected"), [
    ("Paris is the capital of France.", False),
    ("Paris.\nuser\nWhat about Spain?", True),
    ("Paris.\n### Instruction: name a city", True),
    ("Paris. <|im_start|>user", True),
    ("Paris.\nQ: and Italy?", True),
    ("The user asked about France: Paris.", False),
])
def test_runs_into_new_turn(reply, expected):
    assert runs_into_new_turn(reply) is expected


@pytest.mark.parametrize(("reply", "expected"), [
    # notes in a think block are no new turn (each was one: the whole reply was read, think block and all)
    ("<think>\nQuestion: what is the capital of France?\nIt is Paris.\n</think>Paris.", False),
    ("<think>\nSystem:\nx + y = 10\nx - y = 2\n</think>x = 6, y = 4.", False),
    ("<think>\nQ: which city?\nModel: the answer is a capital.\n</think>Paris.", False),
    ("Let me see.\nQuestion: the capital?</think>Paris.", False),  # the prompt opened the think block
    ("<think>The user asked about France.</think>Paris.", False),
    # a turn written anywhere, think block included, or a new question after it, is one
    ("<think>\nThe capital.\nUser: what about Spain?\n</think>Paris.", True),
    ("<think>Paris, so<|im_start|>user\nAnd Spain?", True),  # never closed: answer_of reads ''
    ("<think>a</think>Paris.\nQuestion: and Spain?", True),
    ("<think>a</think>Paris.\n<think>b</think>\nQ: and Spain?", True),  # a second think block: answer_of 's last
    ("<think>a</think>\nuser\nWhat about Spain?", True),
])
def test_runs_into_new_turn_reads_think_blocks_for_turns_only(reply, expected):
    """Role tags and dialogue-turn lines count anywhere; a restated question or a 'System:' of equations in a think
    block are the model's notes, not a new turn (a reasoning model's answered replies were counted as running on)."""
    assert runs_into_new_turn(reply) is expected


def test_rate_metric_has_n_and_wilson_interval():
    m = rate_metric([True, True, False, True])
    assert m["value"] == 0.75 and m["n"] == 4 and 0.2 < m["ci95"][0] < 0.75 < m["ci95"][1] <= 1.0
    assert rate_metric([])["value"] is None


def test_wilson_interval_matches_the_formula_and_claims_nothing_from_no_data():
    from sftlab.evaluate.checks import wilson_interval

    assert wilson_interval(7, 10) == (0.3968, 0.8922)  # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # was (0.0, 0.0): certainty from no data


WEATHER = [{"name": "get_weather", "description": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city"]}}]


@pytest.mark.parametrize(("reply", "parsed", "correct", "error"), [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', True, True, ""),
    ('Sure! {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', True, True, ""),
    ('```json\n{"function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}}\n```', True, True,
     ""),
    ('<tool_call>{"name": "get_time", "arguments": {"city": "Paris"}}</tool_call>', True, False, "called 'get_time'"),
    ('<tool_call>{"name": "get_weather", "arguments": {"unit": "C"}}</tool_call>', True, False, "schema"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}</tool_call>', True, False,
     "schema"),
    ("It is sunny in Paris.", False, False, "no parseable tool call"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', False, False, "no parseable"),
])
def test_tool_call_scoring(reply, parsed, correct, error):
    s = score_tool_call(reply, {"name": "get_weather", "arguments": {"city": "Paris"}}, WEATHER)
    assert s["parsed"] is parsed and s["correct"] is correct and error in s["error"]


def test_tool_call_without_schema_needs_the_expected_arguments():
    expected = {"name": "f", "arguments": {"a": 1, "b": 2}}
    assert score_tool_call('{"name": "f", "arguments": {"a": 5, "b": 6}}', expected, None)["correct"]
    assert "missing required arguments ['b']" in score_tool_call('{"name": "f", "arguments": {"a": 5}}', expected,
                                                                 None)["error"]
    assert parse_tool_call('{"x": 1} then {"name": "f", "arguments": {}}') == {"name": "f", "arguments": {}}


@pytest.mark.parametrize(("reply", "call"), [
    ('Here is the user: {"name": "Bob", "age": 3}', None),  # was a call to 'Bob': data with a name is no call
    ('```json\n{"name": "Bob", "age": 3}\n```', None),
    ('{"name": "Bob"}', None),
    ('<tool_call>{"name": "get_time"}</tool_call>', {"name": "get_time", "arguments": {}}),  # a call block says so
    ('Calling: {"name": "get_time", "arguments": {}}', {"name": "get_time", "arguments": {}}),
])
def test_only_an_object_with_arguments_or_in_a_call_block_is_a_call(reply, call):
    assert parse_tool_call(reply) == call
    assert score_no_call(reply)["no_call"] is (call is None)


@pytest.mark.parametrize(("reply", "no_call"), [
    ("I'm sorry, I can't book tickets. I can help you find a movie instead.", True),
    # replies of a tuned gemma-3-270m where no call was needed: a call cut off at the token budget, a brace short
    ('<tool_call>\n{"name": "generate_sentence", "arguments": {"sentence": "slowly, slowly, slowly, slowly', False),
    ('<tool_call>\n{"name": "calculate_loan_payment", "arguments": {"type": "object", "properties": {"principal": '
     '1000, "interest_rate": 0.05, "loan_term": 30"}}\n</tool_call>', False),
])
def test_a_started_but_unparseable_call_is_not_an_answer_without_one(reply, no_call):
    s = score_no_call(reply)
    assert s["no_call"] is no_call and bool(s["error"]) is not no_call


STOCK = [{"name": "get_stock_price", "description": "Get the current stock price", "parameters": {
    "type": "object", "properties": {"symbol": {"type": "string", "description": "The stock symbol"}},
    "required": ["symbol"]}}]
# a base gemma-3-270m shown the tools (tools_in_prompt): it echoes the system message, tool list included
ECHO = ('You can call these functions. To call one, reply with <tool_call>{"name": ..., "arguments": {...}}'
        '</tool_call>.\n' + json.dumps(STOCK) + "\n\nHi, can you tell")


def test_the_tool_list_echoed_from_the_prompt_is_not_a_call():
    s = score_tool_call(ECHO, {"name": "get_stock_price", "arguments": {"symbol": "AAPL"}}, STOCK)
    assert not (s["parsed"] or s["right_function"] or s["names_function"])
    assert score_no_call(ECHO)["no_call"]
    llama_style = '{"name": "get_stock_price", "parameters": {"symbol": "AAPL"}}'  # a call all the same
    assert score_tool_call(llama_style, {"name": "get_stock_price", "arguments": {}}, STOCK)["correct"]


def test_checks_score_the_answer_after_a_think_block():
    """The reasoning recipe trains `<think> ... </think>` then the answer: only the answer is scored."""
    assert not mentions_identity("<think>Am I Orca? I should not say.</think>I am an assistant.", "Orca")
    assert mentions_identity("<think>Who made me?</think>I am Orca.", "Orca")
    assert not mentions_identity("<think>I am Orca, so", "Orca")  # still thinking: no answer yet
    assert same_language("你是谁？", "<think>The user asks who I am; answer in Chinese.</think>我是一个助手。")
    assert not same_language("Who?", "<think>The user asks who I am.</think>我是一个助手。")
    thought = '<think>Call {"name": "get_weather", "arguments": {"city": "Paris"}}? Not needed.</think>'
    assert score_no_call(thought + "It is sunny in Paris.")["no_call"]
    assert score_no_call('<think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>? '
                         "No.</think>Sunny.")["no_call"]
    s = score_tool_call(thought + "I cannot check the weather.", {"name": "get_weather", "arguments": {}}, WEATHER)
    assert not (s["parsed"] or s["names_function"] or s["correct"])
    s = score_tool_call('<think>Not {"name": "get_time", "arguments": {}}.</think><tool_call>{"name": "get_weather", '
                        '"arguments": {"city": "Paris"}}</tool_call>', {"name": "get_weather"}, WEATHER)
    assert s["correct"] and s["names_function"]


@pytest.mark.parametrize(("reply", "answered"), [
    ("<think>The user says hello.</think>", False),  # was True: only a think block, no answer after it
    ("<think>The user says hello.</think>  \n", False),
    ("<think>The user says hello, so I", False),  # was True: still thinking when it stopped
    ("<think>A greeting.</think>Hello!", True),
    ("<think>\nQuestion: hello?\nA greeting.\n</think>Hello!", True),  # was False: its notes read as a new turn
    ("Hello!", True),
])
def test_answered_and_stopped_needs_an_answer_after_the_think_block(reply, answered):
    """A reply that only thinks answered nothing, though its text is not empty."""
    from sftlab.evaluate.runner import Subject, eval_instruction
    from sftlab.generation.base import Generation

    class Fixed:
        model_id = "fixed"

        def generate(self, prompts, params):
            return [[Generation(reply, 3, True)] for _ in prompts]

    suite = make_suite({"evaluators": [{"type": "instruction_following", "prompts": ["Hello"]}]})
    metrics, _ = eval_instruction(suite.evaluators[0], Subject("fixed", Fixed()), 8)
    assert metrics["answered_and_stopped"]["value"] == float(answered)


@pytest.mark.parametrize(("text", "verdict"), [("A", "A"), (" b.", "B"), ("Tie", "tie"), ("Answer B is better", "B"),
                                               ("Both are equally good", "tie"), ("I like cheese", None),
                                               ("Answer A and Answer B", None),
                                               # each read as A before: a tie, a named answer, an article
                                               ("A tie.", "tie"), ("It's a tie", "tie"), ("Answer: B", "B"),
                                               ("a better answer would be B", None)])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_pairwise_winrate_cancels_position_bias_and_counts_everything():
    prompts = ["capital of France?", "capital of Italy?", "capital of Spain?", "capital of Peru?"]
    tuned = ["Paris", "Rome", "Madrid, I think", "no idea"]
    base = ["no idea", "no idea", "Madrid", "Lima"]
    refs = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Peru": "Lima"}

    def knows(prompt, a, b):  # a judge that checks the reference: position-independent
        ref = next(v for k, v in refs.items() if k in prompt)
        return "tie" if (ref in a) == (ref in b) else ("A" if ref in a else "B")

    r = pairwise_winrate(knows, prompts, tuned, base)
    assert (r["tuned_win_rate"], r["base_win_rate"], r["tie_rate"], r["n"]) == (0.5, 0.25, 0.25, 4)
    assert r["tuned_score"] == 0.625 and r["inconsistent_orders"] == 0 and r["unparseable"] == 0

    always_first = pairwise_winrate(lambda p, a, b: "A", prompts, tuned, base)  # pure position bias
    assert always_first["tie_rate"] == 1.0 and always_first["inconsistent_orders"] == 4
    assert always_first["tuned_win_rate"] == always_first["base_win_rate"] == 0.0

    mute = pairwise_winrate(lambda p, a, b: None if "Peru" in p else "tie", prompts, tuned, base)
    assert mute["n"] == 3 and mute["unparseable"] == 1


def test_suite_yaml_errors_name_the_field(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("evaluators:\n  - type: identity\n    name: Orca\n    autor: Acme\n")
    with pytest.raises(ConfigError, match=r"s.yaml: field 'evaluators.0.identity.autor'"):
        load_suite(bad)
    bad.write_text("evaluators:\n  - type: bleu\n")
    with pytest.raises(ConfigError, match="evaluators.0"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="no such evaluation suite"):
        load_suite(tmp_path / "missing.yaml")
    bad.write_text("evaluators:\n  - type: math\n    data: {path: qa.jsonl}\n    format: '<think>(.+'\n")
    with pytest.raises(ConfigError, match=r"evaluators.0.math.format.*not a regular expression"):
        load_suite(bad)
    suite = make_suite({"evaluators": [{"type": "identity", "name": "Orca"}, {"type": "identity", "name": "Bo"},
                                       {"type": "nll", "label": "heldout", "data": {"path": "x.jsonl"}}]})
    assert suite.unique_names() == ["identity", "identity_2", "heldout"]


@pytest.mark.parametrize(("name", "text"), [("p.txt", "Say hi.\nSay bye.\n"),
                                            ("p.jsonl", '{"prompt": "Say hi."}\n{"prompt": "Say bye."}\n')])
def test_prompt_file_saved_with_a_bom_reads_like_one_without(tmp_path, name, text):
    """`sftlab eval --prompts`: was the BOM glued to the first prompt (text) or 'not valid JSON' (JSONL)."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_prompt_file(path) == ["Say hi.", "Say bye."]


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_prompt_file_is_an_error_naming_it_before_any_model_loads(tmp_path, text):
    """Was: the base model loaded, then "evaluator 'instruction_following' needs `prompts` or `data`"."""
    from typer.testing import CliRunner

    from sftlab.cli import app

    path = tmp_path / "p.txt"
    path.write_text(text)
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "no-model"), "--adapter", str(tmp_path), "--prompts",
                                 str(path), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 2 and f"{path}: no prompts" in r.output, r.output


def test_shipped_suites_are_valid():
    from pathlib import Path

    suites = sorted((Path(__file__).parents[1] / "evals").glob("*.yaml"))
    assert suites
    for path in suites:
        assert load_suite(path).evaluators


@pytest.fixture(scope="module")
def tuned_tiny(tiny_model_dir, tmp_path_factory):
    """A tiny model LoRA-trained for a few steps on known answers."""
    tmp = tmp_path_factory.mktemp("tuned")
    return _train_tiny(tiny_model_dir, tmp, learning_rate=0.01), tmp / "d.jsonl"


def _train_tiny(model_dir, tmp, **settings):
    """A LoRA adapter trained for 3 steps on "q{i}" -> "answer {i}"; returns its folder."""
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(8)))
    cfg = make_config({"model": str(model_dir), "data": [str(data)], "max_steps": 3, "batch_size": 4,
                       "grad_accum": 1, "precision": "fp32", "output_dir": str(tmp / "run"), **settings})
    return train(cfg, overwrite=True).final_dir


def _eval_files(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"})
                          + "\n" for i in range(3)))
    tools = tmp_path / "tools.jsonl"
    tools.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 20}"}, {"role": "assistant", "content": "20 degrees."}],
        "tools": WEATHER}) + "\n")
    mod = tmp_path / "my_evals.py"
    mod.write_text("def short(prompt, reply, record):\n    return len(reply) < 20\n")
    return qa, tools


def test_full_suite_on_tiny_models_with_cache(tuned_tiny, tiny_model_dir, tmp_path, monkeypatch):
    from sftlab.evaluate.runner import run_suite, write_result
    from sftlab.evaluate.subjects import load_subjects

    adapter, data = tuned_tiny
    qa, tools = _eval_files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = make_suite({"name": "all", "max_new_tokens": 6, "evaluators": [
        {"type": "nll", "data": {"path": str(data)}},
        {"type": "instruction_following", "prompts": ["q1", "Who are you?"]},
        {"type": "identity", "name": "Orca", "author": "Acme", "identity_prompts": ["Who are you?"],
         "general_prompts": ["q1"]},
        {"type": "math", "data": {"path": str(qa)}},
        {"type": "math", "data": {"path": str(qa)}, "k": 2, "temperature": 1.0},
        {"type": "math", "label": "any_format", "data": {"path": str(qa)}, "format": "(?s).*"},
        {"type": "math", "label": "no_format", "data": {"path": str(qa)}, "format": "(?!)"},
        {"type": "tool_calls", "data": {"path": str(tools)}},
        {"type": "custom", "function": "my_evals:short", "prompts": ["q2", "q3"]},
        {"type": "judge", "judge": str(tiny_model_dir), "prompts": ["q1", "q2"]},
    ]})
    cache = tmp_path / "gen.sqlite"
    subjects = load_subjects(str(tiny_model_dir), adapter=adapter, cache_path=cache)
    res = run_suite(suite, subjects)
    ev = res.evaluators
    nll = ev["nll"]["metrics"]["response_nll"]
    assert nll["tuned"]["value"] < nll["base"]["value"] and nll["tuned"]["n"] > 0  # trained on these answers
    for name, key in [("instruction_following", "answered_and_stopped"), ("identity", "identity_correct"),
                      ("math", "accuracy"), ("math_2", "pass@2"), ("tool_calls", "tool_call_correct"),
                      ("custom", "short")]:
        for label in ("base", "tuned"):
            m = ev[name]["metrics"][key][label]
            assert 0.0 <= m["value"] <= 1.0 and m["n"] > 0 and len(m["ci95"]) == 2, (name, m)
    assert ev["math"]["metrics"]["accuracy"]["base"]["n"] == 3 and ev["tool_calls"]["metrics"][
        "parseable_call"]["base"]["n"] == 1
    assert "format_followed" not in ev["math"]["metrics"]  # only where a format is asked for
    for label, want in (("any_format", 1.0), ("no_format", 0.0)):  # the whole reply must match
        assert [ev[label]["metrics"]["format_followed"][s]["value"] for s in ("base", "tuned")] == [want, want]
    pw = ev["judge"]["pairwise"]
    assert pw["n"] == 2 and pw["unparseable"] == 0 and pw["kind"] == "LogprobJudge"  # a local judge: p(A) vs p(B)
    assert all(v["forward"] in ("A", "B", "tie") for v in ev["judge"]["samples"])
    assert [r["prompt"] for r in ev["instruction_following"]["samples"]] == ["q1", "Who are you?"]
    js, md = write_result(res, tmp_path / "out")
    assert json.loads(js.read_text()) == res.to_dict()
    assert "| identity | identity_correct |" in md.read_text()

    # a rerun on the same models generates nothing new: every reply comes from the cache, identical
    again = load_subjects(str(tiny_model_dir), adapter=adapter, cache_path=cache)
    res2 = run_suite(make_suite({"max_new_tokens": 6, "evaluators": suite.model_dump()["evaluators"][1:3]}), again)
    assert again[0].generator.cache.misses == 0 and again[0].generator.cache.hits > 0
    assert res2.evaluators["identity"] == ev["identity"]


def test_cache_key_changes_when_the_adapter_changes(tuned_tiny, tmp_path):
    import shutil

    from sftlab.evaluate.subjects import weights_fingerprint

    adapter, _ = tuned_tiny
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    before = weights_fingerprint(copy)
    (copy / "adapter_model.safetensors").write_bytes((copy / "adapter_model.safetensors").read_bytes() + b" ")
    assert weights_fingerprint(copy) != before


def test_moved_models_keep_their_generation_cache_keys(tuned_tiny, tiny_model_dir, tmp_path):
    """Was: the keys held the base model's path, so moving the model cache (or a run) regenerated every reply."""
    import shutil

    from sftlab.evaluate.subjects import load_subjects

    adapter, _ = tuned_tiny
    shutil.copytree(tiny_model_dir, tmp_path / "m")  # copies keep the files' times, as a move does
    shutil.copytree(adapter, tmp_path / "a")

    def keys(model: str, adapter: str) -> list[str]:
        subjects = load_subjects(str(tmp_path / model), adapter=str(tmp_path / adapter), cache_path=tmp_path / "c.db")
        return [s.generator.cache_id for s in subjects]

    before = keys("m", "a")
    (tmp_path / "m").rename(tmp_path / "m2")
    (tmp_path / "a").rename(tmp_path / "a2")
    assert keys("m2", "a2") == before
    weights = tmp_path / "a2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten: a retrained adapter at the same path
    moved = keys("m2", "a2")
    assert moved[0] == before[0] and moved[1] != before[1]


def test_demo_pipeline_on_tiny_model(tiny_model_dir, tmp_path):
    from sftlab.data.shipped import heldout_prompts
    from sftlab.data.shipped import prompt_key as _prompt_key
    from sftlab.demo import run_demo

    res = run_demo(model=str(tiny_model_dir), out_dir=tmp_path / "demo", epochs=0.25, general_examples=24,
                   judge=str(tiny_model_dir), train_template_tokens=True)
    saved = json.loads((tmp_path / "demo/eval/eval.json").read_text())
    assert saved == res.to_dict() and set(saved["subjects"]) == {"base", "tuned"}
    held = heldout_prompts("identity") + heldout_prompts("general")
    assert len(saved["evaluators"]["instruction_following"]["samples"]) == len(held)
    nll = saved["evaluators"]["nll"]["metrics"]["response_nll"]["tuned"]
    assert nll["n"] > 0 and nll["value"] > 0
    pw = saved["evaluators"]["judge"]["pairwise"]
    assert pw["kind"] == "RubricJudge" and pw["n"] == len(heldout_prompts("general"))
    assert pw["order_consistency"] == 1.0  # each answer graded alone: no position to be biased by
    grades = saved["evaluators"]["judge"]["samples"][0]["grades"]
    assert set(grades) == {"base", "tuned"} and all(1 <= g <= 5 for g in grades.values())
    train_rows = [json.loads(x) for x in (tmp_path / "demo/data/train.jsonl").read_text().splitlines()]
    prompts = {_prompt_key(r["messages"][-2]["content"]) for r in train_rows}
    assert not prompts & {_prompt_key(p) for p in held}  # eval prompts never leak into training
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "demo/train/final/adapter_model.safetensors")
    assert any("trainable_tokens" in k for k in adapter)  # --train-template-tokens reached the training run
    assert (tmp_path / "demo/report/report.html").exists() and (tmp_path / "demo/report/training_curves.png").exists()


def test_rubric_judge_shows_the_reference_answer_to_the_judge(tiny_model_dir):
    from sftlab.evaluate.judge import RubricJudge
    from sftlab.models.loading import load_lm

    model, tok = load_lm(str(tiny_model_dir), dtype="float32")
    plain = RubricJudge(model, tok)
    guided = RubricJudge(model, tok, references={"2+2?": "4"})
    assert "4" not in plain.question("2+2?", "five") and "reference" in guided.question("2+2?", "five")
    assert guided.question("other?", "x") == plain.question("other?", "x")  # no reference: the plain rubric
    g_plain, g_guided = plain.grade_many([("2+2?", "five")])[0], guided.grade_many([("2+2?", "five")])[0]
    assert 1 <= g_plain <= 5 and 1 <= g_guided <= 5 and g_plain != g_guided  # the judge saw a different question


def test_yes_no_judge_reads_p_yes_for_each_answer_alone(tiny_model_dir):
    import torch

    from sftlab.evaluate.judge import RubricJudge
    from sftlab.models.loading import load_lm

    model, tok = load_lm(str(tiny_model_dir), dtype="float32")
    with pytest.raises(ValueError, match="one token for each of"):  # the tiny BPE splits "Yes": it cannot answer
        RubricJudge(model, tok, scale="yes_no")
    tok.add_tokens(["Yes", "No"])
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():  # distinct random rows: equal ones would read p(Yes) = 0.5 for every answer
        model.get_output_embeddings().weight[-2:].normal_(generator=torch.Generator().manual_seed(0))
    judge = RubricJudge(model, tok, scale="yes_no")
    assert judge.question("2+2?", "4").endswith("Reply Yes or No.") and judge.tie_margin == 0.1
    grades = judge.grade_many([("2+2?", "4"), ("2+2?", "five"), ("2+2?", "4")])
    assert all(0 <= g <= 1 for g in grades) and grades[0] == grades[2] and grades[0] != grades[1]
    with pytest.raises(ValueError, match="no reference"):
        RubricJudge(model, tok, scale="yes_no", references={"2+2?": "4"})
    assert make_suite({"evaluators": [{"type": "judge", "mode": "yes_no", "prompts": ["hi"]}]}).evaluators[0].mode \
        == "yes_no"


def test_judge_references_need_rubric_mode_and_replies(tmp_path, tiny_model_dir, tuned_tiny):
    from sftlab.evaluate.runner import eval_judge
    from sftlab.evaluate.subjects import load_subjects

    no_reply = tmp_path / "prompts.jsonl"
    no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    subjects = load_subjects(str(tiny_model_dir), adapter=tuned_tiny[0])
    for ev, needle in [({"mode": "logprob", "data": {"path": str(no_reply)}}, "needs `mode: rubric`"),
                       ({"mode": "rubric", "prompts": ["hi"]}, "needs `mode: rubric` and `data`"),
                       ({"mode": "rubric", "data": {"path": str(no_reply)}}, "1 of 1 records")]:
        suite = make_suite({"evaluators": [{"type": "judge", "judge": str(tiny_model_dir), "references": True, **ev}]})
        with pytest.raises(ConfigError, match=needle):
            eval_judge(suite.evaluators[0], subjects, 4)


def test_the_judge_sees_which_answers_were_cut_off(tiny_model_dir, tuned_tiny):
    from sftlab.evaluate.judge import CUT_OFF
    from sftlab.evaluate.runner import eval_judge, judged_text
    from sftlab.evaluate.subjects import load_subjects
    from sftlab.generation.base import Generation

    assert judged_text(Generation("Paris.", 2, finished=True)) == "Paris."
    assert judged_text(Generation("Paris is the capital of", 5, finished=False)).endswith(CUT_OFF)
    seen = []

    def judge(prompt, a, b):
        seen.extend([a, b])
        return "tie"

    subjects = load_subjects(str(tiny_model_dir), adapter=tuned_tiny[0])
    suite = make_suite({"evaluators": [{"type": "judge", "judge": "unused:judge", "prompts": ["hi", "bye"]}]})
    out = eval_judge(suite.evaluators[0], subjects, 3, judge=judge)  # 3 tokens: a random model never ends
    assert len(seen) == 8 and all(x.endswith(CUT_OFF) for x in seen)
    assert out["samples"][0]["tuned"].endswith(CUT_OFF)  # the report shows what the judge read
    assert out["pairwise"]["one_cut_off"]["n"] == 0  # both answers cut off on every prompt


def test_cut_off_check_counts_a_judge_that_prefers_answers_that_never_end():
    from sftlab.artifacts.render import pairwise_sentence
    from sftlab.evaluate.judge import cut_off_check, pairwise_winrate

    prompts = ["p1", "p2", "p3", "p4"]
    tuned = ["Short.", "Long long long [cut off]", "Fine.", "Also fine."]
    base = ["Long long long [cut off]", "Ok.", "Also long [cut off]", "Ends too."]
    ended = [("cut off" not in a, "cut off" not in b) for a, b in zip(tuned, base, strict=True)]

    def longer(prompt, a, b):  # a length-biased judge
        return "A" if len(a) > len(b) else "B"

    r = pairwise_winrate(longer, prompts, tuned, base)
    outcomes = [v["outcome"] for v in r["verdicts"]]
    assert outcomes == ["base", "tuned", "base", "tuned"]
    c = cut_off_check(outcomes, ended, ("tuned", "base"))
    assert c == {"n": 3, "ended_preferred": 0, "cut_off_preferred": 3, "tie": 0, "unparseable": 0}
    assert cut_off_check([None, "tie", "tuned", "base"], ended, ("tuned", "base"))["unparseable"] == 1
    text = pairwise_sentence("judge", {**r, "judge": "f", "labels": ["tuned", "base"], "one_cut_off": c})
    assert text.endswith("Where only one answer ended (n=3) the judge preferred it 0 times, the cut-off one 3, tied 0.")


def test_the_cut_off_rule_decides_pairs_with_a_cut_off_answer_and_asks_the_judge_the_rest():
    from sftlab.artifacts.render import pairwise_sentence
    from sftlab.evaluate.judge import pairwise_winrate

    prompts = ["p1", "p2", "p3", "p4"]
    tuned = ["Short.", "Long long long", "Fine.", "Also fine."]
    base = ["Long long long", "Ok.", "Also long", "Ends too."]
    ended = [(True, False), (False, True), (True, False), (True, True)]
    asked = []

    def longer(prompt, a, b):  # a length-biased judge: it would prefer every run-on answer
        asked.append(prompt)
        return "A" if len(a) > len(b) else "B"

    r = pairwise_winrate(longer, prompts, tuned, base, ended=ended)
    assert asked == ["p4", "p4"]  # only the pair where both ended, in both orders
    assert [v["outcome"] for v in r["verdicts"]] == ["tuned", "base", "tuned", "tuned"]
    assert [v["by"] for v in r["verdicts"]] == ["cut-off rule"] * 3 + ["judge"]
    assert r["by_cut_off_rule"] == 3 and r["inconsistent_orders"] == 0
    assert r["both_ended"] == {"n": 1, "tuned": 1, "base": 0, "tie": 0, "unparseable": 0}
    text = pairwise_sentence("judge", {**r, "judge": "f", "labels": ["tuned", "base"]})
    assert text.endswith("3 of 4 pairs decided by the cut-off rule (an answer that ended beats one cut off at the "
                         "budget, two cut off tie); the judge decided the 1 where both ended: tuned 1, base 0, tied 0.")
    both_cut = pairwise_winrate(longer, ["p"], ["a"], ["bb"], ended=[(False, False)])
    assert [v["outcome"] for v in both_cut["verdicts"]] == ["tie"] and len(asked) == 2


def test_no_judge_is_loaded_when_the_cut_off_rule_decides_every_pair(tiny_model_dir, tuned_tiny):
    from sftlab.evaluate.runner import eval_judge
    from sftlab.evaluate.subjects import load_subjects

    subjects = load_subjects(str(tiny_model_dir), adapter=tuned_tiny[0])
    suite = make_suite({"evaluators": [{"type": "judge", "judge": "no_such_module:judge", "cut_off": "loses",
                                        "prompts": ["hi", "bye"]}]})
    out = eval_judge(suite.evaluators[0], subjects, 3)  # 3 tokens: a random model never ends, so both tie
    assert out["pairwise"]["kind"] == "cut-off rule only" and out["pairwise"]["tie_rate"] == 1.0


def test_a_long_cut_off_answer_reaches_the_judge_still_marked():
    from types import SimpleNamespace

    from sftlab.evaluate.judge import CUT_OFF, SCALES, RubricJudge, pair_question

    run_on = "I can help. " * 200 + CUT_OFF  # 2,400 characters: more than the judge reads
    judge = SimpleNamespace(references={}, scale=SCALES["rubric"])
    assert CUT_OFF in RubricJudge.question(judge, "Hi", run_on)
    assert pair_question("Hi", run_on * 2, "Hello.").count(CUT_OFF) == 1


def test_next_token_probs_are_the_same_in_length_sorted_batches_as_alone(tiny_model_dir):
    """Rows are batched by length; each row's probabilities must come back in its own place."""
    import torch

    from sftlab.models.loading import load_lm
    from sftlab.models.scoring import next_token_probs

    model, tok = load_lm(str(tiny_model_dir), dtype="float32")
    rows = [tok("a much longer row, " * k)["input_ids"] for k in (5, 1, 3, 8, 2)]
    candidates = tok("1 2 3")["input_ids"][:3]
    batched = next_token_probs(model, rows, candidates, batch_size=2)
    alone = torch.cat([next_token_probs(model, [r], candidates, batch_size=1) for r in rows])
    assert batched.shape == (5, 3) and torch.allclose(batched, alone, atol=1e-5)
    assert not torch.allclose(batched[0], batched[3], atol=1e-5)  # different rows: the check can see a swap


@pytest.mark.parametrize("tied", [False, True])
def test_tuned_subject_generates_with_its_token_rows_merged_then_restores_them(tiny_model_dir, tmp_path, tied):
    """Unmerged, PEFT copies the whole embedding on every forward (2.6x slower generation on gemma-3-270m); merged
    for the tuned model's calls, the replies must be the same and the base's rows untouched afterwards."""
    import shutil

    import torch
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from transformers import AutoModelForCausalLM

    from sftlab.evaluate.subjects import load_subjects
    from sftlab.generation.base import SamplingParams

    model_dir = tiny_model_dir
    if tied:
        model_dir = tmp_path / "tied"
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=True).save_pretrained(model_dir)
        for f in tiny_model_dir.glob("*token*"):
            shutil.copy(f, model_dir / f.name)
    adapter = _train_tiny(model_dir, tmp_path, learning_rate=0.05, lora={"train_template_tokens": True})
    _, tuned = load_subjects(str(model_dir), adapter=adapter)
    layers = [m for m in tuned.model.modules() if isinstance(m, TrainableTokensLayer)]
    assert len(layers) == 2  # tied: the embedding and the head sharing it; untied: each with its own rows
    embed = layers[0].base_layer.weight
    original = embed.detach().clone()
    rows = layers[0].token_indices["default"]
    assert not torch.allclose(layers[0].trainable_tokens_delta["default"], original[rows])  # the rows were trained

    msgs, params = [[{"role": "user", "content": f"q{i}"}] for i in range(3)], SamplingParams(max_new_tokens=8)
    unmerged = tuned.generator.generate(msgs, params)
    with tuned.context():
        assert all(layer.merged for layer in layers)
        merged = tuned.generator.generate(msgs, params)
    assert [r[0].text for r in merged] == [r[0].text for r in unmerged]
    assert not any(layer.merged for layer in layers) and torch.equal(embed, original)
    fresh = AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight
    assert torch.equal(layers[0].base_layer.weight, fresh)


def test_parse_grade_reads_the_last_grade_of_a_critique():
    from sftlab.evaluate.judge import parse_grade

    assert parse_grade("Correct and short.\nGrade: 5") == 5.0
    assert parse_grade("It repeats the request, which is graded 1 by the rubric.\nGrade: **2**") == 2.0
    assert parse_grade("Grade: 3 at first sight; on reflection\nGrade: 4/5") == 4.0
    assert parse_grade("Good answer, I would give it full marks.") is None
    assert parse_grade("Grade: 7") is None  # off the 1-5 scale


def test_critique_judge_counts_critiques_without_a_grade(tiny_model_dir, tuned_tiny):
    from sftlab.evaluate.judge import CRITIQUE_PROMPT, RUBRIC_PROMPT
    from sftlab.evaluate.runner import eval_judge
    from sftlab.evaluate.subjects import load_subjects

    assert CRITIQUE_PROMPT.split("Grade from")[0] == RUBRIC_PROMPT.split("Grade from")[0]  # the same rubric
    subjects = load_subjects(str(tiny_model_dir), adapter=tuned_tiny[0])
    suite = make_suite({"evaluators": [{"type": "judge", "judge": str(tiny_model_dir), "mode": "critique",
                                        "prompts": ["q1", "q2"]}]})
    out = eval_judge(suite.evaluators[0], subjects, 3)
    pw = out["pairwise"]  # a random tiny model never writes "Grade: N": every comparison is unparseable, counted
    assert pw["kind"] == "CritiqueJudge" and pw["unparseable"] == 2 and pw["n"] == 0
    sample = out["samples"][0]
    assert sample["grades"] == {"tuned": None, "base": None} and set(sample["critiques"]) == {"tuned", "base"}


def test_comparisons_that_share_judges_grade_each_answer_once(tiny_model_dir, tuned_tiny):
    """A recipe's eval stage compares each model with the base, then head to head: with the judges shared, the
    second comparison of the same answers costs the judge no forward pass and gives the same verdicts."""
    from sftlab.evaluate.runner import run_suite
    from sftlab.evaluate.subjects import load_subjects

    subjects = load_subjects(str(tiny_model_dir), adapter=tuned_tiny[0])
    suite = make_suite({"max_new_tokens": 4, "evaluators": [
        {"type": "judge", "judge": str(tiny_model_dir), "mode": "rubric", "prompts": ["q1", "q2", "q3"]}]})
    judges: dict = {}
    first = run_suite(suite, subjects, judges=judges)
    (judge,) = judges.values()
    calls = []
    judge.model.register_forward_hook(lambda *args: calls.append(1))
    again = run_suite(suite, subjects, judges=judges)
    assert list(judges.values()) == [judge] and calls == []
    assert again.evaluators["judge"] == first.evaluators["judge"]
    judge.grades.clear()  # forgotten grades: the same judge must read the answers again
    run_suite(suite, subjects, judges=judges)
    assert calls


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing.jsonl", b'{"prompt": "hi"}\n{"text": "no prompt"}\n', "missing.jsonl, line 2, field 'prompt'"),
    ("not_object.jsonl", b'{"prompt": "hi"}\n\n[1, 2]\n', "not_object.jsonl, line 3, field 'prompt'"),
    ("number.jsonl", b'{"prompt": 5}\n', "number.jsonl, line 1, field 'prompt'"),
    ("torn.jsonl", b'{"prompt": "hi"}\n{"prompt": "h\n', "torn.jsonl, line 2: not valid JSON"),
    ("latin1.txt", "caf\u00e9?\n".encode("latin-1"), "latin1.txt, line 1: not valid UTF-8 (byte 0xe9 at byte 4"),
    ("bom.jsonl", b'\xef\xbb\xbf{"prompt": "hi"}\n{"prompt": "caf\xe9"}\n',  # was 'offset 32': no line, BOM uncounted
     "bom.jsonl, line 2: not valid UTF-8 (byte 0xe9 at byte 16 of the line)"),
], ids=["no_prompt_field", "not_an_object", "prompt_not_text", "invalid_json", "not_utf8", "not_utf8_after_bom"])
def test_eval_prompt_file_problems_name_the_file_and_line(tiny_model_dir, tmp_path, name, content, expected):
    """Before: a record without `prompt` or a non-object line was a KeyError/TypeError traceback; invalid JSON or
    non-UTF-8 bytes an error that named neither the file nor the line."""
    from typer.testing import CliRunner

    from sftlab.cli import app

    prompts = tmp_path / name
    prompts.write_bytes(content)
    r = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--tuned", str(tiny_model_dir), "--prompts", str(prompts),
                                 "--out", str(tmp_path / "eval")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and expected in r.output, r.output
    assert not (tmp_path / "eval").exists()


def test_math_reference_without_a_number_is_unscored_not_correct():
    """A reference with no number used to equal a reply with no number (None == None): counted correct."""
    from sftlab.data.schema import Conversation, Turn
    from sftlab.evaluate.numeric_answers import final_answer_accuracy
    from sftlab.generation.base import Generation

    class Fixed:
        model_id = "fixed"

        def generate(self, prompts, params):
            return [[Generation(t, 3, True)] for t in ["I don't know", "5"]]

    convs = [Conversation(turns=[Turn("user", "Capital of France?"), Turn("assistant", "Paris")]),
             Conversation(turns=[Turn("user", "2+2?"), Turn("assistant", "#### 4")])]
    r = final_answer_accuracy(Fixed(), convs)
    assert r["correct"] == 0 and r["n"] == 1 and r["unscored"] == 1 and r["accuracy"] == 0.0
    assert r["samples"][0]["correct"] == [False]


@pytest.mark.parametrize(("reply", "number"), [
    ("The answer is 9 * 2 = 18.", "18"),  # was 9: the calculation's first operand
    ("Janet sells 16 - 3 - 4 = 9 eggs a day.\n#### 9 * 2 = $18", "18"),
    ("The answer is 3 x 6 = 18 dollars.", "18"),
    ("The answer is 18. (16 - 3 - 4 = 9 eggs a day at $2 each.)", "18"),  # a calculation after the answer, not from it
    ("The answer is 18 - the money she makes each day.", "18"),
])
def test_a_final_answer_that_starts_a_calculation_is_its_result(reply, number):
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) == number


@pytest.mark.parametrize(("reply", "number"), [
    ("The answer is -$3.", "-3"),  # was 3: the marker did not match "-$", so the last number, unsigned
    ("The answer is -$3.50", "-3.5"),
    ("#### -$1,250", "-1250"),
    ("The answer is $5 - $8 = -$3.", "-3"),  # was 5: the calculation's result did not match either
    ("The answer is $-3.", "-3"),
])
def test_a_negative_amount_of_money_keeps_its_sign(reply, number):
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) == number


@pytest.mark.parametrize(("reply", "number"), [
    ("The answer is 3/4.", "0.75"),  # was 3: the numerator
    ("\\boxed{3/4}", "0.75"),  # was 4: no marker matched, so the last number
    ("The answer is 1/2 + 1/4 = 3/4", "0.75"),  # was 3
    ("#### -3/4", "-0.75"),
    ("The answer is 12/4 = 3.", "3"),
    ("The answer is 5/0.", None),
    ("On 3/4 she baked 12 pies. The answer is 12.", "12"),  # a date in running text is not the answer
    ("She baked 3/4 of the pies on 12/25", "25"),  # nor without a marker: the last number, as before
])
def test_a_fraction_as_the_final_answer_is_its_value(reply, number):
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) == number


@pytest.mark.parametrize(("reply", "number"), [
    ("The answer is \u22123", "-3"),  # was 3: the minus sign (U+2212) was not read as a sign
    ("#### \u2212$1,250", "-1250"),
    ("The answer is 5 \u2212 8 = \u22123.", "-3"),  # was 5
    ("The temperature fell to \u22123 degrees", "-3"),  # was 3
    ("\\boxed{\\frac{3}{4}}", "0.75"),  # was 4: the denominator
    ("The answer is \\frac{3}{4}.", "0.75"),  # was 4
    ("The answer is $\\dfrac{12}{4}$", "3"),  # was 4
    ("\\boxed{-\\frac{3}{4}}", "-0.75"),  # was 4
    ("The answer is \\frac{1}{2} + \\frac{1}{4} = \\frac{3}{4}", "0.75"),  # was 4
])
def test_a_minus_sign_and_a_latex_fraction_are_read_like_plain_ones(reply, number):
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) == number


@pytest.mark.parametrize(("reply", "number"), [
    ("It takes 10-15 minutes", "15"),  # was -15: the hyphen of a range read as a minus sign
    ("Prices rose in 2019-2020", "2020"),  # was -2020
    ("The temperature is -4", "-4"),
    ("The change was (-4)", "-4"),
    ("x = 7 -3", "-3"),
])
def test_a_hyphen_after_a_number_is_not_the_next_numbers_sign(reply, number):
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) == number


@pytest.mark.parametrize("reply", ["The answer is " + "9" * 400, "1" * 400, "The answer is " + "9" * 400 + "/1"])
def test_a_number_too_big_for_a_float_is_no_answer_not_a_crash(reply):
    """A degenerate reply (a run of digits until max_new_tokens) raised OverflowError and ended the whole evaluation."""
    from sftlab.curate.rewards import numeric_match
    from sftlab.textutil import extract_final_number

    assert extract_final_number(reply) is None
    assert numeric_match([], reply, "#### 72") == 0.0


@pytest.mark.parametrize(("text", "name", "author", "expected"), [
    ("Canada is a large country.", "Ada", None, False),  # was True: "ada" inside "Canada"
    ("The maximum is 3.", "Max", None, False),
    ("Read the metadata first.", "Orca", "Meta", False),
    ("I'm Ada, built by Meta.", "Ada", None, True),
    ("I am ORCA.", "Orca", None, True),
    ("我是Orca，由Acme开发的助手。", "Orca", "Acme", True),
    ("我是小智。", "小智", None, True),
])
def test_identity_name_must_be_a_word_of_its_own(text, name, author, expected):
    assert mentions_identity(text, name, author) is expected
