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


def patch_spec(spec: dict[str, Any], limits: dict[str, int], version: str) -> dict[str, Any]:
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

    def __init__(self, app, limits: dict[str, int]) -> None:  # noqa: ANN001
        self.app, self.limits = app, limits
        try:
            self.version = importlib.metadata.version("seqserve")
        except importlib.metadata.PackageNotFoundError:
            self.version = "0+unknown"

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
                body = json.dumps(patch_spec(json.loads(body), self.limits, self.version)).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
