"""What a run leaves on disk, owned in one place: the folder layout (`layout`), the typed records in its JSON files
(`records`), and the one renderer of an evaluation result (`render`). A shared service below every stage: train,
curate and evaluate write through it; report, demo and the CLI read through it."""
