"""The language model's ``/docs.json``: ``POST /generate`` (JSON or server-sent events) and ``GET /metadata``
(helpers: ``service.core.openapi``)."""

from __future__ import annotations

from typing import Any

from service.core.openapi import GUARD_RESPONSES, RoutesPatch, errors, ok

SSE_EVENT = {  # one server-sent event: text chunks as plain data, then ``done`` (or ``error``) with JSON data
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "done", "error"]},
        "data": {"type": "string", "description": "JSON: {text, tokens} per chunk; the answer with done"},
    },
}


def generate_paths(
    limits: dict[str, int], vocab_size: int, forms: list[str], alphabet: str, empty_prompt: bool
) -> dict[str, Any]:
    """``POST /generate`` and ``GET /metadata`` of the language-model service (``service.tasks.generate.app``).
    ``alphabet``: the characters a prompt may hold (the model's vocabulary less its special tokens)."""
    escaped = "".join("\\" + c if c in "\\]^-[" else c for c in alphabet)
    integer = lambda low, high, default: {"type": "integer", "minimum": low, "maximum": high, "default": default}  # noqa: E731
    body = {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 0 if empty_prompt else 1,
                "maxLength": limits["max_prompt_tokens"] - (1 if empty_prompt else 0),
                "pattern": f"^[{escaped}]*$",
                "description": "text to continue; each character must be in the model's vocabulary (else a 400)",
            },
            "max_new_tokens": integer(1, limits["max_new_tokens"], 64),
            "temperature": {"type": "number", "minimum": 0, "maximum": 100, "default": 1.0},
            "top_k": integer(0, vocab_size, 0),
            "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "default": 1.0},
            "seed": integer(0, 2**63 - 1, None),
            "stop": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": 64},
                    {"type": "array", "maxItems": 8, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
                ]
            },
            "num_beams": integer(1, limits["max_beams"], 1),
            "n_best": {"type": "integer", "minimum": 1, "maximum": limits["max_beams"], "default": 1},
            "logprobs": {"type": "boolean", "default": False},
            "form": {"type": "string", "enum": forms} if forms else {"type": "string"},
            "acrostic": {"type": "string"},
            "constraint": {"type": "object"},
            "stream": {"type": "boolean", "default": False},
        },
    }
    answer = {
        "type": "object",
        "required": ["text", "tokens", "finish_reason", "model_version", "seed"],
        "properties": {
            "text": {"type": "string"},
            "tokens": {"type": "integer"},
            "finish_reason": {"type": "string", "enum": ["length", "stop", "end"]},
            "prompt_tokens": {"type": "integer"},
            "model_version": {"type": "string"},
            "seed": {"type": "integer"},
            "logprobs": {"type": "array", "items": {"type": "number"}},
            "score": {"type": "number", "nullable": True},
            "beams": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {
        "/generate": {
            "post": {
                "summary": "Continue a prompt (sampling or beam search); JSON, or server-sent events with stream",
                "tags": ["Service APIs"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": {
                        "description": "the answer (JSON), or the stream (text/event-stream) when stream is true",
                        "content": {
                            "application/json": {"schema": answer},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **errors(
                        {
                            "400": "a field outside its limit (named)",
                            **GUARD_RESPONSES,
                            "429": "every generation slot is busy and the waiting room full (see Retry-After)",
                            "504": "the deadline passed while the request waited for a slot",
                        }
                    ),
                },
            }
        },
        "/metadata": {
            "get": {
                "summary": "The served language model: vocabulary size, limits, forms, provider in use",
                "tags": ["Service APIs"],
                "responses": {"200": ok({"type": "object"}), **errors({"503": "the model service is not ready"})},
            }
        },
    }


class GenerateOpenAPIPatch(RoutesPatch):
    """``/docs.json`` of the language-model service: its routes and limits."""

    def __init__(self, app, limits: dict[str, int], **described: Any) -> None:  # noqa: ANN001
        paths = generate_paths(limits, **described)
        super().__init__(app, limits, "seqserve (text generation)", GENERATE_DESCRIPTION, paths)


GENERATE_DESCRIPTION = (
    "Text generation with an RNN language model (ONNX Runtime), every decoding step of every request batched "
    "together. Limits: see x-seqserve-limits and GET /metadata; a request outside them is a 400 naming the field."
)
