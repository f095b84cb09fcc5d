"""Commands over a whole run: the demo, training, evaluation and the run report."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.base import app, console, fail, quiet
from sftlab.errors import SftlabError


@app.command()
def demo(name: str = typer.Option("Orca", help="Identity name the model should learn."),
         author: str = typer.Option("the sftlab team", help="Who built the model, per its new identity."),
         model: str = typer.Option("gemma-3-270m", help="Student (base) model."),
         out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
         extra_data: list[str] = typer.Option([], "--extra-data", help="More training data (any source; "
                                              "{{name}}/{{author}} are filled in). Repeatable."),
         epochs: float = typer.Option(2.0),
         general_examples: int = typer.Option(None, help="Use the first N shipped general examples (diversity "
                                                         "rank order); default all."),
         method: str = typer.Option("lora", help="lora or full"), seed: int = typer.Option(0),
         judge: str = typer.Option("qwen2.5-coder-1.5b-instruct",
                                   help="Judge for the tuned-vs-base win-rates ('' skips)."),
         train_template_tokens: bool = typer.Option(False, help="LoRA also trains the embedding rows of the chat "
                                                    "template's turn markers (lora.train_template_tokens).")
         ) -> None:
    """Base model -> instruct model with a new identity: train, evaluate base vs tuned, write the run report."""
    quiet()
    from sftlab.demo import run_demo

    try:
        run_demo(name=name, author=author, model=model, out_dir=out, extra_data=extra_data, epochs=epochs,
                 general_examples=general_examples, method=method, judge=judge or None, seed=seed,
                 train_template_tokens=train_template_tokens, console=console)
    except SftlabError as e:
        fail(e)


@app.command("train")
def train_cmd(config: Path = typer.Argument(..., help="YAML config (see recipes/)."),
              resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier run in the run folder "
                                                                        "first (only a folder sftlab created)."),
              set_: list[str] = typer.Option([], "--set", help="Override a key: --set max_steps=10 --set lora.r=8")
              ) -> None:
    """SFT any causal LM (full or LoRA) on any dataset."""
    quiet()
    from sftlab.train.config import load_config
    from sftlab.train.distributed import end_processes
    from sftlab.train.run import train
    from sftlab.yamlconfig import parse_set_items

    try:
        cfg = load_config(config, parse_set_items(set_))
        train(cfg, resume=resume, overwrite=overwrite, console=console)
        end_processes()
    except SftlabError as e:
        fail(e)


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="Base model (packaged name, folder, .gguf, hub id)."),
             adapter: Path = typer.Option(None, help="LoRA adapter folder (tuned = base + adapter)."),
             tuned: str = typer.Option(None, help="Full tuned model folder (instead of --adapter)."),
             suite: Path = typer.Option(None, help="Evaluation suite YAML (see evals/). Without it: instruction "
                                                   "following on --prompts, plus the options below."),
             prompts: Path = typer.Option(None, help="File with one prompt per line, or JSONL with a prompt field."),
             reference: Path = typer.Option(None, help="Held-out SFT data for response NLL."),
             name: str = typer.Option(None, help="Identity name to check for."),
             author: str = typer.Option(None, help="Identity author to check for."),
             max_new_tokens: int = typer.Option(128),
             no_cache: bool = typer.Option(False, help="Do not reuse cached generations."),
             out: Path = typer.Option(Path("runs/eval"), help="Folder for eval.json/.md.")) -> None:
    """Base vs tuned, side by side on the same prompts and decoding: every evaluator of a suite."""
    quiet()
    from sftlab.artifacts.layout import EvalFiles
    from sftlab.artifacts.records import SuiteResult, check_record_folder
    from sftlab.artifacts.render import print_suite
    from sftlab.evaluate.runner import run_suite, write_result
    from sftlab.evaluate.subjects import load_subjects
    from sftlab.evaluate.suite import check_suite_files, load_suite, options_suite

    try:
        if (adapter is None) == (tuned is None):
            raise SftlabError("give exactly one of --adapter or --tuned")
        spec = load_suite(suite) if suite else options_suite(prompts, reference, name, author, max_new_tokens)
        check_suite_files(spec)
        check_record_folder(out, EvalFiles(out).json, SuiteResult, "sftlab eval", leftovers=("generations.sqlite",))
        subjects = load_subjects(model, adapter=adapter, tuned=tuned,
                                 cache_path=None if no_cache else out / "generations.sqlite")
        res = run_suite(spec, subjects, log=console.print)
        js, md = write_result(res, out)
        print_suite(res, console)
        console.print(f"wrote {md} and {js}")
    except (SftlabError, ValueError) as e:
        fail(e)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Run folder (training output, or a folder with train/ and eval/)."),
           out: Path = typer.Option(None, help="Output folder; default RUN_DIR/report."),
           eval_json: Path = typer.Option(None, "--eval", help="eval.json (default RUN_DIR/eval/eval.json)."),
           curation: Path = typer.Option(None, help="Curation report/summary JSON to include.")) -> None:
    """One self-contained HTML page (and Markdown) per run: data, curves, base vs tuned, samples."""
    from sftlab.report.build import write_report

    try:
        page, md = write_report(run_dir, out, eval_json, curation)
        console.print(f"wrote {page} and {md}")
    except SftlabError as e:
        fail(e)
