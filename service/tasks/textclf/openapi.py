"""The text classifier's ``/docs.json``: ``POST /classify-text`` with its limits, ``GET /metadata`` and the V2
routes (BYTES ``text``). Helpers: ``service.core.openapi``."""

from __future__ import annotations

from typing import Any

from service.core.openapi import GUARD_RESPONSES, RoutesPatch, errors, ok, text_list, v2_paths

V2_SUMMARY = "Classify texts: text BYTES [N] -> probabilities FP32 [N, C], label BYTES [N], attention FP32 [N, T]"
V2_INPUTS = "one tensor: text, BYTES [N] (UTF-8 strings; JSON data or Triton's binary tensor extension)"


def textclf_paths(limits: dict[str, int], classes: list[str]) -> dict[str, Any]:
    """``POST /classify-text`` and ``GET /metadata`` (``service.tasks.textclf.app``)."""
    texts = text_list(
        limits["max_texts"],
        limits["max_chars"],
        f"raw texts; each at most {limits['max_chars']} characters and {limits['max_tokens']} tokens with <s> (a "
        "longer one is a 400 naming it, never cut)",
    )
    body = {
        "type": "object",
        "required": ["texts"],
        "additionalProperties": False,
        "properties": {
            "texts": texts,
            "return_attention": {
                "type": "boolean",
                "default": True,
                "description": "each token's attention weight in the pooling (tokens, attention, start_attention)",
            },
        },
    }
    result = {
        "type": "object",
        "required": ["label", "probabilities"],
        "properties": {
            "label": {"type": "string", "enum": classes},
            "probabilities": {
                "type": "object",
                "properties": {c: {"type": "number", "minimum": 0, "maximum": 1} for c in classes},
                "additionalProperties": False,
            },
            "tokens": {"type": "array", "items": {"type": "string"}},
            "attention": {"type": "array", "items": {"type": "number"}},
            "start_attention": {"type": "number"},
        },
    }
    feedback = {
        "type": "object",
        "required": ["items"],
        "additionalProperties": False,
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits["max_texts"],
                "items": {
                    "type": "object",
                    "required": ["text", "label"],
                    "additionalProperties": False,
                    "properties": {"text": texts["items"], "label": {"type": "string", "enum": classes}},
                },
            }
        },
    }
    answer = {
        "type": "object",
        "required": ["results", "model_version"],
        "properties": {"results": {"type": "array", "items": result}, "model_version": {"type": "string"}},
    }
    return {
        "/classify-text": {
            "post": {
                "summary": "Label raw texts (probabilities by class, each token's attention weight)",
                "tags": ["Service APIs"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": ok(answer),
                    **errors(
                        {
                            "400": "a field outside its limit, an unknown field, a text too long (named)",
                            **GUARD_RESPONSES,
                            "503": "the model service is not ready",
                            "504": "the deadline passed before the model ran the request",
                        }
                    ),
                },
            }
        },
        "/feedback": {
            "post": {
                "summary": "Store labelled texts for retraining (python -m training textclf --feedback FILE)",
                "tags": ["Service APIs"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": feedback}}},
                "responses": {
                    "200": ok(
                        {"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer"}}}
                    ),
                    **errors(
                        {
                            "400": "an item outside the limits, a label not of the classes, an unknown field (named)",
                            **GUARD_RESPONSES,
                            "503": "the disk refused the write; nothing was stored",
                            "507": "the feedback file holds SEQSERVE_FEEDBACK_MAX_ITEMS items; nothing was stored",
                        }
                    ),
                },
            }
        },
        "/metadata": {
            "get": {
                "summary": "The served text classifier: classes, tokenizer, limits, provider in use, test scores",
                "tags": ["Service APIs"],
                "responses": {"200": ok({"type": "object"}), **errors({"503": "the model service is not ready"})},
            }
        },
    }


class TextClfOpenAPIPatch(RoutesPatch):
    """``/docs.json`` of the text classifier: its routes, limits and the V2 routes."""

    def __init__(self, app, limits: dict[str, int], classes: list[str], model_name: str) -> None:  # noqa: ANN001
        paths = {**textclf_paths(limits, classes), **v2_paths(model_name, V2_SUMMARY, V2_INPUTS)}
        super().__init__(app, limits, "seqserve (text classification)", DESCRIPTION, paths)


DESCRIPTION = (
    "Text classification with a pre-trained, fine-tuned RNN language model (ONNX Runtime): raw texts tokenized "
    "by the artifact's own tokenizer, batched across requests. Limits: see x-seqserve-limits and GET /metadata; "
    "a request outside them is a 400 naming the field."
)
