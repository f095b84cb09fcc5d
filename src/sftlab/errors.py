"""One exception type per layer, each message naming where the problem is and what was expected."""

from __future__ import annotations


class SftlabError(Exception):
    """Base class: every error sftlab raises on purpose."""


class ConfigError(SftlabError):
    """A config file or option is invalid."""


class DataError(SftlabError):
    """A record could not be read or is not a valid conversation.

    The message always names the source, the record (line number for line-based files, else the
    0-based record index) and, where known, the field.
    """

    def __init__(self, message: str, *, source: str | None = None, record: str | None = None,
                 field: str | None = None, reason: str | None = None) -> None:
        self.message, self.source, self.record, self.field = message, source, record, field
        self.reason = reason or message
        where = ", ".join(p for p in (source, record, f"field '{field}'" if field else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class TemplateError(SftlabError):
    """A chat template cannot render a conversation or cannot produce a correct loss mask."""


class ModelError(SftlabError):
    """A model cannot be found, converted or loaded."""
