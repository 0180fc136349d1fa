"""Hostile input against a real server (issue 13): unsupported content types, huge and slow bodies, deep
nesting, non-numbers, request ids, deadlines and the bounded metric labels of unknown paths. Each gets a clear
4xx (or is cut off) and the server keeps answering everyone else."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from urllib.parse import urlparse

import httpx
import pytest

GOOD = {"sequences": [[[0.1] * 12] * 5]}
JSON_ROUTES = ("/predict", "/predict_nobatch", "/feedback")


def raw_request(url: str, head: bytes, body_parts: list[bytes] = (), pause: float = 0.0, timeout: float = 15.0):
    """Send ``head`` then each body part (``pause`` between them) on one socket; (status, body, seconds)."""
    u = urlparse(url)
    t0 = time.perf_counter()
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                time.sleep(pause)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the client finished: that is the point
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_end = data.index(b"\r\n\r\n")
    return int(data.split()[1]), data[head_end + 4 :], time.perf_counter() - t0


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("kind", ["multipart/form-data", "multipart/form-data; boundary=x", "text/plain"])
def test_unsupported_content_types_are_415(server: str, route: str, kind: str) -> None:
    r = httpx.post(server + route, content=json.dumps(GOOD), headers={"content-type": kind})
    assert r.status_code == 415, r.text
    assert "Content-Type" in r.json()["error"]["message"] and "application/json" in r.json()["error"]["message"]


def test_json_without_a_content_type_is_read_as_json(server: str) -> None:
    r = httpx.post(server + "/predict", content=json.dumps(GOOD).encode(), headers={"content-type": ""})
    assert r.status_code == 200, r.text
    head = f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: {len(json.dumps(GOOD))}\r\n\r\n".encode()
    status, body, _ = raw_request(server, head, [json.dumps(GOOD).encode()])
    assert status == 200 and json.loads(body)[0]["label"], body


def test_a_huge_body_is_413_before_it_is_read(server: str) -> None:
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 31000000\r\n\r\n"
    status, body, seconds = raw_request(server, head)  # not one byte of the body sent
    assert status == 413 and "SEQSERVE_MAX_BODY_BYTES" in json.loads(body)["error"]["message"], body
    assert seconds < 3


def test_a_chunked_body_is_cut_off_at_the_limit(server: str) -> None:
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    piece = b"[" + b"0.1," * 262_000  # ~1 MB a chunk; 12 chunks are over the 8 MiB default
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 12
    status, body, _ = raw_request(server, head, chunks)
    assert status == 413 and "over" in json.loads(body)["error"]["message"], body


def test_a_trickling_client_is_cut_off_and_others_are_served(server: str) -> None:
    body = json.dumps(GOOD).encode()
    head = f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    result = {}

    def trickle() -> None:
        result["slow"] = raw_request(server, head.encode(), [body[i : i + 1] for i in range(len(body))], pause=0.05)

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(0.5)
    for _ in range(5):  # meanwhile everyone else is answered
        assert httpx.post(server + "/predict", json=GOOD, timeout=10).status_code == 200
    t.join(30)
    status, answer, seconds = result["slow"]
    assert status == 408 and "SEQSERVE_BODY_TIMEOUT_S" in json.loads(answer)["error"]["message"], answer
    assert seconds < 10  # the session server's limit is 3 s


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"[" * 100_000 + b"]" * 100_000, ""),  # deeply nested
        (b'{"sequences": ' + b"[" * 5000 + b"]" * 5000 + b"}", ""),
        (b'{"sequences": [[[NaN, 1,1,1,1,1,1,1,1,1,1,1]]]}', ""),
        (b'{"sequences": [[[Infinity, 1,1,1,1,1,1,1,1,1,1,1]]]}', ""),
        (b'{"sequences": [[["1", 1,1,1,1,1,1,1,1,1,1,1]]]}', "is not a number"),
        (b'{"sequences": [[[1e999, 1,1,1,1,1,1,1,1,1,1,1]]]}', ""),
        (b'{"sequences": "' + b"x" * 1000 + b'"}', "must be a list"),
        (b"\xff\xfe\x00", ""),
    ],
    ids=["nested", "nested-sequences", "nan", "infinity", "string", "1e999", "long-string", "not-utf8"],
)
def test_hostile_json_is_a_clear_4xx(server: str, raw: bytes, needle: str) -> None:
    r = httpx.post(server + "/predict", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert needle in r.text


def test_a_million_tiny_sequences_and_one_at_the_limit(server: str) -> None:
    many = b'{"sequences": [' + b",".join([b"[[0]]"] * 1_000_000) + b"]}"
    r = httpx.post(server + "/predict", content=many, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and "1000000 sequences, must be 1..64" in r.text, r.text[:300]
    biggest = {"sequences": [[[0.123456789] * 12] * 64]}  # max_length x feature_dim (the session server's 64)
    assert httpx.post(server + "/predict", json=biggest, timeout=30).status_code == 200


def test_unicode_labels_in_feedback_are_named(server: str) -> None:
    body = {"items": [{"sequence": [[0.1] * 12] * 3, "label": "猫\u202e🐍"}]}
    r = httpx.post(server + "/feedback", json=body)
    assert r.status_code == 400 and "is not a class of this model" in r.text, r.text


def test_every_response_carries_a_request_id(server: str) -> None:
    mine = "client-" + uuid.uuid4().hex[:8]
    r = httpx.post(server + "/predict", json=GOOD, headers={"x-request-id": mine})
    assert r.status_code == 200 and r.headers["x-request-id"] == mine
    for bad_id in ("", "a b", "x" * 200):  # not a usable id: the server makes one
        r = httpx.post(server + "/predict", json={"sequences": []}, headers={"x-request-id": bad_id})
        assert r.status_code == 400 and len(r.headers["x-request-id"]) == 32
    assert httpx.get(server + "/nope").headers["x-request-id"]


def test_a_request_past_its_deadline_is_dropped_not_computed(server: str) -> None:
    def dropped() -> float:
        text = httpx.get(server + "/metrics").text
        lines = [x for x in text.splitlines() if x.startswith('seqserve_deadline_dropped_total{task="classify"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = dropped()
    r = httpx.post(server + "/predict", json=GOOD, headers={"x-request-deadline-ms": "0"})
    assert r.status_code == 504 and "deadline" in r.json()["error"]["message"], r.text
    assert dropped() == before + 1
    assert httpx.post(server + "/predict", json=GOOD, headers={"x-request-deadline-ms": "5000"}).status_code == 200
    r = httpx.post(server + "/predict", json=GOOD, headers={"x-request-deadline-ms": "soon"})
    assert r.status_code == 400 and "X-Request-Deadline-Ms" in r.text


def test_unknown_paths_share_one_metric_label(server: str) -> None:
    paths = [f"/random-{uuid.uuid4().hex}" for _ in range(3)]
    for p in paths:
        assert httpx.get(server + p).status_code == 404
        assert httpx.post(server + p, json={}).status_code in (404, 405)
    text = httpx.get(server + "/metrics").text
    assert not any(p in text for p in paths)
    assert 'endpoint="/{unknown}"' in text
