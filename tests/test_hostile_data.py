"""Hostile and malformed data: every bad input is a DataError naming file, line/record and field, never a traceback.

The cases are listed with their expected outcome in tests/bad_inputs/data.md.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.errors import ConfigError, DataError

runner = CliRunner()

GOOD = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
GOOD_LINE = json.dumps(GOOD)


def _msgs(*assistant_extra: tuple[str, object], user: object = "Q") -> str:
    """A two-turn messages record whose assistant turn carries the given extra keys."""
    return json.dumps({"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": "A", **dict(assistant_extra)}]})


def _tool_call(arguments: object) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                             "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]})


def _sharegpt(gpt_turn: dict) -> str:
    return json.dumps({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A", **gpt_turn}]})


DEEP = "[" * 100_000 + "]" * 100_000

# (case id, line 2 of a JSONL file whose line 1 is a good record, expected field or None, expected message part)
BAD_LINES = [
    ("non-utf8", b'{"messages": "\xff\xfe oops"}', None, "not valid UTF-8"),
    ("nested-100k", DEEP, None, "nested too deep"),
    ("nested-object-100k", '{"a":' * 100_000 + "1" + "}" * 100_000, None, "nested too deep"),
    ("huge-integer", '{"messages": ' + "1" * 5000 + "}", None, "invalid JSON"),
    ("part-text-int", json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]},
                                               {"role": "assistant", "content": "A"}]}),
     "messages[0].content[0].text", "must be a string"),
    ("part-text-null", json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]},
                                                {"role": "assistant", "content": "A"}]}),
     "messages[0].content[0].text", "must be a string"),
    ("part-not-object", json.dumps({"messages": [{"role": "user", "content": ["hi", 5]},
                                                 {"role": "assistant", "content": "A"}]}),
     "messages[0].content[0]", "content part"),
    ("weight-heavy", _msgs(("weight", "heavy")), "messages[1].weight", "must be a number"),
    ("weight-bool", _msgs(("weight", True)), "messages[1].weight", "must be a number"),
    ("weight-nan", _msgs(("weight", float("nan"))), "messages[1].weight", "finite"),
    ("weight-inf", _msgs(("weight", float("inf"))), "messages[1].weight", "finite"),
    ("weight-minus-inf", _msgs(("weight", float("-inf"))), "messages[1].weight", "finite"),
    ("weight-int-beyond-float", _msgs(("weight", 10**400)), "messages[1].weight", "finite"),
    ("sharegpt-weight-heavy", _sharegpt({"weight": "heavy"}), "conversations[1].weight", "must be a number"),
    ("sharegpt-weight-nan", _sharegpt({"weight": float("nan")}), "conversations[1].weight", "finite"),
    ("sharegpt-value-object", _sharegpt({"value": {"text": "A"}}), "conversations[1].value", "must be a string"),
    ("args-json-list", _tool_call("[1, 2]"), "messages[1].tool_calls[0].arguments", "JSON object"),
    ("args-json-number", _tool_call("5"), "messages[1].tool_calls[0].arguments", "JSON object"),
    ("args-list", _tool_call([1, 2]), "messages[1].tool_calls[0].arguments", "JSON object"),
    ("tool-calls-int", _msgs(("tool_calls", 5)), "messages[1].tool_calls", "must be a list"),
    ("tool-name-object", json.dumps({"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": "r", "name": {"x": 1}}, {"role": "assistant", "content": "done"}]}),
     "messages[2].name", "must be a string"),
    ("conversations-deep-json-text", json.dumps({"conversations": DEEP}), "conversations", "nested too deep"),
    ("tools-deep-json-text", json.dumps({**GOOD, "tools": DEEP}), "tools", "nested too deep"),
    ("history-int", json.dumps({"instruction": "Q", "output": "A", "history": 5}), "history", "list"),
    ("history-non-text", json.dumps({"instruction": "Q", "output": "A", "history": [[{"a": 1}, None]]}),
     "history[0]", "strings"),
    ("alpaca-system-object", json.dumps({"instruction": "Q", "output": "A", "system": {"a": 1}}), "system",
     "must be a string"),
    ("prompt-list-completion-int", json.dumps({"prompt": [{"role": "user", "content": "Q"}], "completion": 5}),
     "completion", "list of messages"),
]


GOOD_BY_KEY = [("conversations", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
               ("instruction", {"instruction": "Q", "output": "A"}), ("prompt", {"prompt": "Q", "completion": "A"})]


def _good_like(line: str | bytes) -> str:
    """A valid record of the same format, so that format detection on line 1 picks the format of line 2."""
    text = line if isinstance(line, str) else ""
    return next((json.dumps(rec) for key, rec in GOOD_BY_KEY if f'"{key}"' in text[:20]), GOOD_LINE)


def _jsonl(tmp_path: Path, line: str | bytes) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(_good_like(line).encode() + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


@pytest.mark.parametrize(("line", "field", "message"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
def test_bad_line_is_a_data_error_naming_file_line_and_field(tmp_path, line, field, message):
    path = _jsonl(tmp_path, line)
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=str(path)))
    where = f"{path}, line 2" + (f", field '{field}'" if field else "")
    assert str(e.value).startswith(where + ": "), str(e.value)
    assert message in str(e.value)
    convs, report = load_conversations(DataSpec(path=str(path), on_error="skip"))  # skip: counted, reading goes on
    assert len(convs) == 1 and sum(report.skipped.values()) == 1 and report.read == 2


def test_non_utf8_line_is_skipped_and_reading_goes_on(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join([GOOD_LINE.encode(), '{"prompt": "caf\xe9"}'.encode("latin-1"), GOOD_LINE.encode()]))
    convs, report = load_conversations(DataSpec(path=str(path), on_error="skip"))
    assert len(convs) == 2 and report.skipped == {"not UTF-8": 1}
    assert report.examples[0].startswith(f"{path}, line 2: not valid UTF-8")


def test_utf8_byte_order_mark_is_read(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + GOOD_LINE.encode() + b"\n")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfinstruction,output\nQ,A\n")
    for name in ("bom.jsonl", "bom.csv"):
        convs, _ = load_conversations(str(tmp_path / name))
        assert [(t.role, t.content) for t in convs[0].turns] == [("user", "Q"), ("assistant", "A")]


@pytest.mark.parametrize(("content", "message", "record"), [
    (b'[{"instruction": "Q", "output": "A"},\n {"instruction": "caf\xe9", "output": "A"}]', "not valid UTF-8",
     "line 2"),
    (DEEP.encode(), "nested too deep", None),
    (b'[{"instruction": "Q", "output": ' + b"9" * 5000 + b"}]", "invalid JSON", None),
], ids=["non-utf8", "nested-100k", "huge-integer"])
def test_bad_json_file_is_a_data_error_naming_file(tmp_path, content, message, record):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    assert str(e.value).startswith(f"{path}, {record}: " if record else f"{path}: ") and message in str(e.value)


# ---------------------------------------------------------------- CSV

def _csv(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(("text", "record", "message"), [
    ("instruction,output\nQ,A\nQ2,A2,extra\nQ3,A3\n", "line 3", "3 fields, the header has 2"),
    ("instruction,output\nQ,A\nQ2\n", "line 3", "1 fields, the header has 2"),
    (b"instruction,output\nQ,A\ncaf\xe9,A\n", "line 3", "not valid UTF-8"),
], ids=["extra-field", "missing-field", "non-utf8"])
def test_bad_csv_row_is_a_data_error_and_skippable(tmp_path, text, record, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    assert str(e.value).startswith(f"{path}, {record}: ") and message in str(e.value)
    convs, report = load_conversations(DataSpec(path=str(path), on_error="skip"))
    assert sum(report.skipped.values()) == 1 and len(convs) == report.read - 1


@pytest.mark.parametrize(("text", "record", "message"), [
    ('instruction,output\nQ1,"A1\nQ2,A2\nQ3,A3\n', "line 2", "never closed"),
    ('instruction,output\nQ1,"A1"x\n', "line 2", "invalid CSV"),
    ("instruction,output,output\nQ,A,B\n", "line 1", "column 'output' twice"),
], ids=["unclosed-quote-swallows-rows", "text-after-closing-quote", "duplicate-column"])
def test_malformed_csv_stops_with_a_clear_error(tmp_path, text, record, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=str(path), on_error="skip"))
    assert str(e.value).startswith(f"{path}, {record}: ") and message in str(e.value)


def test_csv_field_over_128_kib_is_read(tmp_path):
    answer = "x" * (300 * 1024)
    convs, _ = load_conversations(str(_csv(tmp_path, f"instruction,output\nQ,{answer}\n")))
    assert convs[0].turns[1].content == answer


def test_csv_field_over_64_mib_is_a_clear_error(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "w") as f:
        f.write("instruction,output\nQ,")
        f.write("x" * (64 * 1024 * 1024 + 1))
        f.write("\n")
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    assert str(e.value).startswith(f"{path}, line 2: ") and "larger than 64 MiB" in str(e.value)


# ---------------------------------------------------------------- Parquet, HF folders

def test_file_that_is_not_parquet_names_the_file(tmp_path):
    import pandas as pd

    fake = tmp_path / "fake.parquet"
    fake.write_text("instruction,output\nQ,A\n")
    pd.DataFrame([{"instruction": "Q", "output": "A"}] * 50).to_parquet(tmp_path / "good.parquet")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes((tmp_path / "good.parquet").read_bytes()[:-100])
    for path in (fake, cut):
        with pytest.raises(DataError) as e:
            load_conversations(str(path))
        assert str(e.value).startswith(f"{path}: ") and "not a readable Parquet file" in str(e.value)


def test_corrupt_hf_dataset_folder_names_the_folder(tmp_path):
    folder = tmp_path / "hfds"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{ this is not json")
    with pytest.raises(DataError) as e:
        load_conversations(str(folder))
    assert str(e.value).startswith(f"{folder}: ") and "cannot load the dataset" in str(e.value)


# ---------------------------------------------------------------- SQL

@pytest.mark.parametrize(("url", "message"), [
    ("foo://user:secret@127.0.0.1/db", "unknown database dialect 'foo'"),
    ("postgresql+psycopg2://user:secret@127.0.0.1/db", "driver 'psycopg2' is not installed"),
    ("mysql+nosuchdriver://user:secret@127.0.0.1/db", "unknown database dialect 'mysql+nosuchdriver'"),
], ids=["unknown-dialect", "missing-driver", "unknown-driver"])
def test_unusable_database_url_is_a_data_error_without_the_password(url, message):
    pytest.importorskip("sqlalchemy")
    if "psycopg2" in url:
        try:
            import psycopg2  # noqa: F401
            pytest.skip("psycopg2 is installed here")
        except ImportError:
            pass
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=url, type="sql", query="select 1"))
    assert message in str(e.value) and "secret" not in str(e.value) and "user:***@127.0.0.1" in str(e.value)


def test_database_url_password_never_printed_by_the_cli():
    r = runner.invoke(app, ["data", "check", "foo://user:secret@127.0.0.1/db", "--query", "select 1"])
    assert r.exit_code == 2 and "unknown database dialect" in r.output and "secret" not in r.output, r.output


@pytest.mark.parametrize("where", ["no/such/folder/x.db", "new.db"])
def test_sqlite_url_to_no_file_is_an_error_and_creates_none(tmp_path, where):
    url = f"sqlite:///{tmp_path}/{where}"
    with pytest.raises(DataError, match="SQLite file not found"):
        load_conversations(DataSpec(path=url, type="sql", query="select 1"))
    assert list(tmp_path.iterdir()) == []  # was: an empty new.db


def _one_row_db(db, output_type: str, output_sql: str):
    """A SQLite file with a table t holding one ('q', output) row."""
    con = sqlite3.connect(db)
    con.execute(f"create table t (instruction text, output {output_type})")
    con.execute(f"insert into t values ('q', {output_sql})")
    con.commit()
    con.close()
    return db


@pytest.mark.parametrize("as_url", [False, True])
def test_a_query_cannot_change_the_users_sqlite_file(tmp_path, as_url):
    db = _one_row_db(tmp_path / "pool.sqlite", "text", "'a'")
    path = f"sqlite:///{db}" if as_url else str(db)
    with pytest.raises(DataError, match="readonly database"):  # was: the row deleted
        load_conversations(DataSpec(path=path, type="sql", query="delete from t returning instruction, output"))
    assert sqlite3.connect(db).execute("select count(*) from t").fetchone() == (1,)
    convs, _ = load_conversations(DataSpec(path=path, type="sql", query="select * from t"))
    assert [t.content for t in convs[0].turns] == ["q", "a"]


def test_sql_literal_with_colon_word_is_not_a_bind_parameter(tmp_path):
    db = tmp_path / "x.sqlite"
    sqlite3.connect(db).close()
    query = "select 'a :foo b' as instruction, 'time 10:30 is 100%' as output"
    convs, _ = load_conversations(DataSpec(path=str(db), type="sql", query=query))
    assert [t.content for t in convs[0].turns] == ["a :foo b", "time 10:30 is 100%"]


def test_bad_row_of_a_sqlite_file_names_the_file(tmp_path):
    db = _one_row_db(tmp_path / "pool.sqlite", "blob", "x'ff00'")
    with pytest.raises(DataError) as e:
        load_conversations(DataSpec(path=str(db), type="sql", query="select * from t"))
    assert str(e.value).startswith(f"{db}, row 0, field 'output': expected a string")  # was "<database url>, ..."


def test_sql_query_naming_a_column_twice_is_an_error(tmp_path):
    db = tmp_path / "pool.sqlite"
    sqlite3.connect(db).close()
    query = "select 'A' as output, 'q' as instruction, 'B' as output"
    with pytest.raises(DataError, match="the query returns column 'output' twice"):  # was: 'B' won, 'A' lost
        load_conversations(DataSpec(path=str(db), type="sql", query=query))


@pytest.mark.parametrize("command", ["check", "convert"])
def test_cli_database_url_without_a_query_says_how_to_pass_one(tmp_path, command):
    db = _one_row_db(tmp_path / "pool.db", "text", "'a'")
    out = [str(tmp_path / "out.jsonl")] if command == "convert" else []
    r = runner.invoke(app, ["data", command, f"sqlite:///{db}", *out])
    assert r.exit_code == 2 and "file not found" not in r.output, r.output  # was: 'file not found'
    assert f"sqlite:///{db}, field 'query': a SQL source needs a query: pass --query" in r.output, r.output
    r = runner.invoke(app, ["data", command, f"sqlite:///{db}", *out, "--query", "select * from t"])
    assert r.exit_code == 0, r.output  # convert: was 'No such option: --query'
    if out:
        assert [m["content"] for m in json.loads(Path(out[0]).read_text())["messages"]] == ["q", "a"]


def test_convert_never_writes_over_the_database_it_reads(tmp_path):
    db = _one_row_db(tmp_path / "pool.db", "text", "'a'")
    before = db.read_bytes()
    for url in (f"sqlite:///{db}", f"sqlite:///{db}?mode=ro"):
        r = runner.invoke(app, ["data", "convert", url, str(db), "--query", "select * from t", "--overwrite"])
        assert r.exit_code == 2 and "is the input" in r.output, r.output  # was: exit 0, the database replaced
    assert db.read_bytes() == before


# ---------------------------------------------------------------- empty sources

@pytest.mark.parametrize(("name", "content"), [
    ("empty.jsonl", ""), ("blank.jsonl", "\n\n   \n"), ("empty.json", "[]"), ("header.csv", "instruction,output\n"),
])
def test_empty_source_is_an_error_unless_allowed(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    assert str(e.value).startswith(f"{path}: no records") and "allow_empty" in str(e.value)
    convs, report = load_conversations(DataSpec(path=str(path), allow_empty=True))
    assert convs == [] and report.read == 0


def test_empty_sql_result_is_an_error_unless_allowed(tmp_path):
    db = tmp_path / "x.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table t (instruction text, output text)")
    con.commit()
    con.close()
    spec = {"path": str(db), "type": "sql", "query": "select * from t"}
    with pytest.raises(DataError, match="no records"):
        load_conversations(spec)
    assert load_conversations({**spec, "allow_empty": True})[0] == []


def test_folder_given_as_a_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        load_conversations({"path": str(tmp_path), "type": "jsonl"})
    assert str(e.value).startswith(f"{tmp_path}: cannot read the file")


def test_bad_spec_values_are_a_config_error_listing_valid_values():
    with pytest.raises(ConfigError, match="field 'on_error'.*'raise' or 'skip'"):
        load_conversations({"path": "x.jsonl", "on_error": "ignore"})


# ---------------------------------------------------------------- fuzz: every malformed record is a DataError

FUZZ = [
    {"messages": 5}, {"messages": None}, {"messages": "not json"}, {"messages": '{"role": "user"}'},
    {"messages": [5]}, {"messages": [None]}, {"messages": [{"role": ["user"], "content": "x"}]},
    {"messages": [{"role": None, "content": "x"}]}, {"messages": [{"role": "user", "content": {"a": 1}}]},
    {"messages": [{"role": "user", "content": 3.5}]}, {"messages": [{"role": "user", "content": [[1]]}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": [1]}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": {}}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": "x"}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": {"a": 1}}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [5]}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "",
                                                      "tool_calls": [{"name": 5}]}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "",
                                                      "tool_calls": [{"name": "f", "arguments": "{bad"}]}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "",
                                                      "tool_calls": [{"name": "f", "arguments": "true"}]}]},
    {**GOOD, "tools": 5}, {**GOOD, "tools": "[bad"}, {**GOOD, "tools": [1, 2]}, {**GOOD, "tools": '"text"'},
    {"conversations": 5}, {"conversations": "5"}, {"conversations": "[bad"}, {"conversations": [5]},
    {"conversations": [{"from": "human"}]}, {"conversations": [{"from": ["human"], "value": "Q"}]},
    {"conversations": [{"from": "human", "value": ["Q"]}, {"from": "gpt", "value": "A"}]},
    {"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": 5}]},
    {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A", "weight": None}],
     "system": ["S"]},
    {"instruction": None, "output": "A"}, {"instruction": "Q", "output": ["A"]}, {"instruction": "Q", "output": "A",
                                                                                   "input": 5},
    {"instruction": "Q", "output": "A", "history": "QA"}, {"instruction": "Q", "output": "A", "history": [["Q"]]},
    {"instruction": "Q", "output": "A", "history": {"Q": "A"}},
    {"prompt": 5, "completion": "A"}, {"prompt": "Q", "completion": None}, {"prompt": "Q", "completion": {"a": 1}},
    {"prompt": [{"role": "user", "content": "Q"}], "completion": "A"}, {"prompt": "Q", "completion": [5]},
    {"prompt": "Q", "completion": "A", "system": 5},
    {"question": ["Q"], "answer": "A"}, {"question": "Q", "answer": 42},
    {"unknown": "keys"}, {},
]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_fuzz_every_malformed_record_is_a_data_error(tmp_path, on_error):
    path = tmp_path / "fuzz.jsonl"
    failures = []
    for rec in FUZZ:
        path.write_text(json.dumps(rec) + "\n")
        try:
            convs, report = load_conversations(DataSpec(path=str(path), on_error=on_error))
        except DataError as e:
            if on_error == "skip" or not str(e).startswith(f"{path}, line 1"):
                failures.append((rec, f"DataError {e}"))
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test: nothing but DataError may escape
            failures.append((rec, f"{type(e).__name__}: {e}"))
            continue
        if on_error == "raise" or report.loaded != 0 or sum(report.skipped.values()) != 1:
            failures.append((rec, f"accepted: {[c.to_dict() for c in convs]}"))
    assert not failures, "\n".join(f"{json.dumps(r)[:80]} -> {why[:160]}" for r, why in failures)


# ---------------------------------------------------------------- CLI: data check / data convert / curate filter

def test_cli_data_check_non_utf8_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path, b'{"prompt": "caf\xe9"}')
    r = runner.invoke(app, ["data", "check", str(path), "--on-error", "raise"])
    assert r.exit_code == 2 and f"error: {path}, line 2: not valid UTF-8" in r.output, r.output
    r = runner.invoke(app, ["data", "check", str(path)])
    assert r.exit_code == 0 and '"not UTF-8": 1' in r.output, r.output


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--on-error", "ignore", "on_error"), ("--format", "yaml", "format"), ("--type", "xml", "type")])
def test_cli_data_check_bad_option_value_is_exit_2(tmp_path, option, value, field):
    path = _jsonl(tmp_path, GOOD_LINE)
    r = runner.invoke(app, ["data", "check", str(path), option, value])
    assert r.exit_code == 2 and r.output.startswith(f"error: data check: field '{field}': Input should be"), r.output


def test_cli_data_convert_empty_input_is_refused_unless_allowed(tmp_path):
    src, dst = tmp_path / "empty.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n")
    r = runner.invoke(app, ["data", "convert", str(src), str(dst)])
    assert r.exit_code == 2 and "no records" in r.output and "--allow-empty" in r.output, r.output
    assert not dst.exists()
    r = runner.invoke(app, ["data", "convert", str(src), str(dst), "--allow-empty"])
    assert r.exit_code == 0 and "wrote 0 conversations" in r.output and dst.read_text() == ""
    r = runner.invoke(app, ["data", "check", str(src)])
    assert r.exit_code == 2 and "no records" in r.output
    r = runner.invoke(app, ["data", "check", str(src), "--allow-empty"])
    assert r.exit_code == 0 and '"read": 0' in r.output


def test_cli_data_convert_all_skipped_is_refused(tmp_path):
    src, dst = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "q", "completion": ""}\n{"prompt": "q", "completion": " "}\n')
    r = runner.invoke(app, ["data", "convert", str(src), str(dst), "--on-error", "skip"])
    assert r.exit_code == 2 and "0 of 2 records are valid" in r.output and "empty assistant content" in r.output
    assert not dst.exists()


def test_cli_data_convert_never_overwrites_its_input_or_other_files(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "q", "completion": "a", "extra": "kept"}) + "\n")
    before = src.read_bytes()
    r = runner.invoke(app, ["data", "convert", str(src), str(src), "--overwrite"])
    assert r.exit_code == 2 and "is the input" in r.output and src.read_bytes() == before, r.output
    other = tmp_path / "notes.jsonl"
    other.write_text("my notes\n")
    r = runner.invoke(app, ["data", "convert", str(src), str(other)])
    assert r.exit_code == 2 and "already exists" in r.output and "--overwrite" in r.output
    assert other.read_text() == "my notes\n"
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in r.output
    r = runner.invoke(app, ["data", "convert", str(src), str(other), "--overwrite"])
    assert r.exit_code == 0 and json.loads(other.read_text())["messages"][1]["content"] == "a"


@pytest.fixture()
def tiny_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs), to fill up."""
    mnt = tmp_path / "tiny_disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_cli_data_convert_disk_full_is_clear_and_keeps_the_old_output(tmp_path, tiny_disk):
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"question {i}", "completion": "answer " * 20}) + "\n"
                           for i in range(2000)))
    dst = tiny_disk / "out.jsonl"
    dst.write_text(GOOD_LINE + "\n")
    r = runner.invoke(app, ["data", "convert", str(src), str(dst), "--overwrite"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "no space left" in r.output.lower() and str(dst) in r.output, r.output
    assert dst.read_text() == GOOD_LINE + "\n" and [p.name for p in tiny_disk.iterdir()] == ["out.jsonl"]


def test_cli_curate_filter_names_the_non_utf8_pool_file(tmp_path):
    pool = _jsonl(tmp_path, b'{"instruction": "caf\xe9", "output": "A"}')
    cfg = tmp_path / "filter.yaml"
    cfg.write_text(f"pool:\n  - path: {pool}\n    on_error: raise\noutput: {tmp_path / 'sel.jsonl'}\n"
                   "target_size: 1\nscorers: []\n")
    r = runner.invoke(app, ["curate", "filter", str(cfg)])
    assert r.exit_code == 2 and f"error: {pool}, line 2: not valid UTF-8" in r.output, r.output


def test_csv_written_by_python_with_every_awkward_character_round_trips(tmp_path):
    """The stricter CSV reader still reads what a correct writer produces: quotes, newlines, commas, CR."""
    rows = [{"instruction": 'say "hi",\nthen\r\nstop', "output": "a\rb, 'c'"}]
    with open(tmp_path / "ok.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "output"])
        w.writeheader()
        w.writerows(rows)
    convs, _ = load_conversations(str(tmp_path / "ok.csv"))
    assert [t.content for t in convs[0].turns] == [rows[0]["instruction"], rows[0]["output"]]
