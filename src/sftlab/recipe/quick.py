"""`--quick`: the same recipe on a tiny random model with a handful of records, so the test suite runs every
recipe end to end in seconds and a recipe cannot rot. Numbers from a quick run mean nothing."""

from __future__ import annotations

import copy
from typing import Any

from sftlab.errors import ConfigError
from sftlab.models.packaged import PACKAGED

TRAIN = {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "save_steps": 1, "max_length": 256,
         "report_to": ["none"], "logging_steps": 1}
JOB_CAPS = {"max_prompts": 3, "max_new_tokens": 8, "batch_size": 4, "k": 2, "n": 1}
PROMPT_LISTS = ("prompts", "identity_prompts", "general_prompts")
POOL_RECORDS = 40


def tiny_model() -> str:
    """A tiny random Llama saved once into the cache (the stand-in for every packaged model)."""
    from sftlab.models.loading import cache_dir
    from sftlab.testing import save_tiny_model

    path = cache_dir() / "tiny-random-llama"
    if not (path / "config.json").exists():
        save_tiny_model(path)
    return str(path)


def _swap_models(value: Any, tiny: str) -> Any:
    """Every packaged model name (a student, teacher, judge or scoring LM) -> the tiny model."""
    if isinstance(value, str):
        return tiny if value in PACKAGED else value
    if isinstance(value, dict):
        return {k: _swap_models(v, tiny) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_models(v, tiny) for v in value]
    return value


def _shrink_suite(suite: dict[str, Any]) -> None:
    suite["max_new_tokens"] = 8
    for ev in suite.get("evaluators", []):
        ev.pop("max_new_tokens", None)
        for key in PROMPT_LISTS:
            if isinstance(ev.get(key), list):
                ev[key] = ev[key][:3]
        if isinstance(ev.get("data"), dict):
            ev["data"]["max_records"] = min(ev["data"].get("max_records") or 3, 3)


def _capped(source: Any) -> Any:
    """A pool source read only up to POOL_RECORDS records (scoring and embedding a whole pool took most of a
    quick run)."""
    source = {"path": source} if isinstance(source, str) else source
    if isinstance(source, dict):
        source["max_records"] = min(source.get("max_records") or POOL_RECORDS, POOL_RECORDS)
    return source


def _shrink(stage: dict[str, Any]) -> None:
    kind = stage.get("type")
    if kind == "train" and isinstance(stage.get("config"), dict):
        stage["config"].update(TRAIN)
        stage["config"].pop("epochs", None)
    elif kind in ("distill", "best_of_k") and isinstance(stage.get("job"), dict):
        job = stage["job"]
        job.update({k: v for k, v in JOB_CAPS.items() if k != ("n" if kind == "best_of_k" else "k")})
        job["keep_unfinished"] = True  # a tiny random teacher never ends its turn
    elif kind == "filter" and isinstance(stage.get("config"), dict):
        stage["config"]["target_size"] = min(stage["config"].get("target_size") or 4, 4)
        stage["config"]["pool"] = [_capped(source) for source in stage["config"].get("pool") or []]
    elif kind == "eval" and isinstance(stage.get("suite"), dict):
        _shrink_suite(stage["suite"])
        stage["batch_size"] = 4


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """`stages.ID.a.b` addresses stage ID by its id; any other dotted key is a plain path of mappings."""
    parts = key.split(".")
    node: Any = raw
    if parts[0] == "stages" and len(parts) > 2:
        node = next((s for s in raw.get("stages", []) if isinstance(s, dict) and s.get("id") == parts[1]), None)
        if node is None:
            raise ConfigError(f"{source}: quick override '{key}': no stage '{parts[1]}'")
        parts = parts[2:]
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: quick override '{key}': '{part}' is not a mapping")
    node[parts[-1]] = value


def apply_quick(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The quick variant of a raw recipe mapping (the original is left untouched)."""
    raw = _swap_models(copy.deepcopy(raw), tiny_model())
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict):
            _shrink(stage)
    for key, value in (raw.get("quick") or {}).items():
        _set_dotted(raw, key, value, source)
    return raw

