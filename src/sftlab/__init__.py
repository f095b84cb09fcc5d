"""sftlab: supervised fine-tuning end to end (data -> curate -> train -> evaluate -> report)."""

__version__ = "0.1.0"
