"""`sftlab export --format gguf`: refusals before any work, and (slow) a real LoRA adapter on gemma-3-270m merged
and converted by llama.cpp's converter into a GGUF whose tensors are the merged weights."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sftlab.cli import app
from sftlab.models.gguf_export import CONVERTER_ENV, export_gguf, find_converter

runner = CliRunner()


@pytest.fixture()
def adapter_stub(tmp_path):
    """Enough of an adapter folder for the checks that run before the merge."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "nowhere"}))
    return folder


def test_refusals_before_any_work(tmp_path, adapter_stub, monkeypatch):
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "no-converter"))
    r = runner.invoke(app, ["export", str(adapter_stub), str(tmp_path / "m.gguf"), "--format", "gguf"])
    assert r.exit_code == 2 and "needs llama.cpp's convert_hf_to_gguf.py" in r.output, r.output
    assert not (tmp_path / "m.gguf").exists()
    r = runner.invoke(app, ["export", str(adapter_stub), str(tmp_path / "m.gguf"), "--format", "onnx"])
    assert r.exit_code == 2 and "expected hf or gguf" in r.output
    r = runner.invoke(app, ["export", str(adapter_stub), str(tmp_path / "m.gguf"), "--format", "gguf",
                            "--gguf-type", "q2_k"])
    assert r.exit_code == 2 and "f32, f16, bf16, q8_0" in r.output
    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    for extra in ([], ["--overwrite"]):
        r = runner.invoke(app, ["export", str(adapter_stub), str(notes), "--format", "gguf", *extra])
        assert r.exit_code == 2 and ("not a GGUF file" in r.output or "already exists" in r.output), r.output
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("how", ["--base", "recorded"])
def test_the_base_gguf_is_never_the_output(tmp_path, adapter_stub, monkeypatch, how):
    """Before: with --overwrite, exporting onto the GGUF file the adapter's base was read from passed the checks
    (only the adapter counted as an input), and the converted merge replaced the user's base model."""
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "no-converter"))
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + bytes(60))
    extra = ["--base", str(base)]
    if how == "recorded":
        (adapter_stub / "sftlab.json").write_text(json.dumps({"base_model": str(base)}))
        extra = []
    r = runner.invoke(app, ["export", str(adapter_stub), str(base), "--format", "gguf", "--overwrite", *extra])
    assert r.exit_code == 2 and "is the input" in r.output, r.output
    assert base.read_bytes() == b"GGUF" + bytes(60)


@pytest.mark.slow
def test_gemma_adapter_to_gguf(tmp_path):
    """The GGUF holds the merged weights (not the base's): LoRA with random B on q_proj, converted at f32."""
    import torch
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.models.loading import resolve_model_path

    try:
        find_converter()
    except Exception as e:  # noqa: BLE001 - not installed here (scripts/setup.sh installs it)
        pytest.skip(str(e))
    base = resolve_model_path("gemma-3-270m")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().model.layers[0].self_attn.q_proj.weight.detach().numpy()
    out = export_gguf(tmp_path / "adapter", tmp_path / "m.gguf", str(base), gguf_type="f32")
    reader = GGUFReader(out)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "gemma3"
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    np.testing.assert_allclose(np.asarray(q.data).reshape(merged.shape), merged, rtol=0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file or folder left
