"""Recipes: one YAML declares the stages of a use case (prepare data, curate, train, evaluate, report); `sftlab run`
runs them into one run folder, skipping the stages whose config and inputs have not changed."""
