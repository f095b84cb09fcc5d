"""Render a conversation with a chat template and build its loss mask, verified token by token.

How the mask is found, for any template (no `{% generation %}` markers needed): for each assistant turn
i, render the conversation up to turn i with the generation prompt (what the model sees at inference),
then up to and including turn i; the text between the two, minus trailing whitespace, is what the model
must produce: the reply *and its end-of-turn token*, so it learns to stop. Each segment is tokenized on its
own, the way inference tokenizes a prompt and then generates; the trained tokens are decoded back and
must equal the trained text exactly, and every reply must end in a special token. Prompts (and mask_mode last)
encode earlier replies on their own too, so a later turn's prompt holds the ids training put there. A template that
cannot satisfy this (e.g. one that rewrites earlier turns) raises a TemplateError instead of training on
a wrong mask. Special tokens come only from the template: special-token strings in any message (system
prompts included) are tokenized as text (see `sftlab.templates.literal`), in training, scoring and prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from transformers import PreTrainedTokenizerBase

from sftlab.data.schema import Conversation
from sftlab.errors import TemplateError
from sftlab.templates.literal import Shield, encode_rendered, shield_for, special_token_ids

IGNORE_INDEX = -100


class MaskMode(str, Enum):
    """Which tokens carry loss."""

    assistant = "assistant"  # every assistant turn (weight > 0), incl. its end-of-turn token
    last = "last"  # only the final assistant turn
    all = "all"  # every token (continued pre-training style); prompts included


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def template_messages(conv: Conversation) -> list[dict[str, Any]]:
    return [t.to_dict() for t in conv.turns]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools=None,
           add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors carry the template's own message
        raise TemplateError(f"chat template failed to render: {e}") from e


def segment_conversation(tokenizer: PreTrainedTokenizerBase, conv: Conversation,
                         mode: MaskMode | str = MaskMode.assistant) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) segments that concatenate to the full text."""
    segments, shield = _shielded_segments(tokenizer, conv, mode)
    return [(shield.restore(text), trained) for text, trained in segments]


def _shielded_segments(tokenizer: PreTrainedTokenizerBase, conv: Conversation,
                       mode: MaskMode | str) -> tuple[list[tuple[str, bool]], Shield]:
    """Segments rendered with the user's special-token strings swapped for sentinels, and the Shield to undo it."""
    mode = MaskMode(mode)
    shield = shield_for(tokenizer, template_messages(conv), conv.tools)
    msgs, tools = shield.protect(template_messages(conv)), shield.protect(conv.tools)
    full = render(tokenizer, msgs, tools)
    assistant_idx = [i for i, t in enumerate(conv.turns) if t.role == "assistant"]
    checked = assistant_idx[-1:] if mode is MaskMode.last else assistant_idx
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i in assistant_idx:
        span = _reply_span(tokenizer, msgs, tools, i, full, pos)
        if i not in checked:  # mode last: an earlier reply is still encoded on its own, as prompts encode it
            if span:
                segments += [(full[pos:span[0]], mode is MaskMode.all), (full[span[0]:span[1]], False)]
                pos = span[1]
            continue
        if span is None:
            raise TemplateError(
                f"the chat template does not render turn {i} as a prefix of the whole conversation (it rewrites "
                "earlier turns or the generation prompt), so a correct assistant mask cannot be built; use "
                "`chat_template: chatml` (or another named template) or mask_mode: last")
        _check_reply(conv, msgs, shield, i, full[span[0]:span[1]])
        trained = mode is MaskMode.all or conv.turns[i].weight > 0
        segments.append((full[pos:span[0]], mode is MaskMode.all))
        segments.append((full[span[0]:span[1]], trained))
        pos = span[1]
    segments.append((full[pos:], mode is MaskMode.all))
    return [(text, trained) for text, trained in segments if text], shield


def _reply_span(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], tools, i: int, full: str,
                pos: int) -> tuple[int, int] | None:
    """(start, end) in `full` of assistant turn i's reply and end-of-turn token: the text after the generation prompt
    its earlier turns render to, so it is encoded on its own as it is generated. None where the template renders
    that prompt as no prefix of `full` (it rewrites earlier turns) or one ending before `pos`."""
    prefix = render(tokenizer, msgs[:i], tools, add_generation_prompt=True)
    upto = render(tokenizer, msgs[: i + 1], tools)
    if not (upto.startswith(prefix) and full.startswith(upto)) or len(prefix) < pos:
        return None
    return len(prefix), len(prefix) + len(upto[len(prefix):].rstrip())


def _check_reply(conv: Conversation, msgs: list[dict[str, Any]], shield: Shield, i: int, span: str) -> None:
    """Refuse a template that drops or changes what assistant turn i says: its mask would train on other text."""
    content = msgs[i]["content"].strip()
    if content and content not in span:
        raise TemplateError(f"the chat template dropped or changed the content of assistant turn {i}")
    for call in conv.turns[i].tool_calls or []:
        if shield.protect(call["name"]) not in span:
            raise TemplateError(f"the chat template drops the tool call in assistant turn {i}; use a named "
                                "template that renders tool calls (`chat_template: chatml` or `gemma`)")


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, conv: Conversation,
                          mode: MaskMode | str = MaskMode.assistant, max_length: int | None = None,
                          truncation: str = "drop", verify: bool = True) -> TokenizedExample | None:
    """input_ids and labels (IGNORE_INDEX outside the mask) for one conversation.

    Returns None when the example must be dropped: longer than `max_length` with truncation="drop",
    or with no trained token left after truncation="truncate" (the caller counts these).
    """
    special = special_token_ids(tokenizer) if verify else frozenset()
    input_ids: list[int] = []
    labels: list[int] = []
    segments, shield = _shielded_segments(tokenizer, conv, mode)
    for shielded, trained in segments:
        ids = encode_rendered(tokenizer, shielded, shield)
        text = shield.restore(shielded)
        if verify and trained:
            back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if back != text:
                raise TemplateError(f"loss mask check failed for record {conv.id or '?'}: trained tokens decode to "
                                    f"{back[:80]!r}, expected {text[:80]!r}")
            if MaskMode(mode) is not MaskMode.all and ids and ids[-1] not in special:
                raise TemplateError(
                    f"the chat template does not end assistant turns with a special end-of-turn token (reply ends "
                    f"with {tokenizer.convert_ids_to_tokens(ids[-1:])}); the model would never learn to stop. Use a "
                    "named template such as `chatml`")
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    if labels:
        labels[0] = IGNORE_INDEX  # the first token is never predicted
    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        if truncation == "drop":
            return None
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    ex = TokenizedExample(input_ids, labels, truncated)
    return ex if ex.n_trained > 0 else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn under this tokenizer's template, plus EOS."""
    from sftlab.data.schema import Turn

    probe = Conversation([Turn("user", "hi"), Turn("assistant", "ok")])
    span = [t for t, trained in segment_conversation(tokenizer, probe) if trained][-1]
    ids = tokenizer.encode(span, add_special_tokens=False)
    stops = [ids[-1]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conv_or_messages: Conversation | list[dict[str, Any]],
               tools=None) -> list[int]:
    """Token ids of a prompt ready for generation: exactly what training put before a reply."""
    if isinstance(conv_or_messages, Conversation):
        tools = conv_or_messages.tools
        msgs = template_messages(Conversation(conv_or_messages.prompt_turns))
    else:
        msgs = conv_or_messages
    return chat_ids(tokenizer, msgs, tools)


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools=None,
             add_generation_prompt: bool = True, suffix: str = "") -> list[int]:
    """Token ids of rendered chat messages (+ `suffix`, e.g. a judge's "Rating: "), for generation and scoring:
    the one way every prompt is encoded, so message content can never become special tokens."""
    shield = shield_for(tokenizer, messages, tools)
    msgs, tools = shield.protect(messages), shield.protect(tools)
    text = render(tokenizer, msgs, tools, add_generation_prompt) + suffix
    ids: list[int] = []
    pos = 0
    for i in (i for i, m in enumerate(msgs) if m.get("role") == "assistant"):
        span = _reply_span(tokenizer, msgs, tools, i, text, pos)
        if span:  # an earlier reply is encoded on its own, as training encoded it and the model generated it
            ids += encode_rendered(tokenizer, text[pos:span[0]], shield)
            ids += encode_rendered(tokenizer, text[span[0]:span[1]], shield)
            pos = span[1]
    return ids + encode_rendered(tokenizer, text[pos:], shield)
