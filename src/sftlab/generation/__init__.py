"""Generation services shared by curation, evaluation and serving: one interface, several engines."""

from sftlab.generation.base import Generation, GenerationError, Generator, SamplingParams
from sftlab.generation.transformers_backend import TransformersGenerator

__all__ = ["Generation", "GenerationError", "Generator", "SamplingParams", "TransformersGenerator"]
