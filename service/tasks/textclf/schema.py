"""The text classifier's request checks: every refusal names the field and the limit (``Rejected``, a 400).

``POST /classify-text``: ``{"texts": ["...", ...], "return_attention": true}``. Limits: ``max_texts`` texts per
request (``SEQSERVE_TEXTCLF_MAX_TEXTS``), ``max_chars`` characters per text (``SEQSERVE_TEXTCLF_MAX_CHARS``,
checked before tokenizing) and the artifact's ``max_tokens`` tokens per text (``<s>`` included). Unknown fields
are refused by name, as an empty or non-string text is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core.guard import Rejected

FIELDS = ("texts", "return_attention")


@dataclass
class TextRequest:
    texts: list[str]
    return_attention: bool


def parse_request(body: Any, max_texts: int, max_chars: int) -> TextRequest:
    if not isinstance(body, dict):
        raise Rejected('body: must be a JSON object {"texts": [...]}', "bad_request")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise Rejected(f"{', '.join(unknown)}: unknown field(s); the fields are {list(FIELDS)}", "unknown_field")
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        raise Rejected("texts: required, a non-empty list of strings", "bad_request")
    if len(texts) > max_texts:
        raise Rejected(f"texts: {len(texts)} texts, the limit is {max_texts} per request", "too_many_texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise Rejected(f"texts[{i}]: must be a string, got {type(t).__name__}", "bad_request")
        if not t.strip():
            raise Rejected(f"texts[{i}]: empty; a text needs at least one non-space character", "empty_text")
        if len(t) > max_chars:
            raise Rejected(f"texts[{i}]: {len(t)} characters, the limit is {max_chars}", "too_long")
    att = body.get("return_attention", True)
    if not isinstance(att, bool):
        raise Rejected("return_attention: must be true or false", "bad_request")
    return TextRequest(texts, att)


def check_tokens(counts: list[int], max_tokens: int) -> None:
    """Each text's token count (``<s>`` included) within the model's limit."""
    for i, n in enumerate(counts):
        if n > max_tokens:
            raise Rejected(f"texts[{i}]: {n} tokens, the limit is {max_tokens} (shorten the text)", "too_long")
