"""The filter report's plots: where records were dropped, how scores compare, which prompts were chosen."""

from __future__ import annotations

import numpy as np

from sftlab.curate.filter.diversity import project_2d


def filter_plots(records, selected, funnel, score_names, emb, chosen) -> dict[str, bytes]:
    """PNG bytes by name: the funnel, each score's histogram (selected vs not), the map of prompt embeddings."""
    from sftlab import plotting

    figs = {"funnel": plotting.bar_chart({s["stage"]: s["kept"] for s in funnel}, "records kept after each stage",
                                         horizontal=True)}
    sel_ids = {id(r) for r in selected}
    for name in score_names:
        series = {"selected": [r.scores[name] for r in records if id(r) in sel_ids and r.scores.get(name) is not None],
                  "not selected": [r.scores[name] for r in records
                                   if id(r) not in sel_ids and r.scores.get(name) is not None]}
        if any(series.values()):
            figs[f"score_{name}"] = plotting.histograms({k: v for k, v in series.items() if v}, f"{name} score")
    if emb is not None and len(emb) >= 3:
        xy = project_2d(emb)
        mask = np.zeros(len(emb), dtype=bool)
        mask[chosen] = True
        figs["prompt_map"] = plotting.scatter_map(xy.tolist(), mask.tolist(),
                                                  f"prompt embeddings (PCA): {int(mask.sum())} selected of "
                                                  f"{len(emb)} candidates")
    return figs
