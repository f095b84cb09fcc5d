"""The vLLM engine's config (tensor parallelism, data-parallel replicas): validated and handed to vLLM as its own
engine arguments. vLLM is not installed here, so what is tested is the config plumbing and the refusals that
happen before vLLM would start; the engine itself runs only on a GPU machine."""

import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.errors import ConfigError
from sftlab.generation.factory import build_generator
from sftlab.generation.vllm_backend import VLLMOptions, check_gpus, vllm_available, vllm_options, vllm_options_from_cli


def test_options_become_vllm_engine_arguments():
    opts = vllm_options({"tensor_parallel_size": 2, "data_parallel_size": 4})
    assert opts.gpus == 8
    assert opts.engine_kwargs() == {"tensor_parallel_size": 2, "data_parallel_size": 4}
    assert vllm_options(None).engine_kwargs() == {}  # vLLM's own defaults stay in charge
    assert vllm_options({"max_model_len": 4096, "gpu_memory_utilization": 0.5}).engine_kwargs() == \
        {"gpu_memory_utilization": 0.5, "max_model_len": 4096}
    assert vllm_options(opts) is opts


@pytest.mark.parametrize(("raw", "field"), [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"data_parallel_size": -1}, "data_parallel_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"tensor_paralel_size": 2}, "tensor_paralel_size"),  # a typo is an error, not a silent default
])
def test_bad_options_are_config_errors_naming_the_field(raw, field):
    with pytest.raises(ConfigError, match=field):
        vllm_options(raw)


def test_more_gpus_than_the_machine_has_is_refused_before_vllm_starts():
    check_gpus(VLLMOptions(tensor_parallel_size=2, data_parallel_size=2), available=4)
    with pytest.raises(ConfigError, match="needs 8 GPUs; this machine has 1"):
        check_gpus(VLLMOptions(tensor_parallel_size=4, data_parallel_size=2), available=1)


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed: the engine would start")
def test_engine_vllm_without_vllm_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        build_generator(str(tiny_model_dir), engine="vllm", vllm={"tensor_parallel_size": 0})
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        build_generator(str(tiny_model_dir), engine="vllm", vllm={"tensor_parallel_size": 2})


def test_vllm_cli_options_become_engine_options():
    opts = vllm_options_from_cli(["tensor_parallel_size=2", "gpu_memory_utilization = 0.85", "max_model_len=4096"])
    assert opts.engine_kwargs() == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_model_len": 4096}
    assert vllm_options_from_cli([]) is None


@pytest.mark.parametrize(("command", "item", "named"), [
    ("distill", "tensor_paralel_size=2", "tensor_paralel_size"),
    ("best-of-k", "data_parallel_size=0", "data_parallel_size"),
    ("distill", "tensor_parallel_size", "expected KEY=VALUE"),
])
def test_a_bad_vllm_option_is_a_clear_error_before_anything_loads(tmp_path, command, item, named):
    r = CliRunner().invoke(app, ["curate", command, "--prompts", str(tmp_path / "none.jsonl"),
                                 "--out", str(tmp_path / "out.jsonl"), "--vllm", "max_model_len=512",
                                 "--vllm", item])
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and named in r.output
    assert not (tmp_path / "out.jsonl").exists()


def test_vllm_options_with_a_base_url_are_refused():
    with pytest.raises(ConfigError, match="--base-url"):
        vllm_options_from_cli(["tensor_parallel_size=2"], base_url=["http://127.0.0.1:8000/v1"])
