"""The translator's ``/docs.json``: ``POST /translate`` (JSON or server-sent events) and ``GET /metadata``
(helpers: ``service.core.openapi``)."""

from __future__ import annotations

from typing import Any

from service.core.decoding.beam import STOPPING
from service.core.openapi import GUARD_RESPONSES, RoutesPatch, errors, ok, text_list
from service.tasks.translate.params import DEFAULT_BEAM, DEFAULT_STOPPING, MAX_PENALTY, MAX_TEXT_CHARS

SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "sentence", "done", "error"]},
        "data": {
            "type": "string",
            "description": "JSON: {index, text, tokens} per chunk; sentence: one text's translation; done: the answer",
        },  # fmt: skip
    },
}


def translate_paths(limits: dict[str, int], vocab_size: int) -> dict[str, Any]:
    """``POST /translate`` and ``GET /metadata`` of the translator (``service.tasks.translate.app``)."""
    integer = lambda low, high, default: {"type": "integer", "minimum": low, "maximum": high, "default": default}  # noqa: E731
    number = lambda low, high, default: {"type": "number", "minimum": low, "maximum": high, "default": default}  # noqa: E731
    body = {
        "type": "object",
        "required": ["texts"],
        "additionalProperties": False,
        "properties": {
            "texts": text_list(
                limits["max_texts"],
                MAX_TEXT_CHARS,
                f"source sentences; each at most {limits['max_source_tokens']} tokens with </s> (a longer one is a "
                "400, never cut)",
            ),
            "beam_size": integer(1, limits["max_beams"], DEFAULT_BEAM),
            "length_penalty": number(0, MAX_PENALTY, 1.0),
            "coverage_penalty": number(0, MAX_PENALTY, 0.0),
            "n_best": integer(1, limits["max_beams"], 1),
            "early_stopping": {
                "type": "string",
                "enum": list(STOPPING),
                "default": DEFAULT_STOPPING,
                "description": "when a beam search stops: heuristic (Hugging Face's default), never (exact), first",
            },
            "max_decoding_length": integer(1, limits["max_target_tokens"], None),
            "sampling": {
                "type": "object",
                "nullable": True,
                "additionalProperties": False,
                "properties": {
                    "temperature": number(0, 100, 1.0),
                    "top_k": integer(0, vocab_size, 0),
                    "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 1.0},
                    "seed": integer(0, 2**62, None),
                },
            },
            "return_attention": {"type": "boolean", "default": False},
            "return_scores": {"type": "boolean", "default": True},
            "target_prefix": {
                "type": "array",
                "nullable": True,
                "items": {"type": "string", "nullable": True, "maxLength": MAX_TEXT_CHARS},
                "description": "one prefix (or null) per text",
            },
            "stream": {"type": "boolean", "default": False},
        },
        "x-seqserve-rules": [
            f"texts x beam_size <= {limits['max_rows']}",
            "n_best <= beam_size",
            "sampling: beam_size 1",
            "coverage_penalty > 0: beam_size > 1",
            "stream: beam_size 1",
            "target_prefix: as many entries as texts",
        ],
    }
    hypothesis = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "score": {"type": "number"},
            "tokens": {"type": "integer"},
            "finish_reason": {"type": "string", "enum": ["end", "length"]},
            "attention": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "source_pieces": {"type": "array", "items": {"type": "string"}},
            "target_pieces": {"type": "array", "items": {"type": "string"}},
        },
    }
    answer = {
        "type": "object",
        "required": ["translations", "model_version"],
        "properties": {
            "translations": {
                "type": "array",
                "items": {
                    **hypothesis,
                    "properties": {**hypothesis["properties"], "hypotheses": {"type": "array", "items": hypothesis}},
                },
            },  # fmt: skip
            "model_version": {"type": "string"},
            "source_tokens": {"type": "array", "items": {"type": "integer"}},
            "seed": {"type": "integer"},
        },
    }
    return {
        "/translate": {
            "post": {
                "summary": "Translate sentences (beam search, greedy or sampling); JSON, or server-sent events",
                "tags": ["Service APIs"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": {
                        "description": "the answer (JSON), or the stream (text/event-stream) when stream is true",
                        "content": {"application/json": {"schema": answer}, "text/event-stream": {"schema": SSE_EVENT}},
                    },
                    **errors(
                        {
                            "400": "a field outside its limit (named)",
                            **GUARD_RESPONSES,
                            "429": "every decoder slot is busy and the waiting room full (see Retry-After)",
                            "504": "the deadline passed while the request waited for a slot",
                        }
                    ),
                },
            }
        },
        "/metadata": {
            "get": {
                "summary": "The served translator: vocabulary, limits, provider in use, held-out scores",
                "tags": ["Service APIs"],
                "responses": {"200": ok({"type": "object"}), **errors({"503": "the model service is not ready"})},
            }
        },
    }


class TranslateOpenAPIPatch(RoutesPatch):
    """``/docs.json`` of the translator: its routes and limits."""

    def __init__(self, app, limits: dict[str, int], vocab_size: int) -> None:  # noqa: ANN001
        paths = translate_paths(limits, vocab_size)
        super().__init__(app, limits, "seqserve (translation)", TRANSLATE_DESCRIPTION, paths)


TRANSLATE_DESCRIPTION = (
    "Translation with an RNN encoder-decoder with attention (ONNX Runtime): source sentences of arriving requests "
    "encoded together, every decoding step of every beam of every sentence batched together. Limits: see "
    "x-seqserve-limits and GET /metadata; a request outside them is a 400 naming the field."
)
