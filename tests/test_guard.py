"""Unit tests of the request guard (service/core/guard.py) and the per-request time-step limit, no server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import TypeAdapter, ValidationError

from service.core.guard import RequestGuard, RequestIdFilter, deadline, request_id
from service.tasks.classify.schema import feedback_type, sequences_type


def run(guard: RequestGuard, method: str, headers: dict, chunks: list[bytes], delay: float = 0.0) -> dict:
    """Drive ``guard`` like a server: the request's body in ``chunks``; what was sent back and what the app saw."""
    sent, seen = [], {}

    async def receive() -> dict:
        if not chunks:
            await asyncio.sleep(3600)
        await asyncio.sleep(delay)
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive, send) -> None:  # noqa: ANN001
        seen.update(headers=dict(scope["headers"]), rid=request_id(), deadline=deadline(), body=b"")
        while scope["method"] == "POST":
            m = await receive()
            if m["type"] == "http.disconnect":
                seen["disconnected"] = True
                break
            seen["body"] += m["body"]
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard.app = app
    scope = {"type": "http", "method": method, "path": "/predict", "headers": list(headers.items())}
    asyncio.run(guard(scope, receive, send))
    start = sent[0] if sent else {}
    return {"status": start.get("status"), "headers": dict(start.get("headers", [])), "seen": seen, "sent": sent}


def guard(**kw: object) -> RequestGuard:
    args = {"json_paths": ("/predict",), "max_body_bytes": 100, "body_timeout_s": 0.3, "deadline_ms": 1000.0}
    return RequestGuard(None, **(args | kw))


def test_good_request_passes_with_an_id_and_a_deadline() -> None:
    out = run(guard(), "POST", {b"content-type": b"application/json", b"x-request-id": b"abc-1"}, [b"{}"])
    assert out["status"] == 200 and out["headers"][b"x-request-id"] == b"abc-1" and out["seen"]["body"] == b"{}"
    assert out["seen"]["rid"] == "abc-1" and out["seen"]["deadline"] < float("inf")


def test_content_type_checks() -> None:
    assert run(guard(), "POST", {b"content-type": b"multipart/form-data"}, [b"{}"])["status"] == 415
    out = run(guard(), "POST", {}, [b"{}"])  # no type: read as JSON
    assert out["status"] == 200 and out["seen"]["headers"][b"content-type"] == b"application/json"
    out = run(guard(), "POST", {b"content-type": b"application/json; charset=utf-8"}, [b"{}"])
    assert out["status"] == 200


def test_body_limits_by_header_and_by_count() -> None:
    out = run(guard(), "POST", {b"content-length": b"101"}, [b"x" * 101])
    assert out["status"] == 413 and not out["seen"]  # the app never ran
    out = run(guard(), "POST", {}, [b"x" * 60, b"x" * 60])  # no length: counted as it arrives
    assert out["status"] == 413 and out["seen"]["disconnected"] and len(out["sent"]) == 2  # the app's answer dropped
    assert run(guard(), "POST", {b"content-length": b"lots"}, [b""])["status"] == 400


def test_slow_body_is_cut_off() -> None:
    out = run(guard(), "POST", {}, [b"x", b"x", b"x"], delay=0.2)
    assert out["status"] == 408 and out["seen"]["disconnected"]


def test_client_deadline_header_only_lowers_the_budget() -> None:
    out = run(guard(deadline_ms=1000.0), "GET", {b"x-request-deadline-ms": b"999999"}, [])
    low = run(guard(deadline_ms=1000.0), "GET", {b"x-request-deadline-ms": b"10"}, [])
    assert low["seen"]["deadline"] < out["seen"]["deadline"]
    assert run(guard(), "GET", {b"x-request-deadline-ms": b"x"}, [])["status"] == 400


def test_log_lines_name_the_request() -> None:
    record = logging.LogRecord("seqserve", logging.INFO, __file__, 1, "hello", (), None)
    assert RequestIdFilter().filter(record) and record.request_id == "-" and record.msg == "hello"


def test_request_time_steps_are_limited_in_all() -> None:
    seqs = TypeAdapter(sequences_type(2, 100, 64, max_steps=150))
    assert len(seqs.validate_python([[[0.0, 0.0]] * 75] * 2)) == 2
    with pytest.raises(ValidationError, match="sequences: 151 time steps in all, at most 150 per request"):
        seqs.validate_python([[[0.0, 0.0]] * 75, [[0.0, 0.0]] * 76])
    items = TypeAdapter(feedback_type(2, 100, ["a"], 64, max_steps=10))
    with pytest.raises(ValidationError, match="items: 11 time steps in all"):
        items.validate_python([{"sequence": [[0.0, 0.0]] * 11, "label": "a"}])
