"""`sftlab run` (a recipe: curate, train, evaluate, report in one command) and `sftlab results` (RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.base import app, console, fail, quiet


def _print_recipes(folder: Path) -> None:
    from rich.table import Table

    from sftlab.recipe.results import list_recipes
    from sftlab.recipe.spec import load_recipe

    table = Table("recipe", "command", "what it measures")
    for path in list_recipes(folder):
        recipe = load_recipe(path)
        table.add_row(recipe.name, f"sftlab run {path}", recipe.description)
    console.print(table)


@app.command("run")
def run_cmd(recipe: Path = typer.Argument(None, help="Recipe YAML (see `sftlab run --list`)."),
            out: Path = typer.Option(None, help="Run folder; default runs/<recipe name> (runs/<name>-quick)."),
            from_stage: str = typer.Option(None, "--from", help="Run this stage and every later one again."),
            quick: bool = typer.Option(False, "--quick", help="Tiny random models, a few records: checks the "
                                                              "recipe end to end in seconds (numbers mean nothing)."),
            list_: bool = typer.Option(False, "--list", help="List the recipes in recipes/.")) -> None:
    """Run a use case end to end: prepare and curate data, train, evaluate base vs tuned, report. Finished stages
    whose config and inputs are unchanged are skipped; an interrupted stage resumes."""
    quiet()
    if list_ or recipe is None:
        _print_recipes(Path("recipes"))
        return
    from sftlab.recipe.runner import run_recipe

    try:
        run_recipe(recipe, out=out, from_stage=from_stage, quick=quick, console=console)
    except (RuntimeError, ValueError) as e:  # a model that fails to load, a bad user function: one line, exit 2
        fail(e)


@app.command("results")
def results_cmd(names: list[str] = typer.Argument(None, help="Recipes to run (default: all in recipes/)."),
                quick: bool = typer.Option(False, "--quick", help="Tiny models (a smoke test of every recipe)."),
                out: Path = typer.Option(None, help="Default RESULTS.md (runs/quick-results/RESULTS.md with "
                                                    "--quick)."),
                store: Path = typer.Option(None, help="Where each recipe's rows are kept; default results/ "
                                                      "(runs/quick-results/ with --quick).")) -> None:
    """Run recipes and write RESULTS.md: one row per trained model and headline metric, base vs tuned."""
    quiet()
    from sftlab.recipe.results import run_results

    folder = Path("runs/quick-results") if quick else Path("results")
    page = run_results(names or [], quick, out or (folder / "RESULTS.md" if quick else Path("RESULTS.md")),
                       store or folder, console)
    console.print(f"wrote {page}")
