"""Curated and converted sets as JSONL, Parquet and HF dataset folders: each reads back through sftlab's own loader
to the same conversations; writes are atomic and never replace what sftlab did not write."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.data.loading import load_conversations, make_spec
from sftlab.data.schema import Conversation, Turn
from sftlab.data.set_writers import check_set_output, output_format, write_conversations
from sftlab.errors import ConfigError
from sftlab.fsutil import MARKER

runner = CliRunner()


def _conversations() -> list[Conversation]:
    """Every field the writers must carry: system prompt, weights, tool calls and schemas, tool names, Chinese."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}}}]
    return [
        Conversation([Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello.", weight=0.0),
                      Turn("user", "Again"), Turn("assistant", "Hello again.")], id="a", meta={"k": [1, {"x": None}]}),
        Conversation([Turn("user", "Weather in Oslo?"),
                      Turn("assistant", "", tool_calls=[{"name": "weather", "arguments": {"city": "Oslo", "n": 2}}]),
                      Turn("tool", "sunny", name="weather"), Turn("assistant", "Sunny.")], id="b", tools=tools),
        Conversation([Turn("user", "天空为什么是蓝色的？"), Turn("assistant", "因为瑞利散射。")], id="c"),
    ]


def _read_back(path) -> list[Conversation]:
    convs, report = load_conversations(make_spec(str(path)))
    assert not report.skipped, report.examples
    return convs


def _same(back: list[Conversation], want: list[Conversation]) -> None:
    assert [(c.id, c.turns, c.tools) for c in back] == [(c.id, c.turns, c.tools) for c in want]


@pytest.mark.parametrize(("name", "fmt"), [("set.jsonl", None), ("set.parquet", None), ("set", "hf"),
                                           ("set.parquet", "parquet")])
def test_round_trip_through_dataspec(tmp_path, name, fmt):
    want = _conversations()
    assert write_conversations(tmp_path / name, want, fmt) == 3
    _same(_read_back(tmp_path / name), want)


def test_parquet_is_a_plain_messages_table(tmp_path):
    """Other tools (pandas, datasets, TRL) see `messages` as a list of role/content structs; meta is JSON text."""
    write_conversations(tmp_path / "s.parquet", _conversations())
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert rows[2]["messages"][1]["role"] == "assistant" and rows[2]["messages"][1]["content"] == "因为瑞利散射。"
    assert json.loads(rows[0]["meta"]) == {"k": [1, {"x": None}]} and rows[2]["meta"] is None
    call = rows[1]["messages"][1]["tool_calls"][0]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"]) == {"city": "Oslo",
                                                                                                   "n": 2}
    write_conversations(tmp_path / "plain.parquet", _conversations()[2:])
    assert pq.read_schema(tmp_path / "plain.parquet").field("messages").type.value_type.names == ["role", "content"]


def test_hf_folder_is_marked_and_loads_with_datasets(tmp_path):
    import datasets

    write_conversations(tmp_path / "ds", _conversations(), "hf")
    assert json.loads((tmp_path / "ds" / MARKER).read_text())["kind"] == "dataset"
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds.num_rows == 3 and ds[0]["messages"][0] == {"role": "system", "content": "Be brief.", "weight": None,
                                                          "name": None, "tool_calls": None}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_failed_write_leaves_nothing(tmp_path):
    bad = [{"id": "x", "messages": [{"role": "user", "content": {"not": "text"}}]}]
    for name, fmt in (("s.parquet", None), ("ds", "hf")):
        with pytest.raises(Exception):  # noqa: B017 - whatever Arrow raises: what matters is what is left
            write_conversations(tmp_path / name, bad, fmt)
    assert list(tmp_path.iterdir()) == []


def test_output_rules(tmp_path):
    assert output_format("a.PARQUET") == "parquet" and output_format("a.jsonl") == "jsonl"
    assert output_format("folder", "hf") == "hf"
    with pytest.raises(ConfigError, match="expected auto, jsonl, parquet, hf"):
        output_format("a.jsonl", "csv")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        check_set_output(user, "hf")
    with pytest.raises(ConfigError, match="sftlab did not create it"):
        check_set_output(user, "hf", overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_set_output(tmp_path / "f", "hf")
    write_conversations(tmp_path / "ds", _conversations(), "hf")
    src = tmp_path / "ds" / "input.jsonl"
    src.write_text("")
    with pytest.raises(ConfigError, match="an input of this command"):
        check_set_output(tmp_path / "ds", "hf", inputs=[src], overwrite=True)
    src.unlink()
    check_set_output(tmp_path / "ds", "hf", overwrite=True)  # an earlier sftlab dataset may be replaced
    write_conversations(tmp_path / "ds", _conversations()[:1], "hf")
    _same(_read_back(tmp_path / "ds"), _conversations()[:1])


def test_data_convert_to_parquet_and_hf(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in _conversations()))
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "out.parquet")])
    assert r.exit_code == 0 and "wrote 3 conversations" in r.output, r.output
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "out"), "--out-format", "hf"])
    assert r.exit_code == 0, r.output
    for out in ("out.parquet", "out"):
        _same(_read_back(tmp_path / out), _conversations())
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "out"), "--out-format", "hf"])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path), "--out-format", "hf", "--overwrite"])
    assert r.exit_code == 2 and "refusing to remove" in r.output and src.exists()
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "x"), "--out-format", "csv"])
    assert r.exit_code == 2 and "output format 'csv'" in r.output


def test_curate_filter_writes_parquet_and_hf(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": f"Question number {i} about topic {i * 7}?",
                                        "completion": f"A complete answer about topic {i * 7}."}) + "\n"
                            for i in range(12)))
    base = ["curate", "filter", "--pool", str(pool), "--target-size", "5", "--diversity", "none"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "sel.parquet")])
    assert r.exit_code == 0, r.output
    parquet = _read_back(tmp_path / "sel.parquet")
    rows = pq.read_table(tmp_path / "sel.parquet").to_pylist()
    assert len(parquet) == 5 and [json.loads(r["meta"])["rank"] for r in rows] == [0, 1, 2, 3, 4]
    for _ in range(2):  # the second run replaces the folder its own report names, without --overwrite
        r = runner.invoke(app, [*base, "--out", str(tmp_path / "sel"), "--out-format", "hf"])
        assert r.exit_code == 0, r.output
    _same(_read_back(tmp_path / "sel"), parquet)
    assert json.loads((tmp_path / "sel.report/curation_report.json").read_text())["config"]["output_format"] == "hf"
