"""Named chat templates for base models that ship without one.

The chosen template is installed into the tokenizer that is saved with the tuned model, so inference
renders prompts exactly as training did. Tool calls render as `<tool_call>{json}</tool_call>` and tool
results as `<tool_response>` blocks, so a model can learn tool use from data alone.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from sftlab.errors import TemplateError

_TOOL_CALLS = (
    "{%- if message.tool_calls -%}{%- for tc in message.tool_calls -%}"
    "{{ '<tool_call>\\n' + (tc.function | tojson) + '\\n</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
)
_TOOLS_SYSTEM = (
    "{%- if tools -%}{{ 'You can call these tools:\\n' }}{%- for t in tools -%}{{ (t | tojson) + '\\n' }}"
    "{%- endfor -%}{%- endif -%}"
)

CHATML = (
    "{%- for message in messages -%}"
    "{%- if loop.first and tools and message.role != 'system' -%}"
    "{{ '<|im_start|>system\\n' }}" + _TOOLS_SYSTEM + "{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'system' and tools -%}" + _TOOLS_SYSTEM + "{%- endif -%}"
    "{%- if message.role == 'tool' -%}{{ '<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- else -%}{{ message.content }}{%- endif -%}" + _TOOL_CALLS + "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0].role == 'system' -%}{%- set sys = messages[0].content + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set sys = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ '<start_of_turn>model\\n' + message.content }}" + _TOOL_CALLS + "{{ '<end_of_turn>\\n' }}"
    "{%- elif message.role == 'tool' -%}"
    "{{ '<start_of_turn>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><end_of_turn>\\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>user\\n' }}{%- if loop.first -%}{{ sys }}" + _TOOLS_SYSTEM + "{%- endif -%}"
    "{{ message.content + '<end_of_turn>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# name -> (template, special tokens the template needs in the vocabulary)
NAMED_TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"]),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"]),
}


def template_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the special tokens the tokenizer's chat template writes as literal text (its turn markers)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special and t.content in template)


def default_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    """Gemma's own turn markers when the vocabulary has them, else ChatML."""
    vocab = tokenizer.get_vocab()
    return "gemma" if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab else "chatml"


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase, name: str = "auto") -> tuple[str, bool]:
    """Make sure `tokenizer` has a chat template; return (template name, whether tokens were added).

    name="auto" keeps the model's own template and installs a named one only when there is none;
    naming a template replaces the model's own. Missing turn-marker tokens are added as special
    tokens (the caller must then resize the embeddings).
    """
    if name in ("auto", "model", "own") and tokenizer.chat_template:
        return "model", False
    if name == "model":
        raise TemplateError("template 'model' requested but this tokenizer has no chat template; "
                            f"choose one of: {', '.join(NAMED_TEMPLATES)}")
    if name == "auto":
        name = default_template_for(tokenizer)
    if name not in NAMED_TEMPLATES:
        raise TemplateError(f"unknown chat template '{name}' (expected auto, model, or one of: "
                            f"{', '.join(NAMED_TEMPLATES)})")
    template, needed = NAMED_TEMPLATES[name]
    vocab = tokenizer.get_vocab()
    missing = [t for t in needed if t not in vocab]
    added = bool(missing) and tokenizer.add_special_tokens({"additional_special_tokens": missing}) > 0
    tokenizer.chat_template = template
    return name, added
