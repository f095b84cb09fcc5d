"""YAML configs shared by training, evaluation suites and the filter pipeline: read a mapping, validate it with
pydantic, and turn the first error into one line that names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sftlab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of settings at the top level")
    return raw


def validated(cls: type[M], raw: dict[str, Any], source: str) -> M:
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{source}: field '{where}': {first['msg']} ({e.error_count()} error(s))") from None
