"""The terminal view of a suite result: one table of metrics per subject, then a few side-by-side samples."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sftlab.evaluate.runner import SuiteResult


def show_result(res: SuiteResult, console: Console, samples: int = 10) -> None:
    """Print the result where the command ran, so nobody has to open eval.md to see who won."""
    labels = list(res.subjects)
    table = Table(title=f"{' vs '.join(labels)}: {res.suite}")
    table.add_column("evaluator")
    table.add_column("metric")
    for label in labels:
        table.add_column(label)
    for name, entry in res.evaluators.items():
        for key, per in entry.get("metrics", {}).items():
            table.add_row(name, key, *(str((per.get(lab) or {}).get("value", "-")) for lab in labels))
        if "pairwise" in entry:
            p = entry["pairwise"]
            a, b = p["labels"]
            table.add_row(name, f"{a} vs {b}: wins / ties / losses", "",
                          f"{p[f'{a}_win_rate']} / {p['tie_rate']} / {p[f'{b}_win_rate']} (n={p['n']}, "
                          f"{p['inconsistent_orders']} order-inconsistent)")
    console.print(table)
    for entry in res.evaluators.values():
        rows = entry.get("samples") or []
        if not rows or not all(isinstance(rows[0].get(lab), dict) for lab in labels):
            continue
        for r in rows[:samples]:
            console.print(f"[bold]{r['prompt']}[/]")
            for label in labels:
                g = r[label]
                flag = "" if g.get("finished", True) else " [red](did not stop)[/]"
                console.print(f"  [cyan]{label}[/]{flag}: {g['text'][:200]!r}")
        break
