"""What every request passes before any parsing (issue 13): an ASGI middleware on both API services.

``RequestGuard``, in order:

* **Request id.** ``X-Request-ID`` from the client (up to 128 characters of ``[A-Za-z0-9._:-]``) or a new one;
  every response carries it and every log line written while the request runs names it (``RequestIdFilter``).
* **Deadline.** ``X-Request-Deadline-Ms`` (the client's budget for this request, counted from arrival), capped
  by ``SEQSERVE_DEADLINE_MS``; ``deadline()`` gives it to the code that queues work, which drops a request
  whose deadline has passed instead of computing it (504).
* **Content type.** The JSON routes take ``application/json``; a body without a ``Content-Type`` is read as
  JSON; any other type (``multipart/form-data`` with or without a boundary, form posts, text) is a 415 that
  names the expected type. The V2 routes parse their own bodies (JSON or binary) and are left alone.
* **Body size.** A ``Content-Length`` over ``SEQSERVE_MAX_BODY_BYTES`` is a 413 before a byte is read; without
  one (chunked), the bytes are counted as they arrive and the request is cut off with a 413 at the limit.
* **Slow bodies.** A body that has not fully arrived ``SEQSERVE_BODY_TIMEOUT_S`` after the request began is
  cut off with a 408 (a client trickling bytes holds no worker).
* **One error body.** Every error answer of a JSON route leaves in the one shape of ``service.core.errors``
  (``{"error": {"code", "message", "field", "limit"}}``): the framework's plain-text errors (404, 405), BentoML's
  validation errors (pydantic's internals dropped) and every ``{"error": message}`` of the routes. The V2
  routes keep the protocol's ``{"error": message}``.

``bound_metric_paths`` keeps BentoML's request metrics bounded: its ``endpoint`` label takes the raw path, so
every path anyone sends would become a series. Known routes keep their path, V2 paths become their route
template, everything else ``/{unknown}``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from service.core import stages
from service.core.errors import error_body, normalise

log = logging.getLogger("seqserve")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("seqserve_request_id", default="-")
DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("seqserve_deadline", default=float("inf"))
GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
INFRA_PATHS = ("/", "/docs.json", "/healthz", "/livez", "/readyz", "/metrics")
UNKNOWN_PATH = "/{unknown}"


class Rejected(Exception):
    """A request refused: the message names the field and the limit, ``reason`` labels the task's rejection
    counter, ``status`` is the HTTP code. Every task's refusals are this type (or a subclass naming where they
    come from: ``GenerateError``, ``V2Error``, ``DeadlinePassed``); ``service.core.app.refuse`` answers one."""

    def __init__(self, message: str, reason: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.reason, self.status = reason, status


class DeadlinePassed(Rejected):
    """The request's deadline passed before the model ran it."""

    def __init__(self) -> None:
        super().__init__(
            "deadline: passed before the model ran the request (X-Request-Deadline-Ms, SEQSERVE_DEADLINE_MS)",
            reason="deadline",
            status=504,
        )


async def json_body(request: Any) -> Any:
    """A route's JSON body (a Starlette request); ``Rejected`` (400 ``invalid_json``) when it is not JSON."""
    try:
        return json.loads(await request.body())
    except ValueError:
        raise Rejected("body: not valid JSON", "invalid_json") from None


def deadline() -> float:
    """The running request's deadline, a ``time.perf_counter()`` value (inf when it has none)."""
    return DEADLINE.get()


def request_id() -> str:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record and appends it to the message of records written inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        if rid != "-" and not getattr(record, "_seqserve_rid", False):
            record.msg = f"{record.msg} [request_id={rid}]"
            record._seqserve_rid = True
        return True


def install_log_filter() -> None:
    """Name the request in our log lines and in BentoML's (its request and access logs)."""
    for name in ("seqserve", "bentoml._internal.server.http_app", "bentoml.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
            logger.addFilter(RequestIdFilter())


def _error(status: int, message: str, rid: str, v2: bool = False, code: str | None = None) -> tuple[dict, dict]:
    """THE error body (``service.core.errors``); the V2 routes' protocol shape ``{"error": message}``."""
    body = json.dumps({"error": message} if v2 else error_body(status, message, code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
        (b"connection", b"close"),
    ]
    return {"type": "http.response.start", "status": status, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


class RequestGuard:
    """The ASGI middleware (see the module doc)."""

    def __init__(
        self,
        app: Any,
        json_paths: tuple[str, ...],
        max_body_bytes: int,
        body_timeout_s: float,
        deadline_ms: float,
        on_reject: Callable[[str, str], None] = lambda reason, path: None,
    ) -> None:
        self.app, self.json_paths, self.on_reject = app, json_paths, on_reject
        self.max_body, self.body_timeout, self.deadline_ms = max_body_bytes, body_timeout_s, deadline_ms
        install_log_filter()

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        timeline = stages.begin(started)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if GOOD_ID.fullmatch(given) else uuid.uuid4().hex
        REQUEST_ID.set(rid)
        v2 = scope["path"].startswith("/v2")  # the protocol's own error shape
        budget = self.deadline_ms or float("inf")
        asked = headers.get(b"x-request-deadline-ms")
        if asked is not None:
            try:
                budget = min(budget, max(0.0, float(asked)))
            except ValueError:
                wrong = "X-Request-Deadline-Ms: must be a number of milliseconds"
                await self._send_error(v2, send, 400, wrong, rid, "bad_deadline")
                self.on_reject("bad_deadline", scope["path"])
                return
        DEADLINE.set(started + budget / 1000)
        responded = False
        plain: dict[str, Any] = {}  # a plain-text error of the framework (404, 405), rewritten as JSON
        held: dict[str, Any] = {}  # a JSON error of a route, rewritten in THE shape (service/core/errors.py)

        async def send_with_id(message: dict) -> None:
            if responded:  # the guard answered already (413/408 mid-body): the app's answer goes nowhere
                return
            if message["type"] == "http.response.start":
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and kind.startswith(b"text/plain"):
                    plain.update(status=message["status"], body=b"")
                    return
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
                if message["status"] >= 400 and kind.startswith(b"application/json") and not v2:
                    held.update(start=message, body=b"")
                    return
            elif held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held["start"]
                reason = dict(start["headers"]).get(b"x-seqserve-reason", b"").decode() or None
                body = normalise(start["status"], held["body"], reason) or held["body"]
                kept = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            elif plain and message["type"] == "http.response.body":
                plain["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                text = plain["body"].decode("utf-8", "replace").strip() or "error"
                where = f"{text}: {scope['method']} {scope['path']}"[:300]
                await self._send_error(v2, send, plain["status"], where, rid)
                return
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            problem = self._check_headers(scope, headers)
            if problem is not None:
                await self._send_error(v2, send, *problem[:2], rid, problem[2])
                self.on_reject(problem[2], scope["path"])
                return
            if not headers.get(b"content-type", b"").strip() and scope["path"] in self.json_paths:
                kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}

        received, body_done = 0, scope["method"] not in ("POST", "PUT", "PATCH")

        async def guarded_receive() -> dict:
            nonlocal received, body_done, responded
            if body_done:
                return await receive()
            left = started + self.body_timeout - time.perf_counter()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                await self._send_error(
                    v2, send, 408, f"body: not complete within {self.body_timeout:g} s (SEQSERVE_BODY_TIMEOUT_S)", rid
                )
                responded = True
                self.on_reject("body_timeout", scope["path"])
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    await self._send_error(v2, send, 413, self._too_large(received, "over"), rid)
                    responded = True
                    self.on_reject("body_too_large", scope["path"])
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send_with_id)
        stages.finish(timeline, time.perf_counter())

    def _check_headers(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        """(status, message, reason) when the headers alone condemn the request."""
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "Content-Length: not an integer", "bad_length"
            if n > self.max_body:
                return 413, self._too_large(n, ""), "body_too_large"
        kind = headers.get(b"content-type", b"").strip()
        if kind and scope["path"] in self.json_paths:
            media = kind.split(b";")[0].strip().lower()
            if media != b"application/json":
                shown = media.decode("latin-1")[:80]
                return (
                    415,
                    f"Content-Type: {shown} is not supported here; send the body as application/json",
                    "content_type",
                )
        return None

    def _too_large(self, n: int, qualifier: str) -> str:
        size = f"{qualifier} {n:,}" if qualifier else f"{n:,}"
        return f"body: {size.strip()} bytes, the limit is {self.max_body:,} bytes (SEQSERVE_MAX_BODY_BYTES)"

    async def _send_error(
        self, v2: bool, send: Callable, status: int, message: str, rid: str, code: str | None = None
    ) -> None:
        log.debug("seqserve: rejected (%d): %s", status, message)  # a client's error: counted, not logged at INFO
        start, body = _error(status, message, rid, v2, code)
        await send(start)
        await send(body)
