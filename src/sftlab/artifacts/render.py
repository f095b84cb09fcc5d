"""One renderer of a suite result (eval.json) for every place that shows it: a rich terminal table (demo, `sftlab
eval`), Markdown (eval.md, report.md) and HTML (report.html). The pairwise "who won" sentence is written here only."""

from __future__ import annotations

import html
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from sftlab.artifacts.records import Metric, Pairwise, SuiteResult

Style = Literal["markdown", "html", "plain"]


def data_value(key: str, value: Any) -> str:
    """A number on the HTML page, tagged with the report.json key it comes from (a test reads them back)."""
    return f'<span data-key="{html.escape(key)}">{html.escape(str(value))}</span>'


def ci_text(m: Metric | None) -> str:
    return f"[{_two_places(m['ci95'][0])}, {_two_places(m['ci95'][1])}]" if m and m.get("ci95") else ""


def _two_places(x: float) -> str:
    """Half up, as written: f"{0.945:.2f}" is "0.94" (the float is 0.94499...), which a reader rounds to 0.95."""
    return str(Decimal(str(x)).quantize(Decimal("0.01"), ROUND_HALF_UP))


def value_text(m: Metric | None) -> str:
    return "-" if not m or m.get("value") is None else str(m["value"])


def metric_cell(m: Metric | None) -> str:
    """`value [lo, hi] (n=N)`: a Markdown table cell."""
    if not m or m.get("value") is None:
        return "-"
    ci = f" {ci_text(m)}" if m.get("ci95") else ""
    return f"{m['value']}{ci} (n={m['n']})"


def pairwise_sentence(name: str, p: Pairwise, style: Style = "markdown") -> str:
    """Who won a judged comparison of two models, in both orders, with ties and order-inconsistent verdicts."""
    a, b = p["labels"]
    if style == "html":
        esc, bold, code = html.escape, lambda t: f"<b>{html.escape(t)}</b>", lambda t: f"<code>{html.escape(t)}</code>"

        def num(key: str) -> str:
            return data_value(f"eval.{name}.{key}", p[key])
    else:
        esc = rich_escape if style == "plain" else str
        bold = (lambda t: f"[bold]{rich_escape(t)}[/]") if style == "plain" else (lambda t: f"**{t}**")
        code = (lambda t: rich_escape(t)) if style == "plain" else (lambda t: f"`{t}`")

        def num(key: str) -> str:
            return str(p[key])
    return (f"{bold(name)} (judge {code(str(p['judge']))}, both orders, n={num('n')}): {esc(a)} wins "
            f"{num(f'{a}_win_rate')}, {esc(b)} wins {num(f'{b}_win_rate')}, ties {num('tie_rate')}; "
            f"{esc(a)} score {p[f'{a}_score']} (ties count half), CI95 {p['ci95']}; "
            f"{p['inconsistent_orders']} order-inconsistent, {p['unparseable']} unparseable.{cut_off_text(p)}")


def cut_off_text(p: Pairwise) -> str:
    """How cut-off answers were judged: by the cut-off rule (and what the judge made of the rest), or the judge's
    choices where only one answer ended (the rubric grades a cut-off answer 1); empty when neither applies."""
    if "by_cut_off_rule" in p:
        a, b = p["labels"]
        e = p["both_ended"]
        rest = (f" the judge decided the {e['n']} where both ended: {a} {e[a]}, {b} {e[b]}, tied {e['tie']}"
                f"{_unparseable(e)}." if e["n"] else " no pair had two ended answers for the judge.")
        return (f" {p['by_cut_off_rule']} of {p['n'] + p['unparseable']} pairs decided by the cut-off rule (an answer"
                f" that ended beats one cut off at the budget, two cut off tie);{rest}")
    c = p.get("one_cut_off")
    if not c or not c["n"]:
        return ""
    return (f" Where only one answer ended (n={c['n']}) the judge preferred it {c['ended_preferred']} times, "
            f"the cut-off one {c['cut_off_preferred']}, tied {c['tie']}{_unparseable(c)}.")


def _unparseable(counts: dict[str, int]) -> str:
    return f", unparseable {counts['unparseable']}" if counts.get("unparseable") else ""  # the counts add up to n


def side_by_side_samples(res: SuiteResult, limit: int) -> list[dict[str, Any]]:
    """The first evaluator's samples that hold every model's generation (prompt, then one reply per model)."""
    labels = list(res.subjects)
    for entry in res.evaluators.values():
        rows = entry.get("samples") or []
        if rows and all(isinstance(rows[0].get(lab), dict) for lab in labels):
            return rows[:limit]
    return []


# ---------------------------------------------------------------- terminal

def suite_table(res: SuiteResult) -> Table:
    labels = list(res.subjects)
    table = Table(title=f"{' vs '.join(labels)}: {res.suite}")
    for column in ("evaluator", "metric", *labels):
        table.add_column(column)
    for name, key, per in res.metric_rows():
        table.add_row(name, key, *(str((per.get(lab) or {}).get("value", "-")) for lab in labels))
    return table


def print_suite(res: SuiteResult, console: Console, samples: int = 10) -> None:
    """The table, who won each judged comparison, and the first side-by-side samples."""
    console.print(suite_table(res))
    for name, p in res.pairwise():
        console.print(pairwise_sentence(name, p, "plain"), soft_wrap=True)
    for r in side_by_side_samples(res, samples):
        console.print(f"[bold]{rich_escape(r['prompt'])}[/]")
        for label in res.subjects:
            g = r[label]
            flag = "" if g.get("finished", True) else " [red](did not stop)[/]"
            console.print(f"  [cyan]{label}[/]{flag}: {rich_escape(repr(g['text'][:200]))}")


# ---------------------------------------------------------------- Markdown

def suite_markdown(res: SuiteResult, level: int = 1, samples: int = 12) -> str:
    """eval.md (level 1), or the evaluation section of a larger page (level 2)."""
    h = "#" * level
    labels = list(res.subjects)
    lines = [f"{h} Evaluation: {res.suite}", "", "Models: " + ", ".join(f"**{k}** = `{v}`"
                                                                         for k, v in res.subjects.items()), "",
             "| evaluator | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    lines += [f"| {name} | {key} | " + " | ".join(metric_cell(per.get(lab)) for lab in labels) + " |"
              for name, key, per in res.metric_rows()]
    for name, p in res.pairwise():
        lines += ["", pairwise_sentence(name, p)]
    for name, entry in res.evaluators.items():
        rows = entry.get("samples") or []
        if rows:
            lines += ["", f"{h}# {name}: samples", ""] + _markdown_samples(rows[:samples], labels)
    return "\n".join(lines)


def _markdown_samples(rows: list[dict[str, Any]], labels: list[str]) -> list[str]:
    lines = []
    for r in rows:
        kind = f"[{r['kind']}] " if "kind" in r else ""
        lines.append(f"**{kind}{one_line(r['prompt'], 200)}**\n")
        for lab in labels:
            g = r.get(lab)
            if isinstance(g, dict):
                end = "" if g.get("finished", True) else " (did not stop)"
                lines.append(f"- *{lab}*{end}: {one_line(g['text'], 400)}")
            elif isinstance(g, str):
                lines.append(f"- *{lab}*: {one_line(g, 400)}")
        if "outcome" in r:
            lines.append(f"- verdict: {r['outcome']}")
        lines.append("")
    return lines


def one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- HTML

def suite_html(res: SuiteResult, plot: str = "", samples: int = 12) -> str:
    """The evaluation section of the report page; every number carries its `data-key`. `plot`: an <img> to show
    after the table."""
    e = html.escape
    labels = list(res.subjects)
    parts = [f"<h2>Evaluation: {e(str(res.suite))}</h2><p>" + ", ".join(
        f"<b>{e(k)}</b> = <code>{e(str(v))}</code>" for k, v in res.subjects.items()) + "</p>",
        "<table id='eval-table'><tr><th>evaluator</th><th>metric</th>" +
        "".join(f"<th>{e(lab)}</th>" for lab in labels) + "<th>n</th></tr>"]
    for name, key, per in res.metric_rows():
        cells = "".join(f"<td class=num>{data_value(f'eval.{name}.{key}.{lab}', value_text(per.get(lab)))} "
                        f"<span class=ci>{ci_text(per.get(lab))}</span></td>" for lab in labels)
        n = (per.get(labels[-1]) or {}).get("n", "")
        parts.append(f"<tr><td>{e(name)}</td><td>{e(key)}</td>{cells}<td class=num>{n}</td></tr>")
    parts.append("</table>")
    parts += [f"<p>{pairwise_sentence(name, p, 'html')}</p>" for name, p in res.pairwise()]
    parts.append(plot)
    rows = side_by_side_samples(res, samples)
    if rows:
        parts.append("<h2>Sample generations (greedy)</h2><table id='samples'><tr><th>prompt</th>" +
                     "".join(f"<th>{e(lab)}</th>" for lab in labels) + "</tr>")
        parts += [f"<tr><td>{e(r['prompt'])}</td>{''.join(_html_reply(r[lab]) for lab in labels)}</tr>" for r in rows]
        parts.append("</table>")
    return "\n".join(parts)


def _html_reply(g: dict[str, Any]) -> str:
    stop = "" if g.get("finished", True) else "<div class=stop>did not stop</div>"
    return f"<td><div class=reply>{html.escape(g.get('text', ''))}</div>{stop}</td>"
