"""bf16 only where the hardware runs it fast: a CPU without AVX512-BF16 or AMX emulates bf16 matmuls (measured 4x
slower than fp32), and the demo hard-wired bf16 there."""

import pytest
import torch

from sftlab.evaluate.subjects import load_subjects
from sftlab.models.causal_lm import inference_dtype, load_chat_tokenizer
from sftlab.models.loading import resolve_dtype
from sftlab.testing import save_tiny_model
from sftlab.train.args import precision_flags


@pytest.fixture(params=[False, True], ids=["cpu-emulates-bf16", "cpu-with-bf16"])
def native_bf16(request, monkeypatch) -> bool:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return request.param


def test_auto_is_bf16_only_where_the_cpu_has_it(native_bf16, tmp_path):
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')  # a checkpoint stored in bf16
    want = torch.bfloat16 if native_bf16 else torch.float32
    assert resolve_dtype("auto") == want
    assert inference_dtype(str(tmp_path), "cpu") == want
    assert precision_flags("auto") == {"bf16": native_bf16, "fp16": False}
    assert resolve_dtype("bf16") == torch.bfloat16 and precision_flags("bf16")["bf16"]  # asked for by name: given


def test_generation_cache_keys_name_the_dtype_auto_resolved_to(native_bf16, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    load_chat_tokenizer(str(model))[0].save_pretrained(model)  # with the chat template a tuned model has
    base, tuned = load_subjects(str(model), tuned=str(model), cache_path=tmp_path / "c.sqlite", dtype="auto")
    want = torch.bfloat16 if native_bf16 else torch.float32
    assert next(base.model.parameters()).dtype == want
    assert base.generator.cache_id.endswith(":" + str(want).removeprefix("torch."))
