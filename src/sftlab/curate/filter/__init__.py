"""Curation II: filter a large pool down to a small, high-quality, diverse SFT set."""
