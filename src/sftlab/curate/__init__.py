"""Curation: make or pick the responses SFT imitates (distillation, best-of-k; filtering comes later)."""
