"""The run report as Markdown beside its PNG plots (report.md)."""

from __future__ import annotations

import json

from sftlab.artifacts.records import DataStats, Report
from sftlab.artifacts.render import suite_markdown


def _data_lines(data: DataStats, figs: dict[str, bytes]) -> list[str]:
    t = data.tokenized
    lines = ["## Data", ""] + [f"- {s.get('source')}: read {s.get('read')}, loaded {s.get('loaded')}, skipped "
                               f"{s.get('skipped_total', 0)}" for s in data.sources]
    if t:
        lines.append(f"- tokenized: {t.get('examples')} examples, {t.get('tokens')} tokens, "
                     f"{t.get('trained_tokens')} trained tokens, {t.get('truncated', 0)} truncated")
    if "length_histogram" in figs:
        lines += ["", "![token lengths](length_histogram.png)"]
    return lines + [""]


def render_markdown(rep: Report, figs: dict[str, bytes], title: str) -> str:
    lines = [f"# {title}", ""]
    if rep.config:
        lines += ["## Config", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, dict | list) else v} |" for k, v in rep.config.items()]
        lines.append("")
    if rep.data:
        lines += _data_lines(rep.data, figs)
    if rep.curation and rep.curation.funnel():
        lines += ["## Curation", "", "| stage | kept |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rep.curation.funnel().items()]
        lines += ["", "![funnel](curation_funnel.png)", ""]
    if rep.training:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in rep.training.items()]
        if "training_curves" in figs:
            lines += ["", "![training curves](training_curves.png)"]
        lines.append("")
    if rep.eval:
        lines += [suite_markdown(rep.eval, level=2)]
        if "eval_rates" in figs:
            lines += ["", "![evaluation rates](eval_rates.png)"]
        lines.append("")
    return "\n".join(lines)
