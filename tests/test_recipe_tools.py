"""Recipe 4, tools without descriptions: the Glaive split (train without schemas, held-out with them, disjoint) and
the tool_calls evaluator scoring every held-out first reply, a call or none, with and without the descriptions."""

import json
import time

import pytest

from sftlab.data.loading import load_conversations
from sftlab.data.schema import Conversation, Turn
from sftlab.errors import ConfigError, DataError
from sftlab.evaluate.toolcalls import expects_call, first_reply_index, score_no_call, score_tool_call, tool_cases
from sftlab.recipe.preparers.tools import toolcall_split, without_tool_descriptions
from sftlab.textutil import normalize

WEATHER = [{"name": "get_weather", "description": "Current weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount between currencies", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
        "required": ["amount", "to"]}}]


@pytest.fixture(scope="module")
def glaive(shared_data):
    path = shared_data / "glaive_toolcall_en_demo.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def split(glaive, tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    return out, toolcall_split(out, source=str(glaive), seed=0)


def _first_user(conv: Conversation) -> str:
    return normalize(next(t.content for t in conv.turns if t.role == "user"))


def _descriptions(convs: list[Conversation]) -> set[str]:
    return {t["description"] for c in convs for t in c.tools or [] if t.get("description")}


def test_split_counts_disjoint_by_first_message_and_seeded(glaive, split, tmp_path):
    out, counts = split
    train, held = (load_conversations(str(out / name))[0] for name in ("train.jsonl", "heldout.jsonl"))
    assert counts["train"] == len(train) > 150 and counts["heldout"] == len(held) == 60
    assert counts["heldout_call"] == sum(expects_call(c) for c in held) > 10
    assert counts["heldout_no_call"] == 60 - counts["heldout_call"] > 10
    assert counts["source_records"] == counts["train"] + counts["heldout"] + counts["heldout_duplicates_unused"]
    assert not {_first_user(c) for c in train} & {_first_user(c) for c in held}
    assert len({_first_user(c) for c in held}) == 60  # no held-out message asked twice
    assert all(c.tools is None for c in train) and sum(c.tools is not None for c in held) > 30
    source = {c.id: c for c in load_conversations(str(glaive))[0]}
    assert all(c.tools == (source[c.id].tools or None) for c in held)  # the evaluator validates against these
    trained = {call["name"] for c in train for t in c.turns for call in t.tool_calls or []}
    expected = [c.turns[first_reply_index(c)].tool_calls for c in held]
    assert all(e[0]["name"] in trained for e in expected if e)  # never a tool the model could not have learnt
    assert counts["heldout_calls_to_untrained_tools_skipped"] > 0  # Glaive has such calls: the split avoided them
    again = toolcall_split(tmp_path / "again", source=str(glaive), seed=0)
    assert again == counts and (tmp_path / "again" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    toolcall_split(tmp_path / "other", source=str(glaive), seed=1)
    assert (tmp_path / "other" / "heldout.jsonl").read_bytes() != (out / "heldout.jsonl").read_bytes()


def test_split_refuses_more_held_out_calls_than_trained_tools_allow(glaive, tmp_path):
    with pytest.raises(ConfigError, match="heldout=150 needs .* a tool that the training data also calls"):
        toolcall_split(tmp_path, source=str(glaive), heldout=150)


def test_rendered_training_text_has_no_tool_schema(glaive, split, tiny_tokenizer):
    from sftlab.templates import ensure_chat_template
    from sftlab.templates.masking import segment_conversation

    ensure_chat_template(tiny_tokenizer, "gemma")
    out, _ = split
    train = load_conversations(str(out / "train.jsonl"))[0]
    source = {c.id: c for c in load_conversations(str(glaive))[0]}
    with_tools = source[next(c.id for c in train if source[c.id].tools)]
    shown = "".join(t for t, _ in segment_conversation(tiny_tokenizer, with_tools))
    assert "You can call these tools" in shown and with_tools.tools[0]["description"] in shown  # what is removed
    descriptions = _descriptions(list(source.values()))
    for conv in train:
        text = "".join(t for t, _ in segment_conversation(tiny_tokenizer, conv))
        assert "You can call these tools" not in text and '"parameters"' not in text, conv.id
        assert not [d for d in descriptions if d in text], conv.id
    assert sum("<tool_call>" in "".join(t for t, trained in segment_conversation(tiny_tokenizer, c) if trained)
               for c in train) > 50  # the calls themselves are still trained


def test_a_system_turn_quoting_the_schemas_is_removed():
    system = "You have access to the following functions: " + json.dumps(WEATHER[0]["parameters"])
    conv = Conversation([Turn("system", system), Turn("user", "Weather in Oslo?"), Turn("assistant", "Sunny.")],
                        tools=WEATHER)
    kept = Conversation([Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hi.")], tools=WEATHER)
    assert [t.role for t in without_tool_descriptions(conv).turns] == ["user", "assistant"]
    hidden = without_tool_descriptions(kept)
    assert [t.role for t in hidden.turns] == ["system", "user", "assistant"] and hidden.tools is None
    assert hidden.meta["tools_hidden"] == ["convert_currency", "get_weather"] and kept.tools == WEATHER


def test_quick_split_is_a_handful_in_seconds(glaive, tmp_path):
    start = time.perf_counter()
    counts = toolcall_split(tmp_path, source=str(glaive), quick=True, heldout=60)
    assert time.perf_counter() - start < 10
    assert counts["train"] == 8 and counts["heldout"] == 4
    assert counts["heldout_call"] >= 1 and counts["heldout_no_call"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.jsonl", "train.jsonl"]


def test_bad_inputs_name_file_record_and_field(tmp_path, glaive):
    with pytest.raises(DataError, match="missing.json"):
        toolcall_split(tmp_path / "a", source=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {
        "from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {oops"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*line 1.*conversations\[1\]\.value"):
        toolcall_split(tmp_path / "b", source=str(bad))
    with pytest.raises(ConfigError, match="heldout=500 leaves no training data"):
        toolcall_split(tmp_path / "c", source=str(glaive), heldout=500)
    with pytest.raises(ConfigError, match="heldout must be"):
        toolcall_split(tmp_path / "d", source=str(glaive), heldout=0)
    assert not any((tmp_path / x).exists() for x in "abcd")  # nothing half-written


@pytest.mark.parametrize(("reply", "right", "valid", "same", "error"), [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', True, True, True, ""),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Bergen"}}</tool_call>', True, True, False, ""),
    ('<tool_call>{"name": "convert_currency", "arguments": {"amount": 3, "to": "EUR"}}</tool_call>', False, True,
     False, "called 'convert_currency'"),
    ('<tool_call>{"name": "convert_currency", "arguments": {"amount": "3"}}</tool_call>', False, False, False,
     "schema"),
    ('<tool_call>{"name": "book_flight", "arguments": {}}</tool_call>', False, False, False, "not one of the tools"),
    ('<tool_call>{"name": "get_weather", "arguments": {"town": "Oslo"}}</tool_call>', True, False, False, "schema"),
])
def test_arguments_checked_against_the_schema_of_the_function_called(reply, right, valid, same, error):
    s = score_tool_call(reply, {"name": "get_weather", "arguments": {"city": "Oslo"}}, WEATHER)
    assert (s["right_function"], s["args_valid"], s["same_arguments"]) == (right, valid, same)
    assert s["correct"] is (right and valid) and error in s["error"]


@pytest.mark.parametrize(("reply", "names", "parsed"), [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}, "arguments": {"c', True, False),  # cut off
    ('<tool_call>{"name": "get_weather", "arguments": {"city": 1000000000000000000000', True, False),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', True, True),
    ('<tool_call>{"name": "get_city_weather", "arguments": {"city": "Oslo"}}</tool_call>', False, True),
    ('I would call get_weather for Oslo.', False, False),  # a name in prose is not a call
])
def test_naming_the_function_is_scored_apart_from_a_parseable_call(reply, names, parsed):
    s = score_tool_call(reply, {"name": "get_weather", "arguments": {"city": "Oslo"}}, WEATHER)
    assert (s["names_function"], s["parsed"], s["right_function"]) == (names, parsed, names and parsed)


def test_no_call_cases_and_a_broken_schema():
    assert score_no_call("It is sunny in Oslo.") == {"parsed": False, "no_call": True, "error": ""}
    s = score_no_call('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert not s["no_call"] and "where no call was needed" in s["error"]
    broken = [{"name": "f", "parameters": {"type": "no-such-type"}}]
    s = score_tool_call('{"name": "f", "arguments": {}}', {"name": "f", "arguments": {}}, broken)
    assert not s["args_valid"] and "not valid JSON Schema" in s["error"]


def _cases_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "",
                      "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                        "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "{\"temp\": 3}"}, {"role": "assistant", "content": "3 degrees."}],
         "tools": WEATHER},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Convert some money."},
                      {"role": "assistant", "content": "How much, and into which currency?"}], "tools": WEATHER},
        {"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."}]}]))
    return path


def test_rendered_prompt_shows_descriptions_only_when_asked(tmp_path, tiny_model_dir):
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.loading import load_lm
    from sftlab.templates import ensure_chat_template

    model, tok = load_lm(str(tiny_model_dir))
    ensure_chat_template(tok, "gemma")
    gen = TransformersGenerator(model, tok)
    convs = load_conversations(str(_cases_file(tmp_path)))[0]
    shown, hidden = tool_cases(convs, tools_in_prompt=True), tool_cases(convs, tools_in_prompt=False)
    assert [c.kind for c in shown] == [c.kind for c in hidden] == ["call", "no_call", "no_call"]
    for with_tools, without in zip(shown[:2], hidden[:2], strict=True):
        seen = tok.decode(gen.encode(with_tools.messages))
        unseen = tok.decode(gen.encode(without.messages))
        assert "Current weather in a city" in seen and '"required"' in seen and "<tool_call>" in seen
        assert "Current weather" not in unseen and "convert_currency" not in unseen and '"required"' not in unseen
        assert unseen.rstrip().endswith("model") and without.prompt in unseen
    assert "Be brief." in tok.decode(gen.encode(hidden[1].messages))
    assert shown[2].messages == hidden[2].messages  # no tools: nothing to describe


def test_suite_with_and_without_descriptions(tmp_path, tiny_model_dir, one_torch_thread):
    from sftlab.evaluate.runner import Subject, run_suite, write_result
    from sftlab.evaluate.suite import make_suite
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.loading import load_lm
    from sftlab.templates import ensure_chat_template

    model, tok = load_lm(str(tiny_model_dir))
    ensure_chat_template(tok, "gemma")
    data = {"path": str(_cases_file(tmp_path))}
    suite = make_suite({"name": "tools", "max_new_tokens": 6, "evaluators": [
        {"type": "tool_calls", "label": "with_descriptions", "data": data},
        {"type": "tool_calls", "label": "without_descriptions", "data": data, "tools_in_prompt": False}]})
    subjects = [Subject(label, TransformersGenerator(model, tok)) for label in ("base", "tuned")]
    res = run_suite(suite, subjects)
    assert list(res.evaluators) == ["with_descriptions", "without_descriptions"]
    for name, ev in res.evaluators.items():
        for key, n in [("tool_call_correct", 1), ("right_function", 1), ("names_right_function", 1),
                       ("args_valid", 1), ("parseable_call", 1), ("same_arguments", 1),
                       ("no_call_when_none_needed", 2), ("stopped_at_end_of_turn", 3)]:
            for label in ("base", "tuned"):
                m = ev["metrics"][key][label]
                assert m["n"] == n and 0.0 <= m["value"] <= 1.0 and len(m["ci95"]) == 2, (name, key, m)
        assert [s["kind"] for s in ev["samples"]] == ["call", "no_call", "no_call"]
        assert ev["samples"][0]["base"]["expected"] == "get_weather" and ev["samples"][1]["base"]["expected"] is None
    _, md = write_result(res, tmp_path / "out")
    assert "| without_descriptions | no_call_when_none_needed |" in md.read_text()
