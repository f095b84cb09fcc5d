"""Every reader yields the same conversations from the same data."""

import csv
import json
import sqlite3

import pytest

from sftlab.data.loading import DataSpec, load_conversations
from sftlab.errors import DataError

ROWS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(5)]


def _expected():
    return [[("user", r["instruction"]), ("assistant", r["output"])] for r in ROWS]


def _turns(convs):
    return [[(t.role, t.content) for t in c.turns] for c in convs]


def test_jsonl_json_csv_parquet_hf_sql_agree(tmp_path):
    import datasets
    import pandas as pd

    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "hfds"))
    db = tmp_path / "pool.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table sft (instruction text, input text, output text, quality int)")
    con.executemany("insert into sft values (?, ?, ?, 1)", [tuple(r.values()) for r in ROWS])
    con.execute("insert into sft values ('bad', '', 'row', 0)")
    con.commit()
    con.close()

    specs = [DataSpec(path=str(tmp_path / n)) for n in ("d.jsonl", "d.json", "d.csv", "d.parquet", "hfds")]
    query = "select instruction, input, output from sft where quality = 1"
    specs.append(DataSpec(path=str(db), type="sql", query=query))
    specs.append(DataSpec(path=f"sqlite:///{db}", type="sql", query="select * from sft where quality = 1"))
    for spec in specs:
        convs, report = load_conversations(spec)
        assert _turns(convs) == _expected(), spec
        assert report.loaded == 5 and report.format == "alpaca"
        assert len({c.id for c in convs}) == 5


def test_a_split_the_saved_dataset_lacks_is_named(tmp_path):
    import datasets

    folder = tmp_path / "hfds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"no split 'test' \(it has \['train'\]\)"):  # was: KeyError 'test'
        load_conversations(DataSpec(path=str(folder), split="test"))
    convs, _ = load_conversations(DataSpec(path=str(folder), split="train"))
    assert _turns(convs) == _expected()


def test_messages_as_json_text_in_csv(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        w.writerow([json.dumps(msgs)])
    convs, _ = load_conversations(str(tmp_path / "m.csv"))
    assert _turns(convs) == [[("user", "Hi"), ("assistant", "Hello")]]


def test_sql_error_is_clear_and_hides_password(tmp_path):
    db = tmp_path / "x.sqlite"
    sqlite3.connect(db).close()
    with pytest.raises(DataError, match="SQL query failed"):
        load_conversations(DataSpec(path=str(db), type="sql", query="select * from missing_table"))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_conversations(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell the file type"):
        load_conversations(str(tmp_path / "d.txt"))


def test_real_shared_datasets_load(shared_data):
    for name, fmt, n in [("identity.json", "alpaca", 91), ("alpaca_en_demo.json", "alpaca", 999),
                         ("glaive_toolcall_en_demo.json", "sharegpt", 300), ("kto_en_demo.json", "messages", 300)]:
        convs, report = load_conversations(DataSpec(path=str(shared_data / name)))
        assert (report.format, report.loaded, sum(report.skipped.values())) == (fmt, n, 0)


def test_each_record_is_read_by_its_own_format(tmp_path):
    """The first record decided the whole file's format: after an empty first `conversations` record (read as
    ShareGPT) every role/content conversation was skipped, and one alpaca record made a messages record an error."""
    rows = [{"conversations": []},
            {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
            {"instruction": "Say bye.", "output": "Bye."},
            {"instruction": "Say hi.", "input": ""}]  # matches no format: read as the one before, so named
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs, report = load_conversations(DataSpec(path=str(path), on_error="skip"))
    assert [[t.content for t in c.turns] for c in convs] == [["Hi", "Hello."], ["Say bye.", "Bye."]]
    assert report.format == "messages+alpaca"
    assert report.examples[1].endswith("mixed.jsonl, line 4, field 'output': missing required field 'output' "
                                       "(expected a string)")
