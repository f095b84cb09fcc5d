import pytest

from sftlab.data.formats import ADAPTERS, detect_format
from sftlab.errors import DataError

CASES = [
    ("messages", {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "A"}]},
     [("system", "S"), ("user", "Q"), ("assistant", "A")]),
    ("prompt_completion", {"prompt": "Q", "completion": "A"}, [("user", "Q"), ("assistant", "A")]),
    ("prompt_completion", {"prompt": [{"role": "user", "content": "Q"}],
                           "completion": [{"role": "assistant", "content": "A"}]}, [("user", "Q"), ("assistant", "A")]),
    ("alpaca", {"instruction": "Do", "input": "this", "output": "Done"},
     [("user", "Do\n\nthis"), ("assistant", "Done")]),
    ("alpaca", {"instruction": "Q2", "input": "", "output": "A2", "history": [["Q1", "A1"]], "system": "S"},
     [("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
     [("user", "Q"), ("assistant", "A")]),
    ("question_answer", {"question": "1+1?", "answer": "2"}, [("user", "1+1?"), ("assistant", "2")]),
    ("messages", {"system": "S", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
     [("system", "S"), ("user", "Q"), ("assistant", "A")]),  # the top-level system was dropped
]


@pytest.mark.parametrize(("fmt", "record", "expected"), CASES)
def test_adapters_and_detection(fmt, record, expected):
    assert detect_format(record) == fmt
    conv = ADAPTERS[fmt](record)
    assert [(t.role, t.content) for t in conv.turns] == expected


def test_sharegpt_function_call_and_observation():
    rec = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 degrees."}],
        "tools": '[{"name": "get_weather", "parameters": {"type": "object"}}]'}
    conv = ADAPTERS["sharegpt"](rec)
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]
    assert conv.turns[1].tool_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert conv.tools[0]["name"] == "get_weather"


def test_openai_tool_calls_with_string_arguments():
    rec = {"messages": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
                        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]}
    conv = ADAPTERS["messages"](rec)
    assert conv.turns[1].tool_calls == [{"name": "f", "arguments": {"x": 1}}]
    assert conv.turns[1].content == ""


@pytest.mark.parametrize(("fmt", "record", "field"), [
    ("alpaca", {"instruction": "x"}, "output"),
    ("alpaca", {"instruction": 3, "output": "y"}, "instruction"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from"),
    ("sharegpt", {"conversations": [{"from": "function_call", "value": "{not json"}]}, "conversations[0].value"),
    ("messages", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("messages", {"messages": "not json"}, "messages"),
])
def test_adapter_errors_name_the_field(fmt, record, field):
    with pytest.raises(DataError) as e:
        ADAPTERS[fmt](record)
    assert e.value.field == field


def test_sharegpt_parallel_function_calls():
    """LLaMA-Factory's ShareGPT writes parallel calls as one function_call turn holding a JSON list of calls; each
    call is kept (the list was refused as "function call needs a string 'name'")."""
    rec = {"conversations": [
        {"from": "human", "value": "Weather in Paris and Oslo?"},
        {"from": "function_call", "value": '[{"name": "w", "arguments": {"city": "Paris"}}, '
                                           '{"name": "w", "arguments": {"city": "Oslo"}}]'},
        {"from": "observation", "value": '[{"temp": 21}, {"temp": 3}]'},
        {"from": "gpt", "value": "21 and 3 degrees."}]}
    conv = ADAPTERS["sharegpt"](rec)
    assert conv.turns[1].tool_calls == [{"name": "w", "arguments": {"city": "Paris"}},
                                        {"name": "w", "arguments": {"city": "Oslo"}}]
    with pytest.raises(DataError) as e:
        ADAPTERS["sharegpt"]({"conversations": [{"from": "human", "value": "Q"},
                                                {"from": "function_call", "value": '[{"name": "w"}, {"x": 1}]'}]})
    assert e.value.field == "conversations[1].value[1]"


def test_alpaca_history_as_json_text(tmp_path):
    """A CSV or SQL cell holds Alpaca's `history` as JSON text, as it holds `messages`, `conversations` and `tools`
    (which were read); `history` was refused as "history must be a list ..., got str"."""
    import csv
    import json

    from sftlab.data.loading import load_conversations

    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["instruction", "input", "output", "history"], ["Q2", "", "A2", json.dumps([["Q1", "A1"]])],
                      ["Q3", "ctx", "A3", ""]])
    convs, _ = load_conversations(str(path))
    assert [(t.role, t.content) for t in convs[0].turns] == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"),
                                                            ("assistant", "A2")]
    assert [t.content for t in convs[1].turns] == ["Q3\n\nctx", "A3"]
    with pytest.raises(DataError) as e:
        ADAPTERS["alpaca"]({"instruction": "Q", "output": "A", "history": "[[1, "})
    assert e.value.field == "history"


def test_the_prompt_of_a_conversation_ending_with_a_user_or_tool_turn_is_all_of_it():
    """What every generator (curation, evaluation) is given: cutting before the last assistant turn of
    [user, assistant, user] lost the question to answer, and of [user, tool call, tool] the tool's result."""
    from sftlab.data.schema import Conversation, Turn

    call = Turn("assistant", "", tool_calls=[{"name": "f", "arguments": {}}])
    for turns, prompt in [
        ([Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")], 3),
        ([Turn("user", "a"), call, Turn("tool", "42")], 3),
        ([Turn("system", "s"), Turn("user", "a"), Turn("assistant", "b")], 2),
        ([Turn("user", "a")], 1),
    ]:
        assert Conversation(turns).prompt_turns == turns[:prompt]


def test_a_system_field_beside_a_system_message_is_an_error():
    record = {"system": "S1", "messages": [{"role": "system", "content": "S2"}, {"role": "user", "content": "Q"}]}
    with pytest.raises(DataError, match="both a `system` field and a system message") as e:
        ADAPTERS["messages"](record)
    assert e.value.field == "system"
