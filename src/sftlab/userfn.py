"""User code by `module:function`: custom rewards, evaluators and judges."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def import_callable(spec: str, what: str = "function") -> Callable[..., Any]:
    """Import `module:function` from the Python path; a clear error names the spec when it fails."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} '{spec}' must look like module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {what} '{spec}': {e}") from None
    if not callable(fn):
        raise ValueError(f"{what} '{spec}' is not callable")
    return fn
