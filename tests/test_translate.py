"""``POST /translate`` on a real ``bentoml serve service.translate_service:SeqTranslate`` (issue 25): JSON and
server-sent events, the same hypotheses alone and among 32 concurrent requests, 4xx errors naming the field,
metadata and metrics, a promotion swapping the model under load, and ``make serve-translate`` end to end."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from api_policy import check_api_policy, fuzz

from loadtest.procs import free_port, start_bentoml, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
TEXTS = ["Es gibt sie.", "Wie die Mutter, so die Tochter.", "Das ist gut.", "Ich komme morgen."]


@pytest.fixture(scope="module")
def server(translate_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("translate_server")
    env = {"SEQSERVE_MODEL": str(translate_artifact), "BENTOML_HOME": str(tmp / "home"), "SEQSERVE_DATA_DIR": str(tmp)}
    proc, url = start_bentoml(ROOT, env, tmp / "log.txt", target="service.translate_service:SeqTranslate")
    yield url
    stop_process(proc)


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        kind = next((ln[7:] for ln in block.splitlines() if ln.startswith("event: ")), "message")
        data = next(ln[6:] for ln in block.splitlines() if ln.startswith("data: "))
        out.append((kind, json.loads(data)))
    return out


def test_json_and_streamed_answers_agree(server: str, translate_artifact: Path) -> None:
    body = {"texts": TEXTS, "beam_size": 1}
    plain = httpx.post(f"{server}/translate", json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    version = json.loads((translate_artifact / "metadata.json").read_text())["model_version"]
    assert answer["model_version"] == version and len(answer["translations"]) == len(TEXTS)
    assert all({"text", "score", "tokens", "finish_reason"} <= set(t) for t in answer["translations"])
    streamed = httpx.post(f"{server}/translate", json={**body, "stream": True}, timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    evs = events(streamed.text)
    assert evs[-1][0] == "done" and evs[-1][1]["translations"] == answer["translations"]
    for i, t in enumerate(answer["translations"]):
        chunks = "".join(d["text"] for k, d in evs if k == "message" and d["index"] == i)
        sentence = next(d for k, d in evs if k == "sentence" and d["index"] == i)
        assert sentence["text"] == t["text"] and t["text"].startswith(chunks[: len(t["text"])])


def test_the_same_hypotheses_alone_and_among_32_concurrent_requests(server: str) -> None:
    body = {"texts": TEXTS[:2], "beam_size": 5, "n_best": 3, "length_penalty": 0.6, "coverage_penalty": 0.2}
    alone = httpx.post(f"{server}/translate", json=body, timeout=60).json()

    def other(i: int) -> int:
        b = {"texts": [TEXTS[i % 4], TEXTS[(i + 1) % 4]][: 1 + i % 2], "beam_size": 1 + i % 8}
        return httpx.post(f"{server}/translate", json=b, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(other, i) for i in range(64)]
        time.sleep(0.2)
        loaded = httpx.post(f"{server}/translate", json=body, timeout=120).json()
        assert all(f.result() == 200 for f in futures)
    assert hypotheses(loaded) == hypotheses(alone)
    for t in alone["translations"]:
        scores = [h["score"] for h in t["hypotheses"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def hypotheses(answer: dict) -> list:
    return [[(h["text"], h["tokens"], round(h["score"], 4)) for h in t["hypotheses"]] for t in answer["translations"]]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"texts": []}, "texts: required"),
        ({"texts": ["Hallo."], "foo": 1}, "foo: unknown field"),
        ({"texts": ["Hallo."], "beam_size": 17}, "beam_size: 17 is outside [1, 16]"),
        ({"texts": ["Wort " * 30]}, "tokens with </s>, the limit is 24"),
        ({"texts": ["Hallo."] * 65}, "texts: 65 texts, the limit is 64"),
        ({"texts": ["Hallo."], "sampling": {"temperature": -1}}, "sampling.temperature"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(server: str, body: dict, needle: str) -> None:
    r = httpx.post(f"{server}/translate", json=body, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_invalid_json_metadata_attention_prefix_and_metrics(server: str) -> None:
    r = httpx.post(f"{server}/translate", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["task"] == "translate" and meta["provider"] == "CPUExecutionProvider"
    assert meta["limits"]["max_source_tokens"] == 24 and meta["vocab_size"] == 300
    body = {"texts": TEXTS[:1], "beam_size": 3, "return_attention": True, "target_prefix": ["They"]}
    t = httpx.post(f"{server}/translate", json=body, timeout=60).json()["translations"][0]
    h = t["hypotheses"][0]
    assert t["text"].startswith("They") and len(h["attention"]) == len(h["source_pieces"])
    assert all(len(row) == len(h["target_pieces"]) == h["tokens"] for row in h["attention"])
    sampled = {"texts": TEXTS[:2], "beam_size": 1, "sampling": {"temperature": 0.9}}
    a = httpx.post(f"{server}/translate", json=sampled, timeout=60).json()
    b = httpx.post(f"{server}/translate", json={**sampled, "sampling": {"temperature": 0.9, "seed": a["seed"]}}).json()
    assert a["translations"] == b["translations"]  # the seed the server chose reproduces the samples
    docs = httpx.get(f"{server}/docs.json").json()
    assert (
        docs["paths"]["/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"][
            "texts"
        ]["maxItems"]
        == 64
    )
    metrics = httpx.get(f"{server}/metrics").text
    for family in (
        "seqserve_translate_source_tokens_total",
        "seqserve_translate_target_tokens_total",
        "seqserve_translate_beams_bucket",
        "seqserve_translate_decode_steps_total",
        "seqserve_translate_step_batch_rows_bucket",
        "seqserve_translate_batch_fill_ratio_bucket",
        "seqserve_translate_encode_batch_sentences_bucket",
        "seqserve_translate_active_sentences",
        'seqserve_translate_rejected_requests_total{reason="invalid_json"}',
        'seqserve_translate_sentences_total{finish_reason="end"}',
    ):
        assert family in metrics, family


def test_a_promotion_swaps_the_translator_under_load(translate_artifact: Path, tmp_path: Path) -> None:
    """Requests keep coming while a new champion is promoted: none fails, the new model takes over."""
    from export.promote import promote
    from tests.conftest import train_tiny_translator
    from training.tasks.translate.export import export_translate_run

    other = tmp_path / "other"
    # the same split and so the same tokenizer (a different one is refused: the API workers tokenize with theirs)
    export_translate_run(train_tiny_translator(tmp_path / "b", "--max-steps", "30"), other)
    a, b = (json.loads((x / "metadata.json").read_text())["model_version"] for x in (translate_artifact, other))
    assert a != b
    data = tmp_path / "data"
    promote(str(translate_artifact), data)
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(data), "SEQSERVE_RELOAD_INTERVAL_S": "0.3"}
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt", target="service.translate_service:SeqTranslate")
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{url}/translate", json={"texts": TEXTS, "beam_size": 4})
                seen.append((r.status_code, r.json().get("model_version", r.text)))

    try:
        assert httpx.get(f"{url}/metadata").json()["model_version"] == a
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        promote(str(other), data)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/metadata").json()["model_version"] != b and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert seen and all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200][:3]
        versions = [v for _, v in seen]
        assert a in versions and versions[-1] == b
        assert "seqserve_model_swaps_total 1.0" in httpx.get(f"{url}/metrics").text
    finally:
        stop.set()
        stop_process(proc)


def test_make_serve_translate_end_to_end(tmp_path: Path) -> None:
    """The real make target on a small model: trains (seconds), exports, promotes, serves, answers."""
    from tests.conftest import tiny_pairs

    pairs = tiny_pairs(tmp_path)
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    env["SEQSERVE_WORKERS"] = "1"
    tr_args = f"--train {pairs} --test-size 40 --valid-size 20 --vocab 300 --hidden 32 --embedding 32 --max-steps 5"
    args = ["make", "--no-print-directory", "serve-translate", f"PORT={port}", f"TR_RUN={tmp_path / 'run'}"]
    args += [f"TR_ARTIFACT={tmp_path / 'art'}", f"TR_ARGS={tr_args} --max-tokens 24 --batch 16"]
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 300, proc, log)
        r = httpx.post(f"http://127.0.0.1:{port}/translate", json={"texts": ["Hallo."], "beam_size": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["translations"]) == 1, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/metadata").json()["served_because"] == "champion"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_bench_translate_runs_short(translate_artifact: Path, translate_run: Path, tmp_path: Path) -> None:
    """``make bench-translate``'s driver, briefly: both serving modes answer, the figures are recorded."""
    from loadtest.bench_translate import main

    out = tmp_path / "results.json"
    args = ["--artifact", str(translate_artifact), "--run", str(translate_run), "--out", str(out)]
    args += ["--systems", "per-request", "step-batching", "--concurrency", "1", "4", "--duration", "2"]
    args += ["--warmup", "0.5", "--in-process-seconds", "2"]
    results = main(args)
    assert json.loads(out.read_text())["http"].keys() == {"per-request", "step-batching"}
    for runs in results["http"].values():
        assert [r["concurrency"] for r in runs] == [1, 4]
        assert all(r["errors"] == 0 and r["sentences_per_s"] > 0 for r in runs), runs
    assert results["in_process"][0]["sentences_per_s"] > 0 and results["step_vs_per_request_at_max_c"] > 0


def test_one_api_policy(server: str) -> None:
    check_api_policy(server, "/translate", {"texts": ["Haus"]}, ("/translate", "/metadata"))


def test_the_translator_survives_schema_fuzzing(server: str) -> None:
    """schemathesis, driven by the translator's /docs.json (its limits), finds no 5xx and no answer outside the
    documented schema (the JSON answer and the event stream alike)."""
    assert fuzz(server, 30) >= 30
