"""The classifier's ``/docs.json``: what BentoML's generated document leaves out, added on the way out.

BentoML documents the API methods (with the request limits from ``service.tasks.classify.schema``'s types and
the ``Prediction`` response schema). ``OpenAPIPatch`` sets the project's version and description, lists the
request limits, and documents ``GET /metadata``, ``GET /docs`` and the V2 routes (helpers:
``service.core.openapi``).
"""

from __future__ import annotations

from typing import Any

from service.core.openapi import DOCS_ROUTE, ERROR, GUARD_RESPONSES, DocsPatch, errors, set_info, v2_paths

METADATA_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "the name it is served under (GET /models)"},
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
MODEL_DOC = "a model this server serves (GET /models); default: the server's default model"
MODELS_SCHEMA = {
    "type": "object",
    "required": ["default", "models"],
    "properties": {
        "default": {"type": "string", "description": "the model a request without 'model' gets"},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "model_version", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "default_version": {"type": "boolean", "description": "the one a request without a version gets"},
                    "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                    "reason": {"type": "string"},
                    "served_because": {"type": "string"},
                    "follows": {"type": "string", "nullable": True, "description": "the champion pointer followed"},
                    "feedback": {"type": "boolean", "description": "POST /feedback stores its items"},
                    "source": {"type": "string"},
                },
            },
        },
    },
}
V2_SUMMARY = "Classify sequences (JSON, or binary tensors after an Inference-Header-Content-Length JSON header)"
V2_INPUTS = "x FP32 [B, T, F] (and lengths INT64 [B, 1])"


def patch_spec(
    spec: dict[str, Any], limits: dict[str, int], version: str, model_name: str | None = None
) -> dict[str, Any]:
    description = (
        "Variable-length sequence classification (RNN with attention, ONNX Runtime). Limits per request: "
        f"1..{limits['max_sequences']} sequences, 1..{limits['max_length']} time steps each, exactly the "
        "model's feature_dim numbers per step (see GET /metadata); a request outside them is a 400 naming the "
        "field and the limit."
    )
    set_info(spec, "seqserve", version, description, limits)
    paths = spec.setdefault("paths", {})
    query = [
        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}, "description": MODEL_DOC},
        {"name": "model_version", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    paths["/metadata"] = {
        "get": {
            "summary": "A served model (default: the server's default): classes, limits, provider in use",
            "tags": ["Service APIs"],
            "parameters": query,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": METADATA_SCHEMA}}},
                **errors(
                    {
                        "400": "an unknown query parameter (named)",
                        "404": "a model or version this server does not serve",
                        "503": "the model service is not ready",
                    }
                ),
            },
        }
    }
    paths["/models"] = {
        "get": {
            "summary": "Every model and version this server serves (SEQSERVE_MODELS), the default first",
            "tags": ["Service APIs"],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": MODELS_SCHEMA}}}},
        }
    }
    schemas = spec.get("components", {}).get("schemas", {})
    if "InvalidArgument" in schemas:  # BentoML's validation error: what leaves is THE error body (the guard)
        schemas["InvalidArgument"] = ERROR
    for route in ("/predict", "/predict_nobatch", "/feedback"):
        op = paths.get(route, {}).get("post")
        if op is not None:
            extra = {
                "400": "a field outside the model's limits, or one the route does not take (named)",
                **GUARD_RESPONSES,
                "404": "model_version: a version of the model this server does not serve (or swapped out)",
                "422": "the model's output is not finite for a sequence (input values overflow float32)",
                "504": "the deadline passed before the model ran the request",
            }
            if route == "/feedback":
                extra = {
                    "400": "an item outside the model's limits, a label not of its classes, an unknown field, a model "
                    "that does not take feedback (named)",
                    **GUARD_RESPONSES,
                    "503": "the database refused the write (disk full, read-only); nothing was stored",
                    "507": "the feedback store is full",
                }
            op["responses"].update(errors(extra))
    if model_name is not None:
        paths.update(v2_paths(model_name, V2_SUMMARY, V2_INPUTS))
    paths["/docs"] = DOCS_ROUTE
    return spec


class OpenAPIPatch(DocsPatch):
    """``/docs.json`` of the classifier (``patch_spec``)."""

    def __init__(self, app, limits: dict[str, int], model_name: str | None = None) -> None:  # noqa: ANN001
        super().__init__(app, limits)
        self.model_name = model_name

    def patch(self, spec: dict[str, Any]) -> dict[str, Any]:
        return patch_spec(spec, self.limits, self.version, self.model_name)
