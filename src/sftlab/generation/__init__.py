"""Generation services shared by curation, evaluation and serving."""

from sftlab.generation.transformers_backend import Generation, SamplingParams, TransformersGenerator

__all__ = ["Generation", "SamplingParams", "TransformersGenerator"]
