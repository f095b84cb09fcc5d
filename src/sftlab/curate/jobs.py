"""Curation jobs callable from code: `sftlab curate distill|best-of-k|filter` and the recipe runner build the same
job (from the command's options or a YAML mapping) and run it here, so both check, claim and write alike."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.curate.job_help import BEST_OF_K, COMMON, DISTILL
from sftlab.errors import ConfigError, DataError, SftlabError

if TYPE_CHECKING:
    from rich.console import Console

    from sftlab.artifacts.records import CurationSummary
    from sftlab.curate.filter.config import FilterConfig
    from sftlab.curate.filter.pipeline import FilterResult
    from sftlab.curate.runner import RunStats
    from sftlab.data.schema import Conversation
    from sftlab.generation.base import SamplingParams

J = TypeVar("J", bound="CurationJob")


class CurationJob(BaseModel):
    """What distillation and best-of-k share: the prompts, the engine, the output and the sampling budget."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(description=COMMON["prompts"])
    out: Path = Field(description=COMMON["out"])
    base_url: list[str] = Field([], description=COMMON["base_url"])
    api_key_env: str = Field("OPENAI_API_KEY", description=COMMON["api_key_env"])
    adapter: str | None = Field(None, description=COMMON["adapter"])
    format: str = Field("auto", description=COMMON["format"])
    max_new_tokens: int = Field(256, description=COMMON["max_new_tokens"])
    seed: int = Field(0, description=COMMON["seed"])
    max_prompts: int | None = Field(None, description=COMMON["max_prompts"])
    batch_size: int = Field(8, description=COMMON["batch_size"])
    no_cache: bool = Field(False, description=COMMON["no_cache"])
    vllm: list[str] | dict[str, Any] = Field([], description=COMMON["vllm"])

    @classmethod
    def from_mapping(cls: type[J], raw: dict[str, Any], source: str = "job") -> J:
        """The job a mapping (a recipe stage, the command's options) describes; a wrong field is a ConfigError."""
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{source}: {_explain(cls, e)}") from None


class DistillJob(CurationJob):
    """`sftlab curate distill`: a teacher answers the prompts; the output is ordinary SFT data."""

    prompts: str = Field(description=DISTILL["prompts"])
    teacher: str = Field("smollm2-135m-instruct", description=DISTILL["teacher"])
    out: Path = Field(description=DISTILL["out"])
    base_url: list[str] = Field([], description=DISTILL["base_url"])
    system: str | None = Field(None, description=DISTILL["system"])
    n: int = Field(1, description=DISTILL["n"])
    temperature: float = Field(0.0, description=DISTILL["temperature"])
    top_p: float = Field(1.0, description=DISTILL["top_p"])
    keep_unfinished: bool = Field(False, description=DISTILL["keep_unfinished"])


class BestOfKJob(CurationJob):
    """`sftlab curate best-of-k`: sample k replies per prompt, score them, keep the best (rejection sampling)."""

    prompts: str = Field(description=BEST_OF_K["prompts"])
    policy: str = Field("smollm2-135m-instruct", description=BEST_OF_K["policy"])
    reward: str = Field("gsm8k", description=BEST_OF_K["reward"])
    judge: str = Field("smollm2-135m-instruct", description=BEST_OF_K["judge"])
    system: str | None = Field(None, description=BEST_OF_K["system"])
    k: int = Field(4, description=BEST_OF_K["k"])
    select: str = Field("best", description=BEST_OF_K["select"])
    min_score: float | None = Field(None, description=BEST_OF_K["min_score"])
    temperature: float = Field(0.8, description=BEST_OF_K["temperature"])
    top_p: float = Field(0.95, description=BEST_OF_K["top_p"])
    keep_unfinished: bool = Field(False, description=BEST_OF_K["keep_unfinished"])


def _explain(job: type[BaseModel], e: ValidationError) -> str:
    """The first problem, naming the field (an unknown one with the closest real field)."""
    first = e.errors()[0]
    field = ".".join(str(x) for x in first["loc"]) or "(the job)"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), list(job.model_fields), n=1)
        return f"unknown field '{field}'" + (f"; did you mean '{close[0]}'?" if close else "") + \
            f" (fields: {', '.join(job.model_fields)})"
    return f"field '{field}': {first['msg']} ({e.error_count()} error(s))"


def run_distill(job: DistillJob, console: Console) -> CurationSummary:
    """A teacher answers the prompts into `job.out`; returns (and writes beside it) the run summary."""
    from sftlab.curate.distill import distill, distill_settings
    from sftlab.curate.runner import check_output, engine_id
    from sftlab.generation.factory import build_generator
    from sftlab.generation.vllm_backend import vllm_options_from_cli

    engine_options = vllm_options_from_cli(job.vllm, job.base_url)
    params = _sampling(job, "n", job.n, job.temperature, job.top_p)
    gid = engine_id(job.teacher, job.adapter, job.base_url)
    check_output(job.out, distill_settings(gid, params, job.system, job.keep_unfinished), inputs=[job.prompts])
    convs, bad_prompts = _prompts(job, console)
    gen = build_generator(job.teacher, adapter=job.adapter, base_url=job.base_url, batch_size=job.batch_size,
                          api_key_env=job.api_key_env, vllm=engine_options)
    stats = distill(convs, gen, job.out, params, system_prompt=job.system, keep_unfinished=job.keep_unfinished,
                    cache=_cache(job), batch_size=job.batch_size, console=console, generator_id=gid,
                    inputs=[job.prompts])
    return _summary(job.out, stats, bad_prompts)


def run_best_of_k(job: BestOfKJob, console: Console) -> CurationSummary:
    """Sample k replies per prompt, score them, keep the best into `job.out`; returns the run summary."""
    from sftlab.curate.best_of_k import best_of_k, best_of_k_settings
    from sftlab.curate.rewards import make_reward, reward_identity
    from sftlab.curate.runner import check_output, engine_id
    from sftlab.generation.factory import build_generator
    from sftlab.generation.vllm_backend import vllm_options_from_cli

    engine_options = vllm_options_from_cli(job.vllm, job.base_url)
    params = _sampling(job, "k", job.k, job.temperature, job.top_p)
    gid = engine_id(job.policy, job.adapter, job.base_url)
    reward_id = reward_identity(job.reward, job.judge, job.base_url)
    check_output(job.out, best_of_k_settings(gid, params, reward_id, job.select, job.min_score, job.system,
                                             job.keep_unfinished), inputs=[job.prompts])
    convs, bad_prompts = _prompts(job, console)
    fn = make_reward(job.reward, judge=job.judge, base_url=job.base_url, api_key_env=job.api_key_env)
    gen = build_generator(job.policy, adapter=job.adapter, base_url=job.base_url, batch_size=job.batch_size,
                          api_key_env=job.api_key_env, vllm=engine_options)
    stats = best_of_k(convs, gen, fn, job.out, params, reward_name=job.reward, select=job.select,
                      min_score=job.min_score, cache=_cache(job), batch_size=job.batch_size, console=console,
                      generator_id=gid, reward_id=reward_id, inputs=[job.prompts], system_prompt=job.system,
                      keep_unfinished=job.keep_unfinished)
    return _summary(job.out, stats, bad_prompts)


def _sampling(job: CurationJob, what: str, n: int, temperature: float, top_p: float) -> SamplingParams:
    """Sampling parameters and batch size, checked before anything is loaded (`what` names the count option)."""
    from sftlab.curate.runner import check_batch_size, check_sampling
    from sftlab.generation.base import SamplingParams

    params = SamplingParams(max_new_tokens=job.max_new_tokens, temperature=temperature, top_p=top_p, n=n,
                            seed=job.seed)
    check_sampling(params, what)
    check_batch_size(job.batch_size)
    return params


def _prompts(job: CurationJob, console: Console) -> tuple[list[Conversation], dict[str, int]]:
    """The prompts to curate and the prompt records skipped (by reason); none at all is an error (a wrong path or
    format, not a finished job)."""
    from sftlab.data.loading import load_conversations, make_spec

    if job.max_prompts is not None and job.max_prompts < 1:
        raise ConfigError(f"--max-prompts {job.max_prompts}: must be at least 1")
    spec = dict(path=job.prompts, format=job.format, on_error="skip", require_response=False,
                max_records=job.max_prompts)
    convs, report = load_conversations(make_spec(spec, "--prompts"))
    if report.skipped:
        console.print(f"[yellow]skipped {sum(report.skipped.values())} bad prompt records[/]: {dict(report.skipped)}")
    if not convs:
        raise DataError(f"no prompts to curate (read {report.read} records, skipped {dict(report.skipped)}; "
                        f"first problem: {report.examples[0] if report.examples else 'the source is empty'})",
                        source=job.prompts)
    return convs, dict(report.skipped)


def _cache(job: CurationJob):
    """The generation cache beside the output; a cache that cannot be opened is a clear error."""
    import sqlite3

    from sftlab.curate.store import CurationFiles
    from sftlab.generation.cache import GenerationCache

    path = CurationFiles(job.out).cache
    try:
        return None if job.no_cache else GenerationCache(path)
    except sqlite3.Error as e:
        raise SftlabError(f"generation cache {path}: {e}; pass --no-cache or choose another --out") from None


def _summary(out: Path, stats: RunStats, bad_prompts: dict[str, int]) -> CurationSummary:
    """The run summary, kept beside the output; prompt records that could not be read count among its skips."""
    from sftlab.artifacts.records import CurationSummary, write_record
    from sftlab.curate.store import CurationFiles, write_failed

    stats.skipped.update({f"bad prompt record ({reason})": n for reason, n in bad_prompts.items()})
    summary, path = CurationSummary(**stats.to_dict()), CurationFiles(out).summary
    try:
        write_record(path, summary)
    except OSError as e:
        raise write_failed(e, path, out, stats.records_in_file) from e
    return summary


def run_filter_config(cfg: FilterConfig, console: Console, overwrite: bool = False) -> FilterResult:
    """Claim the selection's output (never an input, nothing sftlab did not write unless `overwrite`), then filter."""
    from sftlab.curate.filter.pipeline import run_filter
    from sftlab.curate.outputs import check_selection_output

    inputs = [s.path for s in [*cfg.pool, *cfg.decontaminate.eval]]
    check_selection_output(cfg.output, cfg.report_path, inputs, overwrite, cfg.output_format)
    return run_filter(cfg, console=console)
