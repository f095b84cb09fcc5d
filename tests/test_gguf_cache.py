"""The dequantised-checkpoint cache: keyed by the GGUF's content, converting leaves the global RNG alone, reads the
GGUF's metadata once and writes exactly the weights transformers dequantises."""

import shutil

import pytest
import torch

from sftlab.models.loading import gguf_to_hf

pytestmark = pytest.mark.slow


def test_first_conversion_keeps_the_seeded_rng_and_a_copy_elsewhere_reuses_it(tmp_path, monkeypatch):
    import gguf as gguf_lib
    from transformers import AutoModelForCausalLM

    from sftlab.models.packaged import packaged_gguf

    try:
        gguf = packaged_gguf("smollm2-135m-instruct")
    except Exception as e:
        pytest.skip(str(e))
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    opened = []
    own = gguf_lib.GGUFReader
    monkeypatch.setattr(gguf_lib, "GGUFReader", lambda *a, **k: opened.append(a[0]) or own(*a, **k))
    out = gguf_to_hf(gguf, out_root=tmp_path / "cache")  # a first run: random init inside the conversion
    assert torch.equal(torch.rand(4), expected)  # so LoRA's init, drawn next, is the same as on a warm cache
    assert len(opened) == 1, opened  # tokenizer, config and weights share one parse of the metadata
    monkeypatch.undo()

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    assert plain.keys() == direct.state_dict().keys()
    assert all(torch.equal(plain[k], v) for k, v in direct.state_dict().items())

    moved = tmp_path / "other-venv" / gguf.name  # the same package in a new virtual environment
    moved.parent.mkdir()
    shutil.copyfile(gguf, moved)
    assert gguf_to_hf(moved, out_root=tmp_path / "cache") == out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [out.name]
