"""Chat templates and verified assistant-token loss masks."""

from sftlab.templates.chat_templates import NAMED_TEMPLATES, ensure_chat_template
from sftlab.templates.masking import MaskMode, TokenizedExample, tokenize_conversation

__all__ = ["NAMED_TEMPLATES", "ensure_chat_template", "MaskMode", "TokenizedExample", "tokenize_conversation"]
