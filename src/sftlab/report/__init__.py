"""Run reports: one self-contained HTML page and a Markdown twin with plots."""
