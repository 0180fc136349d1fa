"""OpenAPI helpers every task's ``/docs.json`` uses: error bodies, the guard's answers, the V2 routes, and the
ASGI middleware that rewrites BentoML's generated document on the way out.

BentoML documents its own API methods (with the request limits from the tasks' pydantic types) but gives version
"None", its own contact, and no routes of mounted apps. Each task subclasses ``DocsPatch`` with a ``patch`` that
sets the project's version and description, lists the request limits, and adds the routes BentoML leaves out.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from typing import Any

ERROR = {  # THE error body of every JSON route (service.core.errors)
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field", "limit"],
            "properties": {
                "code": {"type": "string", "description": "stable reason, e.g. too_long, unknown_field, busy"},
                "message": {"type": "string", "description": "for people: names the field and the limit"},
                "field": {"type": "string", "nullable": True, "description": "the request field at fault"},
                "limit": {"type": "number", "nullable": True, "description": "the limit that field broke"},
            },
        }
    },
}
V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}  # the protocol's
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


def errors(codes: dict[str, str], schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    """Responses with the error body (THE one; the V2 routes': ``V2_ERROR``), by status code."""
    return {k: {"description": v, "content": {"application/json": {"schema": schema}}} for k, v in codes.items()}


def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def v2_paths(model_name: str, infer_summary: str, inputs_doc: str) -> dict[str, Any]:
    """The Open Inference Protocol routes (``service.core.protocol.v2``), so that clients and fuzzers see them.
    ``infer_summary`` and ``inputs_doc`` say what the task's infer route does and which tensors it takes."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": model_name}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    tag = ["Open Inference Protocol (V2)"]
    infer_body = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": TENSOR, "description": inputs_doc},
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
    not_found = errors({"404": "not this model or version", "503": "the model service is not ready"}, V2_ERROR)
    paths: dict[str, Any] = {
        "/v2": {"get": {"tags": tag, "summary": "Server metadata", "responses": {"200": ok({"type": "object"})}}},
        "/v2/health/live": {"get": {"tags": tag, "summary": "Liveness", "responses": {"200": ok(ready_ok)}}},
        "/v2/health/ready": {
            "get": {"tags": tag, "summary": "Readiness", "responses": {"200": ok(ready_ok), **not_found}}
        },
    }
    index_ok = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    }
    paths["/v2/repository/index"] = {
        "post": {"tags": tag, "summary": "Every model and version served", "responses": {"200": ok(index_ok)}}
    }
    for base, params in (("/v2/models/{name}", [name]), ("/v2/models/{name}/versions/{version}", [name, version])):
        paths[base] = {
            "get": {
                "tags": tag,
                "summary": "Model metadata",
                "parameters": params,
                "responses": {"200": ok(model_ok), **not_found},
            }
        }
        paths[base + "/ready"] = {
            "get": {
                "tags": tag,
                "summary": "Model readiness",
                "parameters": params,
                "responses": {"200": ok(ready_ok), **not_found},
            }
        }
        paths[base + "/infer"] = {
            "post": {
                "tags": tag,
                "summary": infer_summary,
                "parameters": params,
                "requestBody": {"required": True, "content": {"application/json": {"schema": infer_body}}},
                "responses": {
                    "200": ok(infer_ok),
                    **errors({"400": "a tensor outside the model's limits (named)", **GUARD_RESPONSES}, V2_ERROR),
                    **not_found,
                    **errors(
                        {
                            "422": "the model's output is not finite for a sequence (input values overflow float32)",
                            "504": "the deadline passed before the model ran the request",
                        },
                        V2_ERROR,
                    ),
                },
            }
        }
    return paths


DOCS_ROUTE = {
    "get": {
        "summary": "This reference: every route, self-hosted (HTML)",
        "tags": ["Infrastructure"],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
    }
}
_ADMIN = {"tags": ["Admin"], "security": [{"bearer": []}]}
_ADMIN_ERRORS = {"401": "missing or wrong Authorization: Bearer <SEQSERVE_ADMIN_TOKEN>",
                 "404": "SEQSERVE_ADMIN_TOKEN is not set: the admin routes are off"}  # fmt: skip
ADMIN_PATHS: dict[str, dict[str, Any]] = {  # service.core.admin
    "/admin/reload": {"post": {**_ADMIN, "summary": "Look at the champion pointer now (swap if it moved)",
                               "responses": {"200": ok({"type": "object"}), **errors(_ADMIN_ERRORS)}}},
    "/admin/retrain": {
        "get": {**_ADMIN, "summary": "The current or last retraining job and its report",
                "responses": {"200": ok({"type": "object"}), **errors(_ADMIN_ERRORS)}},
        "post": {**_ADMIN, "summary": "Queue a retraining job (202; the one queued or running if there is one)",
                 "responses": {"202": ok({"type": "object"}), **errors(_ADMIN_ERRORS)}},
    },
    "/admin/alert": {"post": {**_ADMIN, "summary": "Alertmanager webhook: a firing SeqserveInputDrift queues a job",
                              "responses": {"200": ok({"type": "object"}), "202": ok({"type": "object"}),
                                            **errors({"400": "not an Alertmanager payload", **_ADMIN_ERRORS})}}},
}  # fmt: skip


def set_info(spec: dict[str, Any], title: str, version: str, description: str, limits: dict[str, int]) -> None:
    """The document's ``info``: the project's title, version and description, and the request limits."""
    info = spec.setdefault("info", {})
    info.update(title=title, version=version, description=description)
    info.pop("contact", None)
    info["x-seqserve-limits"] = limits


def project_version() -> str:
    try:
        return importlib.metadata.version("seqserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class DocsPatch:
    """ASGI middleware rewriting the body of ``GET /docs.json`` with ``self.patch`` (a task overrides it)."""

    def __init__(self, app, limits: dict[str, int]) -> None:  # noqa: ANN001
        self.app, self.limits, self.version = app, limits, project_version()

    def patch(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            await self.app(scope, receive, send)
            return
        await patched_document(self.app, scope, receive, send, self.patch)


class RoutesPatch(DocsPatch):
    """A task's document: its title, description and request limits in ``info``, and its own routes (``paths``)
    added to BentoML's (each task's ``openapi.py`` builds them)."""

    def __init__(self, app, limits: dict[str, int], title: str, description: str, paths: dict[str, Any]) -> None:  # noqa: ANN001
        super().__init__(app, limits)
        self.title, self.description, self.paths = title, description, paths

    def patch(self, spec: dict[str, Any]) -> dict[str, Any]:
        set_info(spec, self.title, self.version, self.description, self.limits)
        spec.setdefault("paths", {}).update(self.paths)
        return spec


def text_list(max_items: int, max_chars: int, description: str) -> dict[str, Any]:
    """A JSON array of 1..``max_items`` texts, each non-blank and at most ``max_chars`` characters."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": r"\S"}
    return {"type": "array", "minItems": 1, "maxItems": max_items, "items": text, "description": description}


async def patched_document(
    app: Any, scope: dict, receive: Any, send: Any, patch: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Run ``app`` for ``GET /docs.json`` and send its document through ``patch`` (a 200 only), with the
    content length it then has. ``DocsPatch`` (a task's additions) and ``service.core.docs.DocsSite`` (every
    route served) both rewrite it this way."""
    state: dict[str, Any] = {"start": None, "body": b""}

    async def rewrite(message: dict) -> None:
        if message["type"] == "http.response.start":
            state["start"] = message
            return
        state["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        start, body = state["start"], state["body"]
        if start["status"] == 200:
            body = json.dumps(patch(json.loads(body))).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    await app(scope, receive, rewrite)
