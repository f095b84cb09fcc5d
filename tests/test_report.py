"""`sftlab report`: the page is built from the run's files, renders in a real headless Chromium, and shows the
same numbers as the JSON it came from."""

import base64
import io
import json
import os
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from sftlab.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    from sftlab.evaluate.runner import run_suite, write_result
    from sftlab.evaluate.subjects import load_subjects
    from sftlab.evaluate.suite import make_suite
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    root = tmp_path_factory.mktemp("report") / "run"
    data = root / "data.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"prompt": f"q{i} <b>&", "completion": f"answer {i}"}) + "\n"
                            for i in range(8)))
    result = train(make_config({"name": "tiny-report", "model": str(tiny_model_dir), "data": [str(data)],
                                "max_steps": 4, "batch_size": 2, "grad_accum": 1, "precision": "fp32",
                                "output_dir": str(root / "train")}), overwrite=True)
    subjects = load_subjects(str(tiny_model_dir), adapter=result.final_dir)
    suite = make_suite({"name": "tiny", "max_new_tokens": 5, "evaluators": [
        {"type": "nll", "data": {"path": str(data)}},
        {"type": "identity", "name": "Orca", "identity_prompts": ["Who are you?"], "general_prompts": ["q1 <b>&"]},
        {"type": "judge", "judge": str(tiny_model_dir), "prompts": ["q1"]}]})
    write_result(run_suite(suite, subjects), root / "eval")
    curation = root / "curation" / "pool.summary.json"
    curation.parent.mkdir()
    curation.write_text(json.dumps({"prompts": 10, "processed": 9, "records": 7}))
    return root


def test_report_command_writes_html_markdown_json(run_dir):
    r = CliRunner().invoke(app, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    out = run_dir / "report"
    rep = json.loads((out / "report.json").read_text())
    ev = json.loads((run_dir / "eval/eval.json").read_text())
    assert rep["eval"] == ev and rep["training"]["steps"] == 4 and rep["config"]["name"] == "tiny-report"
    assert rep["data"]["tokenized"]["examples"] == 8
    page = (out / "report.html").read_text()
    assert "q1 &lt;b&gt;&amp;" in page and "q1 <b>&" not in page  # data is escaped, never markup
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) >= 3  # curves, length histogram, funnel (+ eval rates): self-contained
    from PIL import Image

    for b64 in imgs:
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size[0] > 100
    md = (out / "report.md").read_text()
    assert "![training curves](training_curves.png)" in md and (out / "training_curves.png").exists()
    assert "| records written | 7 |" in md


def test_report_never_writes_into_a_folder_of_the_users(run_dir, tmp_path):
    mine = tmp_path / "slides"
    mine.mkdir()
    (mine / "report.html").write_text("my talk")
    r = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(mine)])
    assert r.exit_code == 2 and "did not write" in r.output, r.output  # was: report.html replaced, exit 0
    assert [p.name for p in mine.iterdir()] == ["report.html"] and (mine / "report.html").read_text() == "my talk"
    for _ in range(2):  # its own earlier report is replaced
        r = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "rep")])
        assert r.exit_code == 0, r.output


def test_report_errors_are_clear(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run folder" in r.output
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to report" in r.output


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("SFTLAB_REQUIRE_BROWSER"),
                    reason="chromium not installed (apt-get install chromium; CI installs it)")
def test_report_renders_in_headless_chromium_with_the_json_numbers(run_dir, tmp_path):
    from sftlab.report.build import write_report

    page, _ = write_report(run_dir, tmp_path / "rep")
    assert CHROMIUM, "SFTLAB_REQUIRE_BROWSER is set but no chromium was found"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    shown = dict(re.findall(r'<span data-key="([^"]+)">([^<]*)</span>', dom))
    ev = json.loads((run_dir / "eval/eval.json").read_text())
    checked = 0
    for name, entry in ev["evaluators"].items():
        for key, per in entry.get("metrics", {}).items():
            for label, m in per.items():
                assert shown[f"eval.{name}.{key}.{label}"] == str(m["value"])
                checked += 1
        if "pairwise" in entry:
            assert shown[f"eval.{name}.n"] == str(entry["pairwise"]["n"])
    rep = json.loads((tmp_path / "rep/report.json").read_text())
    assert shown["training.steps"] == str(rep["training"]["steps"]) and checked >= 6
    assert shown["data.tokenized.examples"] == "8"

    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, 2400) and hi - lo > 100  # a real page was painted, not a blank canvas


@pytest.mark.parametrize("text", [b"name: [\n", b"- a\n- b\n", b"\xff\xfename: x\n"],
                         ids=["invalid_yaml", "not_a_mapping", "not_utf8"])
def test_report_on_a_run_with_a_damaged_config_is_a_clear_error(tmp_path, text):
    (tmp_path / "config.yaml").write_bytes(text)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "config.yaml" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("given", ["--eval", "--curation", "data_stats.json", "train_metrics.json"])
def test_report_given_a_file_that_is_not_utf8_is_a_clear_error(tmp_path, given):
    """Was a UnicodeDecodeError traceback, exit 1: a Latin-1 file passed as --eval/--curation, or a damaged record;
    then 'not UTF-8 text (invalid byte at offset 15)', no line to go to."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    bad = tmp_path / ("latin.json" if given.startswith("--") else given)
    bad.write_bytes(b'{\n  "name": "caf\xe9"\n}\n')
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "rep"),
                                 *([given, str(bad)] if given.startswith("--") else [])])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{bad}, line 2: not valid UTF-8 (byte 0xe9 at byte 15 of the line)" in " ".join(r.output.split())


def test_report_on_a_metrics_log_with_a_step_that_is_not_a_number_is_a_clear_error(tmp_path):
    """Was a TypeError traceback ('>' not supported between 'str' and 'int'), exit 1: a hand-edited metrics.jsonl."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": "x", "loss": 1.0}\n')
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "metrics.jsonl, line 2, field 'step': expected a number" in r.output, r.output
