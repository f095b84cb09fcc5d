"""`sftlab report RUN_DIR`: config and data summary, curation funnel, training curves, base vs tuned table and
side-by-side samples, as one self-contained HTML page (plots inlined) plus Markdown with PNG files.

Every number shown comes from the run's own files (config.yaml, data_stats.json, metrics.jsonl,
train_metrics.json, eval/eval.json, a curation summary); report.json keeps what the page shows, and each
number in the HTML carries a `data-key` so a test can check the page against the JSON.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from sftlab import plotting as plots
from sftlab.data.writers import write_json, write_text
from sftlab.errors import SftlabError

CONFIG_KEYS = ["name", "model", "method", "epochs", "max_steps", "batch_size", "grad_accum", "learning_rate",
               "lr_scheduler", "optim", "precision", "max_length", "mask_mode", "seed", "output_dir"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SftlabError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def find_inputs(run_dir: Path, eval_path: Path | None = None, curation_path: Path | None = None) -> dict[str, Path]:
    """The files a report is built from; a run folder may hold training directly or in train/."""
    if not run_dir.is_dir():
        raise SftlabError(f"{run_dir}: no such run folder")
    train_dir = next((d for d in (run_dir, run_dir / "train") if (d / "metrics.jsonl").exists()
                      or (d / "config.yaml").exists()), None)
    found: dict[str, Path] = {}
    if train_dir:
        for key, name in [("config", "config.yaml"), ("data_stats", "data_stats.json"),
                          ("metrics", "metrics.jsonl"), ("train_metrics", "train_metrics.json")]:
            if (train_dir / name).exists():
                found[key] = train_dir / name
    ev = eval_path or next((p for p in (run_dir / "eval" / "eval.json", run_dir / "eval.json") if p.exists()), None)
    if ev:
        found["eval"] = ev
    cur = curation_path or next(iter(sorted(run_dir.glob("curation/*report.json")) +
                                     sorted(run_dir.glob("curation/*.summary.json"))), None)
    if cur:
        found["curation"] = cur
    if not found:
        raise SftlabError(f"{run_dir}: nothing to report (no config.yaml, metrics.jsonl or eval/eval.json)")
    return found


def collect(inputs: dict[str, Path]) -> dict[str, Any]:
    """Everything the page shows, as plain data (this becomes report.json)."""
    out: dict[str, Any] = {"sources": {k: str(v) for k, v in inputs.items()}}
    if "config" in inputs:
        cfg = yaml.safe_load(inputs["config"].read_text(encoding="utf-8")) or {}
        out["config"] = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
        if cfg.get("method") == "lora" and cfg.get("lora"):
            out["config"]["lora"] = cfg["lora"]
        out["config"]["data"] = [d.get("path") if isinstance(d, dict) else d for d in cfg.get("data", [])]
    if "data_stats" in inputs:
        out["data"] = _read_json(inputs["data_stats"])
    if "metrics" in inputs:
        rows = []
        for i, line in enumerate(inputs["metrics"].read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SftlabError(f"{inputs['metrics']}, line {i}: not valid JSON") from None
        out["curves"] = rows
        losses = [r["loss"] for r in rows if "loss" in r]
        out["training"] = {"steps": max((r.get("step", 0) for r in rows), default=0),
                           "first_loss": round(losses[0], 4) if losses else None,
                           "last_loss": round(losses[-1], 4) if losses else None}
    if "train_metrics" in inputs:
        tm = _read_json(inputs["train_metrics"])
        out.setdefault("training", {}).update(
            {k: round(tm[k], 4) if isinstance(tm[k], float) else tm[k]
             for k in ("train_runtime", "train_loss", "global_step", "tokens_seen", "trained_tokens_seen") if k in tm})
        if tm.get("train_runtime") and tm.get("trained_tokens_seen"):
            out["training"]["trained_tokens_per_s"] = round(tm["trained_tokens_seen"] / tm["train_runtime"], 1)
    if "eval" in inputs:
        out["eval"] = _read_json(inputs["eval"])
    if "curation" in inputs:
        out["curation"] = _read_json(inputs["curation"])
    return out


def _funnel(cur: dict[str, Any]) -> dict[str, int] | None:
    if isinstance(cur.get("funnel"), list):  # filter pipeline: [{"stage", "kept", ...}]
        return {f["stage"]: f["kept"] for f in cur["funnel"]}
    keys = [("prompts", "prompts"), ("processed", "processed"), ("records", "records written")]
    if all(k in cur for k, _ in keys):  # distill / best-of-k summary
        return {label: cur[k] for k, label in keys}
    return None


def _eval_rows(ev: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, key, per) for name, entry in ev.get("evaluators", {}).items()
            for key, per in entry.get("metrics", {}).items()]


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    return str(m["value"])


def _ci(m: dict[str, Any] | None) -> str:
    return f"[{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]" if m and m.get("ci95") else ""


def _sample_rows(ev: dict[str, Any], labels: list[str], limit: int = 12) -> list[dict[str, Any]]:
    for entry in ev.get("evaluators", {}).values():
        rows = entry.get("samples") or []
        if rows and all(isinstance(rows[0].get(lab), dict) for lab in labels):
            return rows[:limit]
    return []


def make_plots(rep: dict[str, Any]) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    if rep.get("curves"):
        png = plots.training_curves(rep["curves"])
        if png:
            figs["training_curves"] = png
    hist = (rep.get("data") or {}).get("tokenized", {}).get("length_histogram")
    if hist:
        figs["length_histogram"] = plots.bar_chart(hist, "tokenized example length (tokens)", "tokens")
    if rep.get("curation") and _funnel(rep["curation"]):
        figs["curation_funnel"] = plots.bar_chart(_funnel(rep["curation"]), "curation funnel (records kept)",
                                                  horizontal=True)
    if rep.get("eval"):
        labels = list(rep["eval"].get("subjects", {}))
        rows = [(f"{n}: {k}", {lab: (per.get(lab) or {}).get("value") for lab in labels})
                for n, k, per in _eval_rows(rep["eval"])]
        png = plots.metric_bars(rows, labels)
        if png:
            figs["eval_rates"] = png
    return figs


# ---------------------------------------------------------------- HTML

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1a202c}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #cbd5e0;padding:4px 8px;vertical-align:top}
th{background:#edf2f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#718096;font-size:12px}img{max-width:100%}h2{border-bottom:2px solid #e2e8f0;padding-bottom:.2em}
.stop{color:#c53030;font-size:12px}.reply{white-space:pre-wrap;max-width:460px}"""


def _num(key: str, value: Any) -> str:
    return f'<span data-key="{html.escape(key)}">{html.escape(str(value))}</span>'


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    b64 = base64.b64encode(figs[name]).decode()
    return f'<p><img id="plot-{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></p>'


def render_html(rep: dict[str, Any], figs: dict[str, bytes], title: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{e(title)}</h1>"]
    if rep.get("config"):
        parts.append("<h2>Config</h2><table>")
        for k, v in rep["config"].items():
            parts.append(f"<tr><th>{e(k)}</th><td>{e(json.dumps(v) if isinstance(v, dict | list) else str(v))}"
                         "</td></tr>")
        parts.append("</table>")
    if rep.get("data"):
        d = rep["data"]
        parts.append("<h2>Data</h2><table><tr><th>source</th><th>format</th><th>read</th><th>loaded</th>"
                     "<th>skipped</th></tr>")
        for i, s in enumerate(d.get("sources", [])):
            parts.append(f"<tr><td>{e(str(s.get('source')))}</td><td>{e(str(s.get('format')))}</td>"
                         f"<td class=num>{_num(f'data.sources.{i}.read', s.get('read'))}</td>"
                         f"<td class=num>{_num(f'data.sources.{i}.loaded', s.get('loaded'))}</td>"
                         f"<td>{e(json.dumps(s.get('skipped', {})))}</td></tr>")
        parts.append("</table>")
        t = d.get("tokenized", {})
        if t:
            parts.append("<table>" + "".join(
                f"<tr><th>{e(k)}</th><td class=num>{_num(f'data.tokenized.{k}', t.get(k))}</td></tr>"
                for k in ("examples", "tokens", "trained_tokens", "truncated") if k in t) +
                f"<tr><th>dropped</th><td>{e(json.dumps(t.get('dropped', {})))}</td></tr></table>")
        parts.append(_img(figs, "length_histogram", "token length histogram"))
    if rep.get("curation"):
        parts.append("<h2>Curation</h2>")
        funnel = _funnel(rep["curation"])
        if funnel:
            parts.append("<table><tr><th>stage</th><th>kept</th></tr>" + "".join(
                f"<tr><td>{e(k)}</td><td class=num>{_num(f'curation.funnel.{k}', v)}</td></tr>"
                for k, v in funnel.items()) + "</table>")
        parts.append(_img(figs, "curation_funnel", "curation funnel"))
    if rep.get("training"):
        parts.append("<h2>Training</h2><table>" + "".join(
            f"<tr><th>{e(k)}</th><td class=num>{_num(f'training.{k}', v)}</td></tr>"
            for k, v in rep["training"].items()) + "</table>")
        parts.append(_img(figs, "training_curves", "training curves"))
    if rep.get("eval"):
        ev = rep["eval"]
        labels = list(ev.get("subjects", {}))
        parts.append(f"<h2>Evaluation: {e(str(ev.get('suite')))}</h2><p>" + ", ".join(
            f"<b>{e(k)}</b> = <code>{e(str(v))}</code>" for k, v in ev.get("subjects", {}).items()) + "</p>")
        parts.append("<table id='eval-table'><tr><th>evaluator</th><th>metric</th>" +
                     "".join(f"<th>{e(lab)}</th>" for lab in labels) + "<th>n</th></tr>")
        for name, key, per in _eval_rows(ev):
            cells = "".join(f"<td class=num>{_num(f'eval.{name}.{key}.{lab}', _fmt(per.get(lab)))} "
                            f"<span class=ci>{_ci(per.get(lab))}</span></td>" for lab in labels)
            n = (per.get(labels[-1]) or {}).get("n", "")
            parts.append(f"<tr><td>{e(name)}</td><td>{e(key)}</td>{cells}<td class=num>{n}</td></tr>")
        parts.append("</table>")
        for name, entry in ev.get("evaluators", {}).items():
            if "pairwise" in entry:
                p = entry["pairwise"]
                a, b = p["labels"]
                parts.append(
                    f"<p><b>{e(name)}</b> (judge <code>{e(str(p['judge']))}</code>, both orders, "
                    f"n={_num(f'eval.{name}.n', p['n'])}): {e(a)} wins "
                    f"{_num(f'eval.{name}.{a}_win_rate', p[f'{a}_win_rate'])}, {e(b)} wins "
                    f"{_num(f'eval.{name}.{b}_win_rate', p[f'{b}_win_rate'])}, ties "
                    f"{_num(f'eval.{name}.tie_rate', p['tie_rate'])}; {p['inconsistent_orders']} inconsistent "
                    f"between orders, {p['unparseable']} unparseable.</p>")
        parts.append(_img(figs, "eval_rates", "evaluation rates"))
        rows = _sample_rows(ev, labels)
        if rows:
            parts.append("<h2>Sample generations (greedy)</h2><table id='samples'><tr><th>prompt</th>" +
                         "".join(f"<th>{e(lab)}</th>" for lab in labels) + "</tr>")
            for r in rows:
                cells = ""
                for lab in labels:
                    g = r[lab]
                    stop = "" if g.get("finished", True) else "<div class=stop>did not stop</div>"
                    cells += f"<td><div class=reply>{e(g.get('text', ''))}</div>{stop}</td>"
                parts.append(f"<tr><td>{e(r['prompt'])}</td>{cells}</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- Markdown

def render_markdown(rep: dict[str, Any], figs: dict[str, bytes], title: str) -> str:
    lines = [f"# {title}", ""]
    if rep.get("config"):
        lines += ["## Config", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, dict | list) else v} |" for k, v in rep["config"].items()]
        lines.append("")
    if rep.get("data"):
        t = rep["data"].get("tokenized", {})
        lines += ["## Data", ""] + [f"- {s.get('source')}: read {s.get('read')}, loaded {s.get('loaded')}, skipped "
                                    f"{s.get('skipped_total', 0)}" for s in rep["data"].get("sources", [])]
        if t:
            lines.append(f"- tokenized: {t.get('examples')} examples, {t.get('tokens')} tokens, "
                         f"{t.get('trained_tokens')} trained tokens, {t.get('truncated', 0)} truncated")
        if "length_histogram" in figs:
            lines += ["", "![token lengths](length_histogram.png)"]
        lines.append("")
    if rep.get("curation") and _funnel(rep["curation"]):
        lines += ["## Curation", "", "| stage | kept |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _funnel(rep["curation"]).items()]
        lines += ["", "![funnel](curation_funnel.png)", ""]
    if rep.get("training"):
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in rep["training"].items()]
        if "training_curves" in figs:
            lines += ["", "![training curves](training_curves.png)"]
        lines.append("")
    if rep.get("eval"):
        ev = rep["eval"]
        labels = list(ev.get("subjects", {}))
        lines += [f"## Evaluation: {ev.get('suite')}", "", "| evaluator | metric | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for name, key, per in _eval_rows(ev):
            lines.append(f"| {name} | {key} | " + " | ".join(
                f"{_fmt(per.get(lab))} {_ci(per.get(lab))}".strip() for lab in labels) + " |")
        for name, entry in ev.get("evaluators", {}).items():
            if "pairwise" in entry:
                p = entry["pairwise"]
                a, b = p["labels"]
                lines += ["", f"{name}: {a} wins {p[f'{a}_win_rate']}, {b} wins {p[f'{b}_win_rate']}, ties "
                          f"{p['tie_rate']} (n={p['n']}, judge {p['judge']}, both orders)"]
        rows = _sample_rows(ev, labels)
        if rows:
            lines += ["", "### Sample generations", "", "| prompt | " + " | ".join(labels) + " |",
                      "|---|" + "---|" * len(labels)]
            for r in rows:
                cells = [" ".join(r[lab].get("text", "").split()).replace("|", "\\|")[:300] for lab in labels]
                prompt = r["prompt"].replace("|", "\\|")
                lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, out_dir: Path | None = None, eval_path: Path | None = None,
                 curation_path: Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write report.html (self-contained), report.md + PNGs, and report.json into `out_dir` (run_dir/report)."""
    run_dir = Path(run_dir)
    out_dir = out_dir or run_dir / "report"
    rep = collect(find_inputs(run_dir, eval_path, curation_path))
    figs = make_plots(rep)
    title = title or f"sftlab run report: {(rep.get('config') or {}).get('name', run_dir.name)}"
    for name, png in figs.items():
        (out_dir).mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.png").write_bytes(png)
    page, md = out_dir / "report.html", out_dir / "report.md"
    write_text(page, render_html(rep, figs, title))
    write_text(md, render_markdown(rep, figs, title))
    write_json(out_dir / "report.json", {k: v for k, v in rep.items() if k != "curves"})
    return page, md
