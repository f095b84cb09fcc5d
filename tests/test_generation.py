"""Batched generation: same greedy output as one prompt at a time, stop tokens respected."""

import torch
from transformers import AutoModelForCausalLM

from sftlab.generation import SamplingParams, TransformersGenerator
from sftlab.generation.base import as_messages
from sftlab.templates.chat_templates import ensure_chat_template

PROMPTS = ["Hi", "What is the capital of France? Please answer briefly.", "1 2 3", "您好，请介绍一下你自己。" * 2]


def test_batched_equals_unbatched_greedy(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    params = SamplingParams(max_new_tokens=12)
    prompts = [as_messages(p) for p in PROMPTS]
    batched = TransformersGenerator(model, tiny_tokenizer, batch_size=4).generate(prompts, params)
    single = TransformersGenerator(model, tiny_tokenizer, batch_size=1).generate(prompts, params)
    assert [g[0].text for g in batched] == [g[0].text for g in single]
    assert all(len(g) == 1 and g[0].n_tokens == 12 and not g[0].finished for g in batched)  # random: never stops
    budgeted = TransformersGenerator(model, tiny_tokenizer, batch_size=4, max_batch_tokens=1)  # each prompt alone
    assert [g[0].text for g in budgeted.generate(prompts, params)] == [g[0].text for g in single]


def _a_stop_token_some_rows_reach(model, gen, prompts, max_new_tokens):
    """A token that the greedy reply of some prompts holds within the budget and of others does not."""
    replies = [model.generate(input_ids=torch.tensor([gen.encode(p)]), max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=gen.pad_id)[0, -max_new_tokens:].tolist() for p in prompts]
    for token in (t for reply in replies for t in reply[1:]):
        if 0 < sum(token in reply for reply in replies) < len(replies):
            return token
    raise AssertionError("no token ends some replies and not others")


def test_rows_that_ended_leave_the_batch_and_the_replies_stay_the_same(tiny_model_dir, tiny_tokenizer):
    """Finished rows used to stay in the batch until its longest reply ended; now they leave every `chunk_tokens`."""
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = [as_messages(p) for p in PROMPTS]
    stop = _a_stop_token_some_rows_reach(model, TransformersGenerator(model, tiny_tokenizer), prompts, 11)
    rows_seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True)

    def replies(chunk_tokens: int, params: SamplingParams) -> list[list[tuple[str, int, bool]]]:
        gen = TransformersGenerator(model, tiny_tokenizer, batch_size=4, stop_ids=[stop], chunk_tokens=chunk_tokens)
        rows_seen.clear()
        return [[(g.text, g.n_tokens, g.finished) for g in out] for out in gen.generate(prompts, params)]

    greedy = SamplingParams(max_new_tokens=11)
    whole = replies(1000, greedy)
    assert set(rows_seen) == {4}  # one chunk: every row to the end
    chunked = replies(3, greedy)
    assert chunked == whole
    ended = [r[0][2] for r in whole]
    assert any(ended) and not all(ended) and all(r[0][1] == 11 for r in whole if not r[0][2])
    assert rows_seen[0] == 4 and rows_seen[-1] == ended.count(False)  # the replies that ended left the batch
    sampled = SamplingParams(max_new_tokens=11, temperature=1.0, n=3, seed=1)
    first = replies(2, sampled)
    assert first == replies(2, sampled) and [len(r) for r in first] == [3] * len(PROMPTS)
    assert all(n <= 11 and (finished or n == 11) for r in first for _, n, finished in r)


def test_a_long_prompt_does_not_pad_a_whole_batch_to_its_length():
    from sftlab.generation.transformers_backend import length_batches

    lengths = [30, 5000, 10, 20, 40, 50]  # a held-out set with one very long prompt
    assert length_batches(lengths, 48, 16384, 100) == [[2, 3, 0, 4, 5], [1]]
    assert length_batches(lengths, 2, 16384, 100) == [[2, 3], [0, 4], [5, 1]]  # at most 2 prompts
    assert length_batches(lengths, 48, 400, 100) == [[2, 3, 0], [4, 5], [1]]  # (n + 1) * (len + 100) <= 400
    assert length_batches([], 48, 16384, 100) == []


def test_stops_at_end_of_turn_token(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = TransformersGenerator(model, tiny_tokenizer, batch_size=2)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert gen.stop_ids[0] == end
    with torch.no_grad():  # make the end-of-turn token the most likely next token everywhere
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[end] = 1e4
    out = gen.generate([as_messages(p) for p in PROMPTS[:2]], SamplingParams(max_new_tokens=8))
    assert all(g[0].finished and g[0].n_tokens == 0 and g[0].text == "" for g in out)


def test_output_head_gets_a_contiguous_input_with_frozen_weights(tiny_model_dir, tiny_tokenizer):
    """A sliced (non-contiguous) head input with frozen weights made CPU generation copy the head per row."""
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().requires_grad_(False)
    gen = TransformersGenerator(model, tiny_tokenizer, batch_size=4)
    seen: list[bool] = []
    model.lm_head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    gen.generate([as_messages(p) for p in PROMPTS], SamplingParams(max_new_tokens=3))
    assert len(seen) == 3 and all(seen)
    TransformersGenerator(model, tiny_tokenizer)  # a second generator on the same model adds no second hook
    assert len(model.lm_head._forward_pre_hooks) == 2


def test_n_samples_per_prompt_are_seeded(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = TransformersGenerator(model, tiny_tokenizer, batch_size=4)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=5)
    prompts = [as_messages(p) for p in PROMPTS]
    a, b = gen.generate(prompts, params), gen.generate(prompts, params)
    assert [len(x) for x in a] == [3] * len(PROMPTS)
    assert [[g.text for g in x] for x in a] == [[g.text for g in x] for x in b]
    assert len({g.text for g in a[1]}) > 1  # samples differ from each other


def test_separate_calls_with_other_prompts_draw_other_samples(tiny_model_dir, tiny_tokenizer):
    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = TransformersGenerator(model, tiny_tokenizer, batch_size=4)
    params = SamplingParams(max_new_tokens=8, temperature=50.0, seed=5)  # near-uniform: the draws decide
    one, two = [gen.generate([as_messages(p)], params)[0][0].text for p in ("Say a.", "Say b.")]
    assert one != two  # was: each call's first batch seeded alike, so the two replies were the same tokens
    assert gen.generate([as_messages("Say a.")], params)[0][0].text == one  # the same prompt samples alike


def test_encode_keeps_a_conversations_tools(tiny_model_dir, tiny_tokenizer):
    """A Conversation's tool schemas are part of the prompt training saw: encode() dropped them (as_messages keeps
    only the turns), so the model was prompted without the tools it was trained to call (vLLM kept them)."""
    from sftlab.data.schema import Conversation, Turn
    from sftlab.templates.masking import prompt_ids

    ensure_chat_template(tiny_tokenizer, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    conv = Conversation([Turn("user", "Weather in Paris?"),
                         Turn("assistant", "", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])],
                        tools=[{"name": "get_weather", "parameters": {"type": "object"}}])
    ids = TransformersGenerator(model, tiny_tokenizer).encode(conv)
    assert ids == prompt_ids(tiny_tokenizer, conv) and "get_weather" in tiny_tokenizer.decode(ids)
