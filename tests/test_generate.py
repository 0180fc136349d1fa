"""``POST /generate`` on a real ``bentoml serve service.generate_service:SeqGenerate`` (issue 12): JSON and
server-sent events, the same text alone and under concurrent load, a disconnected stream freeing its slot,
4xx errors naming the field, metrics, and a short ``make serve-generate`` end to end."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from api_policy import check_api_policy

from loadtest.procs import free_port, start_bentoml, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
LONG = 10_000_000


@pytest.fixture(scope="module")
def server(lm_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("generate_server")
    env = {"SEQSERVE_MODEL": str(lm_artifact), "BENTOML_HOME": str(tmp / "home"), "SEQSERVE_DATA_DIR": str(tmp)}
    env["SEQSERVE_GENERATE_MAX_NEW_TOKENS"] = str(LONG)  # a stream that outlives any test, to be cut off
    proc, url = start_bentoml(ROOT, env, tmp / "log.txt", target="service.generate_service:SeqGenerate")
    yield url
    stop_process(proc)


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        kind = next((ln[7:] for ln in block.splitlines() if ln.startswith("event: ")), "message")
        data = next(ln[6:] for ln in block.splitlines() if ln.startswith("data: "))
        out.append((kind, json.loads(data)))
    return out


def test_json_and_streamed_answers_agree(server: str, lm_artifact: Path) -> None:
    body = {"prompt": "First Citizen:\n", "max_new_tokens": 50, "seed": 11, "temperature": 0.8}
    plain = httpx.post(f"{server}/generate", json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    version = json.loads((lm_artifact / "metadata.json").read_text())["model_version"]
    assert answer["tokens"] == 50 and answer["finish_reason"] == "length" and answer["model_version"] == version
    assert answer["seed"] == 11 and answer["prompt_tokens"] == len(body["prompt"])
    streamed = httpx.post(f"{server}/generate", json={**body, "stream": True}, timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    evs = events(streamed.text)
    assert [k for k, _ in evs[:-1]] == ["message"] * (len(evs) - 1) and evs[-1][0] == "done"
    assert "".join(d["text"] for _, d in evs[:-1]) == answer["text"] == evs[-1][1]["text"]
    assert evs[-1][1]["tokens"] == 50


def test_same_seed_same_text_alone_and_under_load(server: str) -> None:
    body = {"prompt": "KING RICHARD", "max_new_tokens": 80, "seed": 5, "temperature": 1.0, "top_p": 0.9}
    alone = httpx.post(f"{server}/generate", json=body, timeout=60).json()["text"]

    def other(i: int) -> int:
        b = {"prompt": "A" * (1 + i % 40), "max_new_tokens": 20 + (i * 7) % 150, "seed": i}
        return httpx.post(f"{server}/generate", json=b, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        futures = [pool.submit(other, i) for i in range(96)]
        time.sleep(0.3)
        loaded = httpx.post(f"{server}/generate", json=body, timeout=120).json()["text"]
        assert all(f.result() == 200 for f in futures)
    assert loaded == alone


def open_generation(url: str, body: dict) -> socket.socket:
    """POST /generate on a raw socket, to be closed by the test; a streamed one returns once text has come."""
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while body.get("stream") and b"data: " not in received:  # it is generating
        received += sock.recv(65536)
    return sock


def active_streams(server: str) -> int:
    return httpx.get(f"{server}/metadata", timeout=10).json()["active_streams"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_disconnected_client_frees_its_slot(server: str, stream: bool) -> None:
    sock = open_generation(server, {"prompt": "HAMLET", "max_new_tokens": LONG, "stream": stream, "seed": 1})
    deadline = time.monotonic() + 10
    while active_streams(server) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active_streams(server) == 1
    sock.close()
    while active_streams(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_streams(server) == 0
    metrics = httpx.get(f"{server}/metrics").text
    assert 'seqserve_generate_requests_total{finish_reason="cancelled"}' in metrics


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": "x" * 5000}, "prompt: 5000 tokens, the limit is 4096"),
        ({"prompt": "a", "temperature": -0.5}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "num_beams": 4, "temperature": 0.5}, "num_beams"),
        ({"prompt": "a€"}, "vocabulary"),
        ({"prompt": "a", "max_new_tokens": LONG + 1}, "max_new_tokens: 10000001 is outside [1, 10000000]"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(server: str, body: dict, needle: str) -> None:
    r = httpx.post(f"{server}/generate", json=body, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_invalid_json_metadata_and_metrics(server: str, lm_artifact: Path) -> None:
    r = httpx.post(f"{server}/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["task"] == "generate" and meta["vocab_size"] == 66 and meta["provider"] == "CPUExecutionProvider"
    beams = httpx.post(f"{server}/generate", json={"prompt": "The", "num_beams": 4, "n_best": 2, "max_new_tokens": 12})
    assert beams.status_code == 200 and len(beams.json()["beams"]) == 2
    metrics = httpx.get(f"{server}/metrics").text
    for family in (
        "seqserve_generate_tokens_total",
        "seqserve_generate_ttft_seconds_bucket",
        "seqserve_generate_itl_seconds_bucket",
        "seqserve_generate_step_batch_streams_bucket",
        "seqserve_generate_step_seconds_bucket",
        "seqserve_generate_active_streams",
        'seqserve_generate_rejected_requests_total{reason="invalid_json"}',
    ):
        assert family in metrics, family


def test_make_serve_generate_end_to_end(tmp_path: Path) -> None:
    """The real make target on a small model: trains (seconds), exports, promotes, serves, answers."""
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "home"),
        "SEQSERVE_DATA_DIR": str(tmp_path / "data"),
        "SEQSERVE_WORKERS": "1",
    }
    args = ["make", "--no-print-directory", "serve-generate", f"PORT={port}", f"LM_RUN={tmp_path / 'run'}"]
    args += [f"LM_ARTIFACT={tmp_path / 'art'}", "LM_ARGS=--hidden 32 --embedding 16 --max-steps 10 --eval-every 1e9"]
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 300, proc, log)
        r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "To", "max_new_tokens": 5}, timeout=30)
        assert r.status_code == 200 and r.json()["tokens"] == 5, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/metadata").json()["served_because"] == "champion"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_promoted_language_models_swap_and_streams_finish_on_their_model(lm_artifact: Path, tmp_path: Path) -> None:
    """A promotion reaches the running server; a stream started before it ends on the model it started with,
    new requests get the new model."""
    from export.promote import promote
    from tests.conftest import SHAKESPEARE, train_tiny_lm
    from training.tasks.generate.export import export_lm_run

    other = tmp_path / "other"
    export_lm_run(train_tiny_lm(tmp_path / "run", SHAKESPEARE, "--seed", "2"), other)
    a, b = (json.loads((x / "metadata.json").read_text())["model_version"] for x in (lm_artifact, other))
    assert a != b
    data = tmp_path / "data"
    promote(str(lm_artifact), data)
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(data)}
    env.update({"SEQSERVE_RELOAD_INTERVAL_S": "0.3", "SEQSERVE_GENERATE_MAX_NEW_TOKENS": str(LONG)})
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt", target="service.generate_service:SeqGenerate")
    try:
        assert httpx.get(f"{url}/metadata").json()["model_version"] == a
        with (
            httpx.Client(timeout=120) as client,
            client.stream(
                "POST", f"{url}/generate", json={"prompt": "A", "max_new_tokens": 20000, "stream": True, "seed": 3}
            ) as old_stream,
        ):
            lines = old_stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # generating on a
            promote(str(other), data)
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/metadata").json()["model_version"] != b and time.monotonic() < deadline:
                time.sleep(0.2)
            new = httpx.post(f"{url}/generate", json={"prompt": "B", "max_new_tokens": 5}, timeout=60).json()
            assert new["model_version"] == b
            done = next(line for line in lines if line.startswith("event: done"))
            summary = json.loads(next(lines)[6:])
        assert done and summary["model_version"] == a and summary["tokens"] == 20000
        metrics = httpx.get(f"{url}/metrics").text
        assert "seqserve_model_swaps_total 1.0" in metrics
    finally:
        stop_process(proc)


def test_a_full_server_answers_429_and_recovers(lm_artifact: Path, tmp_path: Path) -> None:
    """All slots taken: a request waits (up to SEQSERVE_GENERATE_MAX_WAITING of them) and is dropped, never
    computed, if its deadline passes first (504); with the waiting room full too, a new request is a 429 with
    Retry-After at once (nothing queued, nothing lost); when the streams go, the waiting one runs and the
    server takes requests again."""
    env = {
        "SEQSERVE_MODEL": str(lm_artifact),
        "BENTOML_HOME": str(tmp_path / "home"),
        "SEQSERVE_DATA_DIR": str(tmp_path),
    }
    env.update({"SEQSERVE_GENERATE_STREAMS": "16", "SEQSERVE_GENERATE_MAX_WAITING": "1"})
    env["SEQSERVE_GENERATE_MAX_NEW_TOKENS"] = str(LONG)
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt", target="service.generate_service:SeqGenerate")
    socks, waiter = [], {}
    try:
        for _ in range(16):
            socks.append(open_generation(url, {"prompt": "A", "max_new_tokens": LONG, "stream": True}))
        short = {"prompt": "B", "max_new_tokens": 3}
        r = httpx.post(f"{url}/generate", json=short, headers={"x-request-deadline-ms": "300"}, timeout=30)
        assert r.status_code == 504 and "deadline" in r.json()["error"]["message"], r.text
        assert 'seqserve_deadline_dropped_total{task="generate"} 1.0' in httpx.get(f"{url}/metrics").text
        t = threading.Thread(target=lambda: waiter.update(r=httpx.post(f"{url}/generate", json=short, timeout=60)))
        t.start()
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/metadata").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(f"{url}/generate", json={"prompt": "B", "max_new_tokens": 3}, timeout=30)
        assert r.status_code == 429 and "capacity" in r.json()["error"]["message"], r.text
        assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
        assert 'seqserve_generate_rejected_requests_total{reason="busy"}' in httpx.get(f"{url}/metrics").text
        for sock in socks:
            sock.close()
        t.join(60)
        assert waiter["r"].status_code == 200 and waiter["r"].json()["tokens"] == 3  # the waiting one ran
        deadline = time.monotonic() + 15
        while active_streams(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        r = httpx.post(f"{url}/generate", json={"prompt": "B", "max_new_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["tokens"] == 3
    finally:
        for sock in socks:
            sock.close()
        stop_process(proc)


def test_one_api_policy(server: str) -> None:
    """Issue 29 (5): /generate shares the error body and the docs page (its /docs was a 404)."""
    check_api_policy(server, "/generate", {"prompt": "The", "max_new_tokens": 2}, ("/generate", "/metadata"))
    families = httpx.get(server + "/metrics").text
    for other in ("seqserve_model_calls", "seqserve_batch_size_sequences", "seqserve_queue_wait_seconds"):
        assert other not in families, other  # the classifier's batcher families: not empty series here (item 8)
