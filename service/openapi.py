"""What BentoML's generated ``/docs.json`` leaves out, added on the way out (an ASGI middleware).

BentoML documents its own API methods (with the request limits from ``service.schema``'s types and the
``Prediction`` response schema) but gives version "None", its own contact, and no routes of mounted apps.
``OpenAPIPatch`` sets the project's version and description, lists the request limits, and documents
``GET /metadata`` and ``GET /docs``.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

METADATA_SCHEMA = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string", "description": "content hash of the served model"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "feature_dim": {"type": "integer", "description": "numbers per time step"},
        "max_length": {"type": "integer", "description": "most time steps accepted per sequence"},
        "max_sequences": {"type": "integer", "description": "most sequences per request"},
        "training_length_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "normalisation": {"type": "string", "enum": ["global", "series"]},
        "provider": {"type": "string", "description": "ONNX Runtime execution provider in use"},
        "provider_options": {"type": "object", "additionalProperties": {"type": "string"}},
        "provider_fallback": {"type": "string", "nullable": True, "description": "why auto is not on CUDA"},
        "load_check": {"type": "object", "nullable": True, "description": "the load-time reference check"},
        "device_requested": {"type": "string", "enum": ["auto", "cpu", "cuda"]},
        "ort_threads": {"type": "integer"},
        "model_workers": {"type": "integer"},
        "source": {"type": "string", "description": "model store tag or directory"},
        "rnn": {"type": "object"},
        "training_metrics": {"type": "object"},
    },
}


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
GUARD_RESPONSES = {  # what service.core.guard answers before a route runs
    "408": "the body did not arrive within SEQSERVE_BODY_TIMEOUT_S",
    "413": "the body is larger than SEQSERVE_MAX_BODY_BYTES",
    "415": "the body is not application/json",
}
TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string"},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}


def errors(codes: dict[str, str]) -> dict[str, Any]:
    """Responses with the ``{"error": ...}`` body, by status code."""
    return {k: {"description": v, "content": {"application/json": {"schema": ERROR}}} for k, v in codes.items()}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def v2_paths(model_name: str) -> dict[str, Any]:
    """The Open Inference Protocol routes (``service.core.protocol.v2``), so that clients and fuzzers see them."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": model_name}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    tag = ["Open Inference Protocol (V2)"]
    infer_body = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": TENSOR, "description": "x FP32 [B, T, F] (and lengths INT64 [B, 1])"},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "parameters": {"type": "object"},
        },
    }
    infer_ok = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": TENSOR},
        },
    }
    model_ok = {"type": "object", "required": ["name", "versions", "inputs", "outputs"]}
    ready_ok = {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}
    not_found = errors({"404": "not this model or version", "503": "the model service is not ready"})
    paths: dict[str, Any] = {
        "/v2": {"get": {"tags": tag, "summary": "Server metadata", "responses": {"200": _ok({"type": "object"})}}},
        "/v2/health/live": {"get": {"tags": tag, "summary": "Liveness", "responses": {"200": _ok(ready_ok)}}},
        "/v2/health/ready": {
            "get": {"tags": tag, "summary": "Readiness", "responses": {"200": _ok(ready_ok), **not_found}}
        },
    }
    for base, params in (("/v2/models/{name}", [name]), ("/v2/models/{name}/versions/{version}", [name, version])):
        paths[base] = {
            "get": {
                "tags": tag,
                "summary": "Model metadata",
                "parameters": params,
                "responses": {"200": _ok(model_ok), **not_found},
            }
        }
        paths[base + "/ready"] = {
            "get": {
                "tags": tag,
                "summary": "Model readiness",
                "parameters": params,
                "responses": {"200": _ok(ready_ok), **not_found},
            }
        }
        paths[base + "/infer"] = {
            "post": {
                "tags": tag,
                "summary": "Classify sequences (JSON, or binary tensors after an Inference-Header-Content-Length "
                "JSON header)",
                "parameters": params,
                "requestBody": {"required": True, "content": {"application/json": {"schema": infer_body}}},
                "responses": {
                    "200": _ok(infer_ok),
                    **errors({"400": "a tensor outside the model's limits (named)", **GUARD_RESPONSES}),
                    **not_found,
                    **errors(
                        {
                            "422": "the model's output is not finite for a sequence (input values overflow float32)",
                            "504": "the deadline passed before the model ran the request",
                        }
                    ),
                },
            }
        }
    return paths


def patch_spec(
    spec: dict[str, Any], limits: dict[str, int], version: str, model_name: str | None = None
) -> dict[str, Any]:
    info = spec.setdefault("info", {})
    info["title"] = "seqserve"
    info["version"] = version
    info.pop("contact", None)
    info["description"] = (
        "Variable-length sequence classification (RNN with attention, ONNX Runtime). Limits per request: "
        f"1..{limits['max_sequences']} sequences, 1..{limits['max_length']} time steps each, exactly the "
        "model's feature_dim numbers per step (see GET /metadata); a request outside them is a 400 naming the "
        "field and the limit."
    )
    info["x-seqserve-limits"] = limits
    paths = spec.setdefault("paths", {})
    paths["/metadata"] = {
        "get": {
            "summary": "The served model: classes, limits, provider in use",
            "tags": ["Service APIs"],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": METADATA_SCHEMA}}},
                "503": {"description": "the model service is not ready"},
            },
        }
    }
    detail = spec.get("components", {}).get("schemas", {}).get("InvalidArgument", {}).get("properties", {})
    if "detail" in detail:  # pydantic's error list for a body that fails validation
        detail["detail"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
    for route in ("/predict", "/predict_nobatch", "/feedback"):
        op = paths.get(route, {}).get("post")
        if op is not None:
            extra = {
                **GUARD_RESPONSES,
                "422": "the model's output is not finite for a sequence (input values overflow float32)",
                "504": "the deadline passed before the model ran the request",
            }
            if route == "/feedback":
                extra = {
                    **GUARD_RESPONSES,
                    "503": "the database refused the write (disk full, read-only); nothing was stored",
                    "507": "the feedback store is full",
                }
            op["responses"].update(errors(extra))
    if model_name is not None:
        paths.update(v2_paths(model_name))
    paths["/docs"] = {
        "get": {
            "summary": "This document's UI (redirects to /)",
            "tags": ["Infrastructure"],
            "responses": {"307": {"description": "redirect to the OpenAPI UI"}},
        }
    }
    return spec


class OpenAPIPatch:
    """ASGI middleware rewriting the body of ``GET /docs.json`` with ``patch_spec``."""

    def __init__(self, app, limits: dict[str, int], model_name: str | None = None) -> None:  # noqa: ANN001
        self.app, self.limits, self.model_name = app, limits, model_name
        try:
            self.version = importlib.metadata.version("seqserve")
        except importlib.metadata.PackageNotFoundError:
            self.version = "0+unknown"

    def patch(self, spec: dict[str, Any]) -> dict[str, Any]:
        return patch_spec(spec, self.limits, self.version, self.model_name)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"start": None, "body": b""}

        async def rewrite(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                state["start"] = message
                return
            state["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            start, body = state["start"], state["body"]
            if start["status"] == 200:
                body = json.dumps(self.patch(json.loads(body))).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


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
    """``POST /generate`` and ``GET /metadata`` of the language-model service (``service.generate``).
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
                "responses": {"200": _ok({"type": "object"}), **errors({"503": "the model service is not ready"})},
            }
        },
    }


class GenerateOpenAPIPatch(OpenAPIPatch):
    """``/docs.json`` of the language-model service: its routes and limits."""

    def __init__(self, app, limits: dict[str, int], **described: Any) -> None:  # noqa: ANN001
        super().__init__(app, limits)
        self.paths = generate_paths(limits, **described)

    def patch(self, spec: dict[str, Any]) -> dict[str, Any]:
        info = spec.setdefault("info", {})
        info.update(title="seqserve (text generation)", version=self.version, description=GENERATE_DESCRIPTION)
        info.pop("contact", None)
        info["x-seqserve-limits"] = self.limits
        spec.setdefault("paths", {}).update(self.paths)
        return spec


GENERATE_DESCRIPTION = (
    "Text generation with an RNN language model (ONNX Runtime), every decoding step of every request batched "
    "together. Limits: see x-seqserve-limits and GET /metadata; a request outside them is a 400 naming the field."
)
