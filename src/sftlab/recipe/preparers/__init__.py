"""Data preparers a recipe's `prepare` stage calls by name: fn(out: Path, *, seed: int, quick: bool, **params) ->
dict of counts. Each writes its files (atomically) into `out`, the stage's own empty folder, and returns what it
made, for the run report. `quick` asks for a few records only (the tiny-model smoke run of every recipe)."""

PREPARERS: dict[str, str] = {
    # the shipped identity + teacher-distilled general data (what the demo trains on)
    "shipped_mix": "sftlab.recipe.preparers.shipped:shipped_mix",
    # reasoning: multi-step arithmetic word problems with known answers, train/held-out disjoint
    "arithmetic_word_problems": "sftlab.recipe.preparers.reasoning:arithmetic_word_problems",
    # reasoning: best-of-k output -> answers_only.jsonl (final answer alone) and think.jsonl (<think> then answer)
    "reasoning_variants": "sftlab.recipe.preparers.reasoning:reasoning_variants",
    # a fixed subset of GSM8K test problems, for evaluation only
    "gsm8k_subset": "sftlab.recipe.preparers.reasoning:gsm8k_subset",
    # tools: Glaive conversations split into train (tool descriptions removed) and held-out (kept for scoring)
    "toolcall_split": "sftlab.recipe.preparers.tools:toolcall_split",
    # distillation: n shipped 1.5B-teacher prompts (prompts.jsonl, no answers) and answers (teacher.jsonl)
    "shipped_prompts": "sftlab.recipe.preparers.pools:shipped_prompts",
    # quality vs quantity: a seeded random subset of any source (the "chosen at random" arm)
    "sample_records": "sftlab.recipe.preparers.pools:sample_records",
    # quality vs quantity: a pool with a known share of corrupted replies (pool.jsonl, labels.jsonl, heldout.jsonl)
    "corrupt_pool": "sftlab.recipe.preparers.pools:corrupt_pool",
    # quality vs quantity: how clean a filter's selection from corrupt_pool is, vs a random pick of the same size
    "pool_selection_quality": "sftlab.recipe.preparers.pools:pool_selection_quality",
    # quality vs quantity: the filter's quality scorers' ROC AUC on labelled (KTO) responses
    "scorer_auc": "sftlab.recipe.preparers.scorer_auc:scorer_auc",
}
