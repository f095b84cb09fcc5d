"""Loss masks: trained tokens decode back to exactly the assistant text plus its end-of-turn token."""

import json

import pytest

from sftlab.data.formats import ADAPTERS
from sftlab.data.schema import Conversation, Turn
from sftlab.errors import TemplateError
from sftlab.templates.chat_templates import NAMED_TEMPLATES, ensure_chat_template
from sftlab.templates.masking import IGNORE_INDEX, prompt_ids, stop_token_ids, tokenize_conversation

# A model's own template (Llama-3 style, no generation markers) to prove the prefix method is general.
LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n\\n' + m['content'] | trim }}"
    "{{ '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}"
)
END = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "llama3_like": "<|im_end|>"}

RECORDS = {
    "messages": {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello! 你好"}]},
    "prompt_completion": {"prompt": "2+2?", "completion": "4"},
    "alpaca": {"instruction": "Name a fruit", "input": "red", "output": "Apple.", "history": [["Hi", "Hey"]]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Weather?"},
                                   {"from": "function_call", "value": '{"name": "w", "arguments": {"c": "P"}}'},
                                   {"from": "observation", "value": "21C"}, {"from": "gpt", "value": "21C now."}],
                 "tools": [{"name": "w", "parameters": {"type": "object"}}]},
    "question_answer": {"question": "1+1?", "answer": "2\n#### 2"},
}


def _with_template(tok, name):
    if name == "llama3_like":
        tok.chat_template = LLAMA3_LIKE
    else:
        ensure_chat_template(tok, name)
    return tok


def _trained_text(tok, ex):
    return tok.decode([i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX],
                      skip_special_tokens=False)


@pytest.mark.parametrize("template", ["chatml", "gemma", "llama3_like"])
@pytest.mark.parametrize("fmt", list(RECORDS))
def test_decode_back_every_adapter_and_template(tiny_tokenizer, template, fmt):
    tok = _with_template(tiny_tokenizer, template)
    conv = ADAPTERS[fmt](RECORDS[fmt])
    if template == "llama3_like" and any(t.tool_calls for t in conv.turns):
        with pytest.raises(TemplateError, match="drops the tool call"):
            tokenize_conversation(tok, conv)
        return
    ex = tokenize_conversation(tok, conv)
    expected = ""
    for t in conv.turns:
        if t.role == "assistant":
            body = t.content
            if t.tool_calls:
                body += "".join("<tool_call>\n" + json.dumps(c) + "\n</tool_call>" for c in t.tool_calls)
            expected += body + END[template]
    assert _trained_text(tok, ex) == expected
    # the whole sequence is the rendered conversation, and labels equal ids where trained
    rendered = tok.apply_chat_template([t.to_dict() for t in conv.turns], tools=conv.tools, tokenize=False)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == rendered
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex.input_ids, ex.labels, strict=True))


def test_end_of_turn_token_is_trained_and_is_the_stop_token(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, "gemma")
    ex = tokenize_conversation(tok, Conversation([Turn("user", "Q"), Turn("assistant", "A")]))
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert [lab for lab in ex.labels if lab != IGNORE_INDEX][-1] == eot
    assert stop_token_ids(tok)[0] == eot


def test_prompt_ids_match_training_prefix(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, "chatml")
    conv = Conversation([Turn("system", "S"), Turn("user", "Q"), Turn("assistant", "A")])
    ex = tokenize_conversation(tok, conv)
    first_trained = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
    assert prompt_ids(tok, conv) == ex.input_ids[:first_trained]


@pytest.mark.parametrize("template", ["chatml", "gemma"])
@pytest.mark.parametrize("mode", ["assistant", "last"])
def test_prompt_ids_match_training_prefix_after_an_indented_reply(tiny_tokenizer, template, mode):
    """An earlier reply starting with spaces (indented code) was encoded on its own in training but merged with the
    newline before it ("\\n   ") in prompts, so a second-turn prompt held ids the model never trained on."""
    tok = _with_template(tiny_tokenizer, template)
    conv = Conversation([Turn("system", "S"), Turn("user", "code?"), Turn("assistant", "    return a + b\n"),
                         Turn("user", "again"), Turn("assistant", "ok")])
    ex = tokenize_conversation(tok, conv, mode)
    n_reply = len(tok.encode("ok", add_special_tokens=False)) + 1  # "ok" + end-of-turn
    reply_start = [i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX][-n_reply]
    assert prompt_ids(tok, conv) == ex.input_ids[:reply_start]
    reply = tok.decode(ex.input_ids[reply_start:reply_start + n_reply], skip_special_tokens=False)
    assert reply == "ok" + END[template]


def test_multi_turn_modes_and_weights(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, "chatml")
    conv = Conversation([Turn("user", "Q1"), Turn("assistant", "A1"), Turn("user", "Q2"),
                         Turn("assistant", "A2", weight=0.0), Turn("user", "Q3"), Turn("assistant", "A3")])
    assert _trained_text(tok, tokenize_conversation(tok, conv, "assistant")) == "A1<|im_end|>A3<|im_end|>"
    assert _trained_text(tok, tokenize_conversation(tok, conv, "last")) == "A3<|im_end|>"
    ex_all = tokenize_conversation(tok, conv, "all")
    assert ex_all.labels[0] == IGNORE_INDEX and ex_all.labels[1:] == ex_all.input_ids[1:]


def test_truncation_policies(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, "chatml")
    conv = Conversation([Turn("user", "short question"), Turn("assistant", "a fairly long answer " * 10)])
    full = tokenize_conversation(tok, conv)
    n_prompt = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    assert tokenize_conversation(tok, conv, max_length=len(full.input_ids) - 1, truncation="drop") is None
    cut = tokenize_conversation(tok, conv, max_length=n_prompt + 3, truncation="truncate")
    assert cut.truncated and len(cut.input_ids) == n_prompt + 3 and cut.n_trained == 3
    # nothing left to learn after truncating inside the prompt: dropped
    assert tokenize_conversation(tok, conv, max_length=n_prompt - 1, truncation="truncate") is None


def test_drop_counts_name_the_real_reason(tiny_tokenizer):
    """A short record whose assistant turns all have weight 0 is dropped for having no trained token, not counted
    as "longer than max_length" (which data_stats.json and `sftlab data check` reported, even without a max_length)."""
    from sftlab.train.dataset import tokenize_all

    tok = _with_template(tiny_tokenizer, "chatml")
    unweighted = Conversation([Turn("user", "Q"), Turn("assistant", "A", weight=0.0)])
    last_unweighted = Conversation([Turn("user", "Q"), Turn("assistant", "A"), Turn("user", "Q2"),
                                    Turn("assistant", "A2", weight=0.0)])
    long = Conversation([Turn("user", "short question"), Turn("assistant", "a fairly long answer " * 10)])
    kept = Conversation([Turn("user", "Q"), Turn("assistant", "A")])
    _, stats = tokenize_all(tok, [unweighted, long, kept])
    assert dict(stats.dropped) == {"no trained token (weight 0)": 1} and stats.examples == 2
    _, stats = tokenize_all(tok, [unweighted, long, kept], max_length=20, truncation="drop")
    assert dict(stats.dropped) == {"no trained token (weight 0)": 1, "longer than max_length": 1}
    _, stats = tokenize_all(tok, [unweighted, last_unweighted, kept], mask_mode="last", max_length=1024)
    assert dict(stats.dropped) == {"no trained token (weight 0)": 2}
    _, stats = tokenize_all(tok, [unweighted, long], max_length=8, truncation="truncate")
    assert dict(stats.dropped) == {"no trained token (weight 0)": 1, "no trained token left": 1}


def test_template_that_rewrites_history_fails_loudly(tiny_tokenizer):
    # drops earlier assistant replies from the context, like some reasoning-model templates
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    conv = Conversation([Turn("user", "Q1"), Turn("assistant", "A1"), Turn("user", "Q2"), Turn("assistant", "A2")])
    with pytest.raises(TemplateError, match="prefix of the whole conversation"):
        tokenize_conversation(tiny_tokenizer, conv)


def test_template_without_end_of_turn_token_fails_loudly(tiny_tokenizer):
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    with pytest.raises(TemplateError, match="never learn to stop"):
        tokenize_conversation(tiny_tokenizer, Conversation([Turn("user", "Q"), Turn("assistant", "A")]))


def test_named_templates_install_into_tokenizer_and_keep_model_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template is None
    name, added = ensure_chat_template(tiny_tokenizer, "auto")
    assert (name, added) == ("gemma", False) and tiny_tokenizer.chat_template == NAMED_TEMPLATES["gemma"][0]
    assert ensure_chat_template(tiny_tokenizer, "auto") == ("model", False)  # now it has one: kept
    with pytest.raises(TemplateError, match="unknown chat template"):
        ensure_chat_template(tiny_tokenizer, "vicuna")


def test_missing_turn_tokens_are_added():
    """A byte-level vocabulary without ChatML markers: they are added as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    raw = Tokenizer(models.BPE(vocab={**vocab, "<eos>": len(vocab)}, merges=[]))
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.add_special_tokens(["<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")
    n = len(tok)
    assert ensure_chat_template(tok, "auto") == ("chatml", True)
    assert len(tok) == n + 2
    ex = tokenize_conversation(tok, Conversation([Turn("user", "Q"), Turn("assistant", "A")]))
    assert _trained_text(tok, ex) == "A<|im_end|>"


def test_real_smollm2_template_masks(tmp_path):
    """The packaged instruct model's own ChatML template, read from its GGUF."""
    from sftlab.models.packaged import packaged_gguf

    try:
        gguf = packaged_gguf("smollm2-135m-instruct")
    except Exception as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert ensure_chat_template(tok, "auto") == ("model", False)
    conv = Conversation([Turn("user", "Who are you?"), Turn("assistant", "I am Orca."), Turn("user", "Sure?"),
                         Turn("assistant", "Yes, 确定.")])
    ex = tokenize_conversation(tok, conv)
    assert _trained_text(tok, ex) == "I am Orca.<|im_end|>Yes, 确定.<|im_end|>"


@pytest.mark.parametrize("template", ["chatml", "gemma"])
def test_named_templates_render_tool_results_as_tool_response_blocks(tiny_tokenizer, template):
    """Both named templates wrap a tool result in a <tool_response> block, as the README says (chatml rendered the
    bare result under a `tool` header)."""
    tok = _with_template(tiny_tokenizer, template)
    conv = ADAPTERS["sharegpt"](RECORDS["sharegpt"])
    rendered = tok.apply_chat_template([t.to_dict() for t in conv.turns], tools=conv.tools, tokenize=False)
    assert "<tool_response>\n21C\n</tool_response>" in rendered
    assert _trained_text(tok, tokenize_conversation(tok, conv)).endswith("21C now." + END[template])
