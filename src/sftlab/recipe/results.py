"""`sftlab results`: run recipes and write RESULTS.md, one row per trained model and headline metric, from the
result.json each run leaves; rows of recipes not rerun stay as last measured (kept in results/<recipe>.json)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.artifacts.records import LOWER_IS_BETTER
from sftlab.data.readers import first_line
from sftlab.data.writers import write_json, write_text
from sftlab.errors import ConfigError, DataError, SftlabError
from sftlab.recipe.report import metric_text
from sftlab.recipe.spec import is_recipe, load_recipe

HEADER = ["recipe", "model: method", "student <- teacher", "examples", "metric: base -> tuned (95% interval, n)",
          "training: time, peak memory", "stage time, summed (each stage's latest run; notes give full times)",
          "date, machine"]


TITLE = "# Results\n\nEvery row was produced by"  # how every page `sftlab results` writes begins


def check_results_page(out: Path) -> None:
    """The page is new or one `sftlab results` wrote: a file of the user's at that path is never replaced."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder, expected the path of the results page")
    if out.exists() and not out.read_text(encoding="utf-8", errors="replace").startswith(TITLE):
        raise ConfigError(f"{out} already exists and was not written by `sftlab results`; move it or choose "
                          "another --out")


def list_recipes(folder: Path = Path("recipes")) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if is_recipe(p))


def verdict(m: dict[str, Any]) -> str:
    """Did tuning move the metric the right way, and do the 95% intervals separate base from tuned?"""
    base, tuned = m.get("base") or {}, m.get("tuned") or {}
    if base.get("value") is None or tuned.get("value") is None:
        return ""
    key = m["name"].rpartition(".")[2]
    sign = -1 if key in LOWER_IS_BETTER else 1
    gain = sign * (tuned["value"] - base["value"])
    if gain == 0:
        return "no change"
    word = "better" if gain > 0 else "worse"
    if "ci95" in base and "ci95" in tuned:
        apart = tuned["ci95"][0] > base["ci95"][1] or base["ci95"][0] > tuned["ci95"][1]
        return f"{word} ({'intervals apart' if apart else 'intervals overlap'})"
    return word


def _cost(row: dict[str, Any]) -> str:
    if "train_s" not in row:
        return ""
    return f"{row['train_s'] / 60:.1f} min, {row['peak_memory_mb']:,} MB {row['memory_kind'].upper()}"


def _metric_line(m: dict[str, Any]) -> str:
    if "missing" in m:
        return f"{m['name']}: missing ({m['missing']})"
    if "pairwise" in m:
        return f"{m['name']}: {metric_text(m, 'tuned')}"
    return f"{m['name']}: {metric_text(m, 'base')} -> {metric_text(m, 'tuned')} {verdict(m)}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One row per trained model (or head-to-head pair); its headline metrics one per line in a cell."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        if "error" in r:
            error = " ".join(r["error"].split())[:200].replace("|", "/")  # one line: a table row
            lines.append(f"| {r['recipe']} | failed: {error} | | | | | | {r['date']} |")
            continue
        cells = [r["recipe"], f"{r['model']}: {r['method']}", f"{r['student']} <- {r['teacher']}",
                 r.get("examples") or "-", "<br>".join(_metric_line(m) for m in r["metrics"]), _cost(r),
                 f"{r['wall_s'] / 60:.1f} min", f"{r['date']}, {r['machine']}"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return lines


def read_stored(path: Path) -> dict[str, Any]:
    """One recipe's stored result; a JSON file in the store that `sftlab results` did not write is a DataError."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read it ({first_line(e)})", source=str(path)) from None
    ours = isinstance(stored, dict) and isinstance(stored.get("recipe"), str) and isinstance(stored.get("rows"), list)
    if not ours:
        raise DataError("not a recipe result stored by `sftlab results` (no 'recipe' and 'rows'); move it out of "
                        "the store folder", source=str(path))
    return stored


def _measured_when(stored: dict[str, Any]) -> str:
    """A measure's recipe time, date and machine (results stored before they were recorded have none)."""
    if "wall_s" not in stored:
        return ""
    return f" (its recipe: {stored['wall_s'] / 60:.1f} min of stage time, {stored['date']}, {stored['machine']})"


def render_results(store: Path) -> str:
    """RESULTS.md from every stored recipe result: the table, then the command that produced each recipe's rows."""
    stored = [read_stored(p) for p in sorted(store.glob("*.json"))]
    rows = [row for s in stored for row in s["rows"]]
    commands = sorted({(s["recipe"], s.get("command") or "") for s in stored})
    measures = [f"- {s['recipe']} / {stage}{_measured_when(s)}: `{json.dumps(made, ensure_ascii=False)}`"
                for s in stored for stage, made in (s.get("measures") or {}).items()]
    notes = store / "NOTES.md"
    return "\n".join(["# Results", "",
                      "Every row was produced by the command listed under it (`sftlab results` reruns them). Rates "
                      "carry their Wilson 95% interval and n. Base = the student before training.", "",
                      *table_lines(rows), "", *(["## Other measurements", "", *measures, ""] if measures else []),
                      "## Commands", "", *[f"- {name}: `{cmd}`" for name, cmd in commands],
                      "", notes.read_text(encoding="utf-8") if notes.exists() else ""])


def _store_run(name: str, result_json: Path | None, store: Path, error: str | None) -> None:
    """Keep a run's result; a failed rerun adds its error row under the rows last measured, which stay."""
    dest = store / f"{name}.json"
    store.mkdir(parents=True, exist_ok=True)
    if error is not None:
        last = read_stored(dest) if dest.exists() else {"recipe": name, "command": "", "rows": []}
        kept = [r for r in last["rows"] if "error" not in r]
        write_json(dest, {**last, "rows": [*kept, {"recipe": name, "error": error, "date": time.strftime("%Y-%m-%d")}]})
    elif result_json is not None:
        tmp = dest.with_suffix(".json.tmp")
        shutil.copyfile(result_json, tmp)
        tmp.replace(dest)


def run_results(names: list[str], quick: bool, out: Path, store: Path, console: Console,
                folder: Path = Path("recipes")) -> Path:
    """Run the chosen recipes (all by default), keep each result in `store`, write `out` from the whole store."""
    from sftlab.recipe.runner import run_recipe

    recipes = {path: load_recipe(path) for path in list_recipes(folder)}  # each read once
    chosen = [p for p, r in recipes.items() if not names or p.stem in names or r.name in names]
    missing = set(names) - {p.stem for p in chosen} - {recipes[p].name for p in chosen}
    if missing:
        raise SftlabError(f"no recipe named {', '.join(sorted(missing))} in {folder} "
                          f"(have {', '.join(p.stem for p in recipes)})")
    check_results_page(out)
    for path in store.glob("*.json"):  # before any recipe runs: a file of the user's is neither read nor replaced
        read_stored(path)
    chosen.sort(key=lambda p: len(recipes[p].requires))  # a recipe reading another's run goes after it
    for path in chosen:
        name = recipes[path].name
        try:
            run = run_recipe(path, quick=quick, console=console)
            _store_run(name, run.run_dir / "result.json", store, None)
        except (SftlabError, RuntimeError, ValueError) as e:  # one recipe failing does not stop the others
            console.print(f"[red]{name} failed[/]: {e}")
            _store_run(name, None, store, str(e))
    write_text(out, render_results(store))
    return out
