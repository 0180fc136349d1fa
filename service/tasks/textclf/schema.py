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


def listed(body: Any, name: str, fields: tuple[str, ...], limit: int, of: str) -> list:
    """The request's list ``name`` (``texts`` or ``items``): ``body`` an object with no field but ``fields``, the
    list non-empty and at most ``limit`` long (``of``: what it holds, for the message)."""
    if not isinstance(body, dict):
        raise Rejected(f'body: must be a JSON object {{"{name}": [...]}}', "bad_request")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise Rejected(f"{', '.join(unknown)}: unknown field(s); the fields are {list(fields)}", "unknown_field")
    values = body.get(name)
    if not isinstance(values, list) or not values:
        raise Rejected(f"{name}: required, a non-empty list of {of}", "bad_request")
    if len(values) > limit:
        raise Rejected(f"{name}: {len(values)} {name}, the limit is {limit} per request", "too_many_texts")
    return values


def parse_request(body: Any, max_texts: int, max_chars: int) -> TextRequest:
    texts = listed(body, "texts", FIELDS, max_texts, "strings")
    for i, t in enumerate(texts):
        check_text(f"texts[{i}]", t, max_chars)
    att = body.get("return_attention", True)
    if not isinstance(att, bool):
        raise Rejected("return_attention: must be true or false", "bad_request")
    return TextRequest(texts, att)


def check_text(field: str, text: Any, max_chars: int) -> str:
    """One text of a request (``/classify-text``'s or ``/feedback``'s): a string, not blank, within ``max_chars``."""
    if not isinstance(text, str):
        raise Rejected(f"{field}: must be a string, got {type(text).__name__}", "bad_request")
    if not text.strip():
        raise Rejected(f"{field}: empty; a text needs at least one non-space character", "empty_text")
    if len(text) > max_chars:
        raise Rejected(f"{field}: {len(text)} characters, the limit is {max_chars}", "too_long")
    return text


def check_tokens(counts: list[int], max_tokens: int) -> None:
    """Each text's token count (``<s>`` included) within the model's limit."""
    for i, n in enumerate(counts):
        if n > max_tokens:
            raise Rejected(f"texts[{i}]: {n} tokens, the limit is {max_tokens} (shorten the text)", "too_long")
