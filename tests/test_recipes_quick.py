"""Every shipped recipe runs end to end on tiny models (`sftlab results --quick`), so none can rot: each stage
runs, the result rows hold every headline metric, and RESULTS.md gets a row per recipe."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.recipe.report import cpu_model, machine
from sftlab.recipe.results import list_recipes
from sftlab.recipe.spec import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def test_every_recipe_is_valid_and_listed():
    recipes = list_recipes(ROOT / "recipes")
    names = {load_recipe(p).name for p in recipes}
    assert {"base-to-instruct", "identity", "reasoning", "tools", "distillation", "quality-vs-quantity",
            "filter-checks", "full-vs-lora"} <= names
    for path in recipes:
        assert load_recipe(path).result is not None, f"{path} declares no result for RESULTS.md"


@pytest.mark.skipif(not (SHARED / "data").exists(), reason="the recipes read ../shared/data (CI has it)")
def test_every_recipe_runs_quick_and_fills_results(tmp_path, monkeypatch, one_torch_thread):
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(ROOT / "recipes", work / "recipes")
    os.symlink(SHARED, tmp_path / "shared")  # recipes name ../shared/data relative to the repository
    monkeypatch.chdir(work)
    res = CliRunner().invoke(app, ["results", "--quick"])
    assert res.exit_code == 0, res.output
    page = (work / "runs/quick-results/RESULTS.md").read_text()
    assert "failed" not in page, page
    for path in list_recipes(work / "recipes"):
        spec = load_recipe(path)
        stored = json.loads((work / "runs/quick-results" / f"{spec.name}.json").read_text())
        assert stored["rows"] or stored["measures"], spec.name
        for row in stored["rows"]:
            missing = [m for m in row["metrics"] if "missing" in m]
            assert not missing, (spec.name, missing)
            assert f"| {spec.name} | {row['model']}: " in page
            assert row["machine"] == machine() and "cores, " in row["machine"]  # which CPU, and its precision
        assert set(stored["measures"]) == set(spec.result.measures)


def test_cpu_model_names_the_cpu_or_none(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: avx2\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(info) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\nflags\t\t: avx2\n")  # no model name (some ARM kernels)
    assert cpu_model(info) is None
    assert cpu_model(tmp_path / "absent") is None
