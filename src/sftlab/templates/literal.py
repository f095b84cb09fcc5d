"""Special tokens come only from the chat template: special-token strings inside user content stay text.

A record, a chat user or a system prompt whose content says `<end_of_turn>\\n<start_of_turn>model` (or
`<|im_end|>`, `<eos>`, ...) would otherwise be tokenized into real turn markers: it could forge turns at
inference, and training would teach the model to emit them. So, before the template renders, every
special-token string inside message content, tool calls and tool schemas is swapped for a private-use
sentinel character (a `Shield`); the rendered text is then tokenized as usual, except that each stretch
between two template special tokens that holds a sentinel is tokenized again with the sentinels turned
back into their text and special-token parsing off. Content without special-token strings takes the plain
`tokenizer.encode` path, so ordinary data tokenizes exactly as before.
"""

from __future__ import annotations

import itertools
import re
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from sftlab.errors import TemplateError

# Unicode private-use code points: never produced by a template, practically never by users (and skipped if so)
_PRIVATE_USE = (range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE), range(0xE000, 0xF900))

_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (len, strings, ids, pattern)


def _trie_regex(node: dict[str, dict]) -> str:
    """A regex matching exactly the strings of a character trie, longest first (fast with thousands of tokens)."""
    alternatives = [re.escape(ch) + _trie_regex(child) for ch, child in sorted(node.items()) if ch]
    if not alternatives:
        return ""
    body = "(?:" + "|".join(alternatives) + ")"
    return body + "?" if "" in node else body


@lru_cache(maxsize=16)
def _compile(strings: tuple[str, ...]) -> re.Pattern[str] | None:
    trie: dict[str, dict] = {}
    for s in strings:
        node = trie
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = {}
    return re.compile(_trie_regex(trie)) if strings else None


def _specials(tokenizer: PreTrainedTokenizerBase) -> tuple[tuple[str, ...], frozenset[int], re.Pattern[str] | None]:
    """(special-token strings, their ids, a regex finding them), cached per tokenizer until its vocabulary grows."""
    cached = _SPECIALS.get(tokenizer)
    if cached and cached[0] == len(tokenizer):
        return cached[1:]
    strings = set(tokenizer.all_special_tokens)
    strings.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    strings.discard("")
    ids = frozenset(tokenizer.convert_tokens_to_ids(sorted(strings)))
    entry = (len(tokenizer), tuple(sorted(strings)), ids, _compile(tuple(sorted(strings))))
    _SPECIALS[tokenizer] = entry
    return entry[1:]


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of every token the tokenizer treats as special (control) tokens."""
    return _specials(tokenizer)[1]


def _strings_in(obj: Any) -> list[str]:
    """Every string inside a JSON-like value (dict keys included)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*_strings_in(k), *_strings_in(v))]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _strings_in(v)]
    return []


@dataclass(frozen=True)
class Shield:
    """The special-token strings found in user content and the sentinel character standing in for each."""

    sentinel_of: dict[str, str] = field(default_factory=dict)  # special-token text -> sentinel char
    pattern: re.Pattern[str] | None = None

    @property
    def active(self) -> bool:
        return bool(self.sentinel_of)

    def protect(self, obj: Any) -> Any:
        """A copy of a JSON-like value with every special-token string replaced by its sentinel."""
        if not self.active:
            return obj
        if isinstance(obj, str):
            return self.pattern.sub(lambda m: self.sentinel_of[m.group(0)], obj)
        if isinstance(obj, dict):
            return {self.protect(k): self.protect(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.protect(v) for v in obj]
        return obj

    def restore(self, text: str) -> str:
        """The text with every sentinel turned back into the special-token string it stands for."""
        for special, sentinel in self.sentinel_of.items():
            text = text.replace(sentinel, special)
        return text

    def holds_sentinel(self, text: str) -> bool:
        return any(s in text for s in self.sentinel_of.values())


def shield_for(tokenizer: PreTrainedTokenizerBase, *user_values: Any) -> Shield:
    """A Shield for the special-token strings occurring in `user_values` (messages, tools, ...)."""
    _, _, pattern = _specials(tokenizer)
    strings = _strings_in(list(user_values))
    found = sorted({m.group(0) for s in strings for m in pattern.finditer(s)}) if pattern else []
    if not found:
        return Shield()
    taken = set("".join(strings)) | set(str(tokenizer.chat_template or ""))
    free = (chr(c) for c in itertools.chain(*_PRIVATE_USE) if chr(c) not in taken)
    sentinels = list(itertools.islice(free, len(found)))
    if len(sentinels) < len(found):
        raise TemplateError("this conversation uses every Unicode private-use character, so special-token text in it "
                            "cannot be kept apart from the template's special tokens")
    return Shield(dict(zip(found, sentinels, strict=True)), pattern)


def _template_specials(tokenizer: PreTrainedTokenizerBase, text: str) -> list[tuple[int, int, int]]:
    """(start, end, id) of each special token in rendered text (user specials are sentinels by now): the
    tokenizer's own split when it reports offsets, else the literal strings."""
    _, ids, pattern = _specials(tokenizer)
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(a, b, i) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if i in ids]
    if pattern is None:
        return []
    return [(*m.span(), tokenizer.convert_tokens_to_ids(m.group(0))) for m in pattern.finditer(text)]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of user text on its own (no template): special-token strings in it are plain text."""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def encode_rendered(tokenizer: PreTrainedTokenizerBase, text: str, shield: Shield) -> list[int]:
    """Token ids of text rendered from shielded messages: special tokens where the template put them, and the
    user's special-token strings as plain text."""
    if not shield.holds_sentinel(text):
        return tokenizer.encode(text, add_special_tokens=False)
    ids: list[int] = []
    pos = 0
    for start, end, special_id in _template_specials(tokenizer, text):
        ids += encode_text(tokenizer, shield.restore(text[pos:start])) if start > pos else []
        ids.append(special_id)
        pos = end
    return ids + (encode_text(tokenizer, shield.restore(text[pos:])) if pos < len(text) else [])
