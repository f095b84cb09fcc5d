"""Plots shared by run reports and curation reports, rendered headless with matplotlib (Agg) to PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

from sftlab.artifacts.records import LOWER_IS_BETTER

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def per_step_tokens_per_s(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Tokens/s over each logging interval, from the cumulative `tokens_seen` and `elapsed_s` of consecutive
    training-step rows (the logged `tokens_per_s` is the run's average so far). The first row after a start or a
    resume has no earlier row of its process: its own average is that interval's rate."""
    out, prev = [], None
    for r in rows:
        if "loss" not in r or "step" not in r or "tokens_seen" not in r or "elapsed_s" not in r:
            continue  # only the per-step logs: Trainer's end-of-training summary row repeats the last step
        dt = r["elapsed_s"] - prev["elapsed_s"] if prev else 0
        if prev and dt > 0 and r["tokens_seen"] >= prev["tokens_seen"]:
            out.append((r["step"], (r["tokens_seen"] - prev["tokens_seen"]) / dt))
        elif "tokens_per_s" in r:
            out.append((r["step"], r["tokens_per_s"]))
        prev = r
    return out


TRAINING_PANELS = [("loss", "training loss (lower is better)"), ("learning_rate", "learning rate"),
                   ("grad_norm", "grad norm"), ("tokens_per_s", "tokens/s per logging step (all tokens)")]


def training_curves(rows: list[dict[str, Any]]) -> bytes | None:
    """Loss, learning rate, grad norm and per-step tokens/s against the optimizer step (2 x 2)."""
    panels = [(k, t) for k, t in TRAINING_PANELS if any(k in r for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        pts = per_step_tokens_per_s(rows) if key == "tokens_per_s" else \
            [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.4, color="#2b6cb0")
        if key == "loss" and any("eval_loss" in r for r in rows):
            ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
            ax.plot([p[0] for p in ev], [p[1] for p in ev], "o-", color="#c05621", label="eval loss")
            ax.legend()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def bar_chart(counts: dict[str, float], title: str, xlabel: str = "", horizontal: bool = False) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2 if not horizontal else 0.45 * len(counts) + 1.2))
    labels, values = list(counts), list(counts.values())
    if horizontal:
        ax.barh(labels[::-1], values[::-1], color="#2b6cb0")
        for i, v in enumerate(values[::-1]):
            ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    else:
        ax.bar(labels, values, color="#2b6cb0")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def metric_bars(rows: list[tuple[str, str, dict[str, dict[str, Any]]]], labels: list[str]) -> bytes | None:
    """Grouped bars of every rate-like metric (0..1) for each model, with its Wilson 95% interval as an error bar
    where the metric has one; rows where a lower rate is better say so."""
    rows = [(name, key, per) for name, key, per in rows
            if all((per.get(lab) or {}).get("value") is not None and 0 <= per[lab]["value"] <= 1 for lab in labels)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) * len(labels) + 1.0))
    height = 0.8 / len(labels)
    colors = ["#a0aec0", "#2b6cb0", "#c05621", "#2f855a"]
    for j, lab in enumerate(labels):
        ys = [i + j * height for i in range(len(rows))]
        ms = [per[lab] for _, _, per in rows]
        err = [[m["value"] - m["ci95"][0] if m.get("ci95") else 0 for m in ms],
               [m["ci95"][1] - m["value"] if m.get("ci95") else 0 for m in ms]]
        ax.barh(ys, [m["value"] for m in ms], height=height, label=lab, color=colors[j % len(colors)], xerr=err,
                error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#1a202c"})
    names = [f"{name}: {key}" + (" (lower is better)" if key in LOWER_IS_BETTER else "") for name, key, _ in rows]
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate (error bars: Wilson 95% interval)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def scatter_map(xy, selected, title: str) -> bytes:
    """A 2-D map of points, the selected subset highlighted (curation coverage)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    sel = [bool(s) for s in selected]
    ax.scatter([p[0] for p, s in zip(xy, sel, strict=True) if not s], [p[1] for p, s in zip(xy, sel, strict=True)
                                                                       if not s],
               s=4, color="#cbd5e0", label="pool")
    ax.scatter([p[0] for p, s in zip(xy, sel, strict=True) if s], [p[1] for p, s in zip(xy, sel, strict=True) if s],
               s=9, color="#c05621", label="selected")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def histograms(series: dict[str, list[float]], title: str, bins: int = 30) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
