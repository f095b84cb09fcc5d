"""The run report as one self-contained HTML page: plots inlined, every number tagged with its report.json key."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from sftlab.artifacts.records import DataStats, Report
from sftlab.artifacts.render import data_value, suite_html

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1a202c}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #cbd5e0;padding:4px 8px;vertical-align:top}
th{background:#edf2f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#718096;font-size:12px}img{max-width:100%}h2{border-bottom:2px solid #e2e8f0;padding-bottom:.2em}
.stop{color:#c53030;font-size:12px}.reply{white-space:pre-wrap;max-width:460px}"""

e = html.escape


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    b64 = base64.b64encode(figs[name]).decode()
    return f'<p><img id="plot-{name}" alt="{e(alt)}" src="data:image/png;base64,{b64}"></p>'


def _key_value_table(rows: dict[str, Any], key_prefix: str | None = None) -> str:
    """<table> of key | value; with `key_prefix`, each value carries its data-key."""
    cells = "".join(
        f"<tr><th>{e(k)}</th><td class=num>{data_value(f'{key_prefix}.{k}', v)}</td></tr>" if key_prefix else
        f"<tr><th>{e(k)}</th><td>{e(json.dumps(v) if isinstance(v, dict | list) else str(v))}</td></tr>"
        for k, v in rows.items())
    return f"<table>{cells}</table>"


def _data_section(d: DataStats, figs: dict[str, bytes]) -> str:
    parts = ["<h2>Data</h2><table><tr><th>source</th><th>format</th><th>read</th><th>loaded</th><th>skipped</th></tr>"]
    for i, s in enumerate(d.sources):
        parts.append(f"<tr><td>{e(str(s.get('source')))}</td><td>{e(str(s.get('format')))}</td>"
                     f"<td class=num>{data_value(f'data.sources.{i}.read', s.get('read'))}</td>"
                     f"<td class=num>{data_value(f'data.sources.{i}.loaded', s.get('loaded'))}</td>"
                     f"<td>{e(json.dumps(s.get('skipped', {})))}</td></tr>")
    parts.append("</table>")
    t = d.tokenized
    if t:
        counts = _key_value_table({k: t.get(k) for k in ("examples", "tokens", "trained_tokens", "truncated")
                                   if k in t}, "data.tokenized")
        parts.append(counts.replace("</table>", f"<tr><th>dropped</th><td>{e(json.dumps(t.get('dropped', {})))}"
                                                "</td></tr></table>"))
    parts.append(_img(figs, "length_histogram", "token length histogram"))
    return "".join(parts)


def _curation_section(rep: Report, figs: dict[str, bytes]) -> str:
    funnel = rep.curation.funnel() if rep.curation else {}
    table = "<table><tr><th>stage</th><th>kept</th></tr>" + "".join(
        f"<tr><td>{e(k)}</td><td class=num>{data_value(f'curation.funnel.{k}', v)}</td></tr>"
        for k, v in funnel.items()) + "</table>" if funnel else ""
    return "<h2>Curation</h2>" + table + _img(figs, "curation_funnel", "curation funnel")


def render_html(rep: Report, figs: dict[str, bytes], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{e(title)}</h1>"]
    if rep.config:
        parts.append("<h2>Config</h2>" + _key_value_table(rep.config))
    if rep.data:
        parts.append(_data_section(rep.data, figs))
    if rep.curation:
        parts.append(_curation_section(rep, figs))
    if rep.training:
        parts.append("<h2>Training</h2>" + _key_value_table(rep.training, "training") +
                     _img(figs, "training_curves", "training curves"))
    if rep.eval:
        parts.append(suite_html(rep.eval, plot=_img(figs, "eval_rates", "evaluation rates")))
    parts.append("</body></html>")
    return "\n".join(parts)
