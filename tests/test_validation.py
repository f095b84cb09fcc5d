"""Every validation error path: message names file, line/record and field; skip counts by reason."""

import json

import pytest

from sftlab.data.loading import DataSpec, load_conversations
from sftlab.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
BAD = [
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
     "turn 1 (assistant)", "assistant turn has empty content", "empty assistant content"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"},
                   {"role": "assistant", "content": "A"}]},
     "turn 1 (user)", "roles must alternate user/assistant after an optional system turn", "roles out of order"),
    ({"messages": [{"role": "assistant", "content": "A"}]}, "turn 0 (assistant)", "roles must alternate",
     "roles out of order"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "system", "content": "S"}]}, "turn 2 (system)", "system turn may only come first",
     "roles out of order"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages", "no assistant turn", "no assistant turn"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "user", "content": "Q2"}]}, "turn 2 (user)", "must end with an assistant turn",
     "does not end with assistant"),
    ({"messages": [{"role": "narrator", "content": "Q"}]}, "turn 0 (narrator)", "unknown role", "unknown role"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]}, "turn 0 (user)",
     "user turn has empty content", "empty user content"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "tool", "content": "r"}, {"role": "assistant", "content": "B"}]},
     "turn 2 (tool)", "roles must alternate", "roles out of order"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": -1}]},
     "turn 1 (assistant)", "weight must be >= 0", "invalid weight"),
    ({"messages": []}, "messages", "no turns", "empty conversation"),
]


@pytest.mark.parametrize(("record", "field", "message", "reason"), BAD)
def test_each_error_names_line_and_field(tmp_path, record, field, message, reason):
    lines = [json.dumps(GOOD)] * 16 + [json.dumps(record)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=str(path)))
    text = str(e.value)
    assert text.startswith(f"{path}, line 17, field '{field}': ")
    assert message in text
    assert e.value.reason == reason


def test_invalid_json_line_and_skip_policy_counts_every_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [json.dumps(GOOD), "{not json", json.dumps(BAD[0][0]), json.dumps(BAD[0][0]), json.dumps(BAD[1][0]),
            "[1, 2]", json.dumps({"foo": 1}), json.dumps(GOOD)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 2: invalid JSON"):
        load_conversations(DataSpec(path=str(path)))
    convs, report = load_conversations(DataSpec(path=str(path), on_error="skip"))
    assert len(convs) == 2 and report.read == 8
    assert dict(report.skipped) == {"invalid JSON": 1, "empty assistant content": 2, "roles out of order": 1,
                                    "wrong type": 1, "missing field": 1}
    assert any("line 3, field 'turn 1 (assistant)'" in m for m in report.examples)


def test_undetectable_format_is_explained(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"foo": "bar"}]))
    with pytest.raises(DataError, match=r"record 0: cannot detect the record format from keys \['foo'\]"):
        load_conversations(str(path))


def test_record_index_for_json_and_missing_alpaca_field(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"},
                                {"instruction": "e", "input": ""}]))
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=str(path), format="alpaca"))
    assert str(e.value) == f"{path}, record 2, field 'output': missing required field 'output' (expected a string)"


def test_substitutions_and_system_prompt(tmp_path):
    path = tmp_path / "id.jsonl"
    path.write_text(json.dumps({"instruction": "who?", "output": "I am {{name}} by {{author}}."}) + "\n")
    convs, _ = load_conversations(DataSpec(path=str(path), substitutions={"name": "Orca", "author": "Acme"},
                                           system_prompt="Be brief."))
    assert [(t.role, t.content) for t in convs[0].turns] == [
        ("system", "Be brief."), ("user", "who?"), ("assistant", "I am Orca by Acme.")]
