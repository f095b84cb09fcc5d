"""YAML configs shared by training, evaluation suites and the filter pipeline: read a mapping, validate it with
pydantic, and turn the first error into one line that names the file and the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sftlab.errors import ConfigError
from sftlab.textutil import not_utf8

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file; any problem reading it is a ConfigError naming the file."""
    raw = _parse_yaml(_read_text(Path(path), what), path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of settings at the top level")
    return raw


def _read_text(path: Path, what: str) -> str:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what} file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")  # a BOM stays: YAML drops it, and a bad byte's line counts from the file's start
    except UnicodeDecodeError as e:
        message, line = not_utf8(raw, e)
        raise ConfigError(f"{path}, line {line}: {message}") from None


def _parse_yaml(text: str, source: str | Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error without its multi-line excerpt: the problem and where it is."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if not problem:
        return " ".join(str(e).split())
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def parse_set_items(items: Iterable[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` options -> {KEY: VALUE}: VALUE is YAML (`8`, `[a, b]`, `true`); a dotted KEY
    (`lora.r`) reaches a nested setting (see `apply_overrides`). Shared by every command that takes --set."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--set '{item}': expected KEY=VALUE (e.g. --set max_steps=10, --set lora.r=8)")
        out[key] = _parse_yaml(text, f"--set '{item}'")
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each (possibly dotted) key of `overrides` in `raw`, creating nested mappings on the way; a dotted key
    through a value that is not a mapping is a ConfigError naming it."""
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[:depth + 1])
                raise ConfigError(f"--set {key}: '{where}' holds a {type(child).__name__}, not a mapping of settings")
            node = child
        node[leaf] = value
    return raw


def validated(cls: type[M], raw: dict[str, Any], source: str) -> M:
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{source}: field '{where}': {first['msg']} ({e.error_count()} error(s))") from None


def regex_error(pattern: str) -> str | None:
    """Why `pattern` is not a regular expression (None when it compiles), for config validators' messages."""
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None
