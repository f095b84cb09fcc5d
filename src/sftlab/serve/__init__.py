"""Serving: an OpenAI-compatible HTTP server for a local or fine-tuned model."""
