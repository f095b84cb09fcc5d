"""Batched generation: same greedy output as one prompt at a time, stop tokens respected."""

import torch
from transformers import AutoModelForCausalLM

from sftlab.generation import SamplingParams, TransformersGenerator
from sftlab.templates.chat_templates import ensure_chat_template

PROMPTS = ["Hi", "What is the capital of France? Please answer briefly.", "1 2 3", "您好，请介绍一下你自己。" * 2]


def test_batched_equals_unbatched_greedy(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    params = SamplingParams(max_new_tokens=12)
    batched = TransformersGenerator(model, tiny_tokenizer, batch_size=4).generate(PROMPTS, params)
    single = TransformersGenerator(model, tiny_tokenizer, batch_size=1).generate(PROMPTS, params)
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.n_tokens == 12 and not g.finished for g in batched)  # random model: never stops on its own


def test_stops_at_end_of_turn_token(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = TransformersGenerator(model, tiny_tokenizer, batch_size=2)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert gen.stop_ids[0] == end
    with torch.no_grad():  # make the end-of-turn token the most likely next token everywhere
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[end] = 1e4
    out = gen.generate(PROMPTS[:2], SamplingParams(max_new_tokens=8))
    assert all(g.finished and g.n_tokens == 0 and g.text == "" for g in out)
