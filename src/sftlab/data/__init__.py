"""Data layer: one conversation schema, readers for every source, format adapters, validation, writers."""

from sftlab.data.loading import DataSpec, LoadReport, load_conversations
from sftlab.data.schema import Conversation, Turn

__all__ = ["Conversation", "Turn", "DataSpec", "LoadReport", "load_conversations"]
