"""A real `bentoml serve` on 127.0.0.1: predictions through HTTP equal in-process ORT, validation, endpoints."""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_policy import check_api_policy

from training import data
from training.onnx import cpu_session

ROOT = Path(__file__).resolve().parents[1]
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_set() -> data.Dataset:
    return data.load(JV_TEST)


@pytest.fixture(scope="module")
def ort_alone(artifact: Path):
    sess = cpu_session(artifact / "model.onnx")

    def run(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, a = sess.run(None, {"x": seq[None], "lengths": np.array([len(seq)], dtype=np.int64)})
        return p[0], a[0]

    return run


def predict(url: str, seqs: list, client: httpx.Client | None = None) -> httpx.Response:
    body = {"sequences": [s.tolist() if isinstance(s, np.ndarray) else s for s in seqs]}
    return (client or httpx).post(f"{url}/predict", json=body, timeout=60)


def check_result(obj: dict, seq: np.ndarray, ort_alone, classes: list[str], version: str) -> None:
    p, a = ort_alone(seq)
    assert list(obj["probabilities"]) == classes
    np.testing.assert_allclose(list(obj["probabilities"].values()), p, atol=1e-6)
    assert obj["label"] == classes[int(np.argmax(p))]
    assert len(obj["attention"]) == len(seq)
    np.testing.assert_allclose(obj["attention"], a, atol=1e-6)
    assert sum(obj["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert obj["model_version"] == version


def test_metadata(server: str, artifact: Path) -> None:
    meta = json.loads((artifact / "metadata.json").read_text())
    r = httpx.get(f"{server}/metadata")
    assert r.status_code == 200
    m = r.json()
    assert m["model_name"] == "seqclassifier" and m["model_version"] == meta["model_version"]
    assert m["classes"] == meta["classes"] and m["feature_dim"] == 12
    assert meta["max_length"] == 4096 and m["max_length"] == 64  # the export default, overridden at serve time
    assert m["training_length_range"] == meta["training_length_range"] == [7, 26]
    assert m["normalisation"] == meta["normalisation"]["mode"] == "global"
    assert m["provider"] == "CPUExecutionProvider"  # this machine has no GPU
    assert m["device_requested"] == "auto" and m["provider_fallback"]  # auto tried CUDA and says why not
    assert m["load_check"]["sequences"] == 8 and m["load_check"]["max_abs_diff_alone"] <= 1e-5


def test_mixed_lengths_in_one_request_match_ort_alone(
    server: str, test_set: data.Dataset, ort_alone, artifact: Path
) -> None:
    meta = json.loads((artifact / "metadata.json").read_text())
    order = np.argsort(test_set.lengths)
    idx = np.concatenate([order[:20], order[-20:], order[170:180]])  # shortest, longest, middle, mixed
    seqs = [test_set.sequences[i] for i in idx]
    r = predict(server, seqs)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == len(seqs)
    for obj, seq in zip(out, seqs):
        check_result(obj, seq, ort_alone, meta["classes"], meta["model_version"])


def test_concurrent_requests_are_batched_and_exact(
    server: str, test_set: data.Dataset, ort_alone, artifact: Path
) -> None:
    """Many concurrent single- and multi-sequence requests of different lengths: each gets its own answers."""
    meta = json.loads((artifact / "metadata.json").read_text())
    rng = np.random.default_rng(0)
    groups = [[test_set.sequences[i] for i in rng.choice(370, size=rng.integers(1, 5))] for _ in range(80)]
    with httpx.Client(limits=httpx.Limits(max_connections=32)) as client, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda g: predict(server, g, client), groups))
    for g, r in zip(groups, responses):
        assert r.status_code == 200, r.text
        assert len(r.json()) == len(g)
        for obj, seq in zip(r.json(), g):
            check_result(obj, seq, ort_alone, meta["classes"], meta["model_version"])
    m = httpx.get(f"{server}/metrics").text
    sizes = [line for line in m.splitlines() if line.startswith("bentoml_service_adaptive_batch_size_count")]
    assert sizes, "adaptive batching metrics missing"
    # One batcher in the model service: requests that reached different API workers share batches.
    single = float(re.search(r'^seqserve_batch_api_workers_bucket\{le="1.0",model="\w+"\} (\S+)', m, re.M).group(1))
    batches = float(re.search(r"^seqserve_batch_api_workers_count\{model=\"\w+\"\} (\S+)", m, re.M).group(1))
    assert batches > single, "no adaptive batch ever held requests from two API workers"


def test_nobatch_endpoint_gives_the_same_answers(server: str, test_set: data.Dataset) -> None:
    seqs = test_set.sequences[:5]
    a = predict(server, seqs).json()
    b = httpx.post(f"{server}/predict_nobatch", json={"sequences": [s.tolist() for s in seqs]}).json()
    assert [o["label"] for o in a] == [o["label"] for o in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(list(x["probabilities"].values()), list(y["probabilities"].values()), atol=1e-6)


GOOD = [[0.1] * 12] * 5
BAD_BODIES = [
    ({"sequences": [[[0.1] * 11] * 5]}, "sequences[0][0]: 11 features, the model expects 12"),
    ({"sequences": [GOOD, [[0.1] * 12, [0.1] * 13]]}, "sequences[1][1]: 13 features, the model expects 12"),
    ({"sequences": [[]]}, "sequences[0]: empty sequence"),
    ({"sequences": []}, "sequences: 0 sequences, must be 1..64"),
    ({"sequences": [GOOD] * 65}, "sequences: 65 sequences, must be 1..64"),
    ({"sequences": [[[0.1] * 12] * 65]}, "sequences[0]: 65 time steps, the model accepts at most 64 (max_length)"),
    ({"sequences": [[["a"] + [0.1] * 11]]}, "sequences[0][0]: 'a' is not a number"),
    ({"sequences": [[[None] + [0.1] * 11]]}, "is not a number"),
    ({"sequences": [[[True] + [0.1] * 11]]}, "True is not a number"),
    ({"sequences": [[[1e39] + [0.1] * 11]]}, "sequences[0][0]: non-finite value"),
    ({"sequences": "abc"}, "sequences: must be a list"),
    ({"sequences": [5]}, "sequences[0]: must be a list of time steps"),
    ({"sequences": [[5]]}, "sequences[0][0]: must be a list of 12 numbers"),
    ({"wrong": 1}, "sequences: required field missing"),
]


@pytest.mark.parametrize("body, needle", BAD_BODIES, ids=[n[:30] for _, n in BAD_BODIES])
def test_bad_input_is_a_clear_400(server: str, body: dict, needle: str) -> None:
    r = httpx.post(f"{server}/predict", json=body)
    assert r.status_code == 400, r.text
    assert needle in json.dumps(r.json()), r.text


@pytest.mark.parametrize("raw", [b'{"sequences": [[[NaN, 1,1,1,1,1,1,1,1,1,1,1]]]}', b"not json", b'{"sequences": ['])
def test_raw_bodies(server: str, raw: bytes) -> None:
    r = httpx.post(f"{server}/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_bad_request_never_fails_its_batch_mates(
    server: str, test_set: data.Dataset, ort_alone, artifact: Path
) -> None:
    meta = json.loads((artifact / "metadata.json").read_text())
    good = [[test_set.sequences[i]] for i in range(40)]
    bad = [{"sequences": [[[0.1] * 11] * 3]}, {"sequences": [[[float("1e39")] * 12]]}] * 20
    jobs = [("good", g) for g in good] + [("bad", b) for b in bad]
    np.random.default_rng(1).shuffle(jobs)

    def send(job):
        kind, payload = job
        if kind == "good":
            return kind, payload, predict(server, payload)
        return kind, payload, httpx.post(f"{server}/predict", json=payload, timeout=60)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, jobs))
    for kind, payload, r in results:
        if kind == "good":
            assert r.status_code == 200, r.text
            check_result(r.json()[0], payload[0], ort_alone, meta["classes"], meta["model_version"])
        else:
            assert r.status_code == 400, r.text


def test_bentoml_endpoints(server: str) -> None:
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json"):
        assert httpx.get(server + path).status_code == 200, path
    r = httpx.get(server + "/docs")
    assert r.status_code == 200 and "<script" in r.text  # the self-hosted page (service/core/docs.py)


def test_openapi_document_declares_routes_limits_and_schemas(server: str) -> None:
    spec = httpx.get(server + "/docs.json").json()
    assert spec["info"]["version"] == importlib.metadata.version("seqserve") and spec["info"]["title"] == "seqserve"
    assert spec["info"]["x-seqserve-limits"] == {"max_length": 64, "max_sequences": 64, "max_request_steps": 65536}
    assert {"/predict", "/predict_nobatch", "/metadata", "/docs"} <= set(spec["paths"])
    assert not any("infer" in p and not p.startswith("/v2/") for p in spec["paths"])  # the model service is internal
    assert "/v2/models/{name}/infer" in spec["paths"] and "504" in spec["paths"]["/predict"]["post"]["responses"]
    body = spec["components"]["schemas"]["predict__Input"]["properties"]["sequences"]
    assert (body["minItems"], body["maxItems"]) == (1, 64)
    assert (body["items"]["minItems"], body["items"]["maxItems"]) == (1, 64)
    assert body["items"]["items"]["minItems"] == body["items"]["items"]["maxItems"] == 12
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["items"]["$ref"].endswith("/Prediction")
    props = spec["components"]["schemas"]["Prediction"]["properties"]
    assert set(props) == {"label", "probabilities", "attention", "model_version"}
    meta = spec["paths"]["/metadata"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"provider", "provider_fallback", "max_length", "feature_dim"} <= set(meta["properties"])


def test_longer_than_training_is_served_and_counted(
    server: str, test_set: data.Dataset, ort_alone, artifact: Path
) -> None:
    """An RNN takes any length: a 64-step sequence (training saw 7..26) is answered exactly, and counted."""

    def outside() -> dict[str, float]:
        text = httpx.get(f"{server}/metrics").text
        found = re.findall(r'^seqserve_length_outside_training_total\{[^}]*side="(\w+)"[^}]*\} (\S+)', text, re.M)
        totals: dict[str, float] = {}
        for side, value in found:
            totals[side] = totals.get(side, 0.0) + float(value)
        return totals

    before = outside()
    long = np.concatenate([test_set.sequences[0]] * 8)[:64]
    r = predict(server, [long, test_set.sequences[1]])
    assert r.status_code == 200, r.text
    meta = json.loads((artifact / "metadata.json").read_text())
    check_result(r.json()[0], long, ort_alone, meta["classes"], meta["model_version"])
    deadline = time.monotonic() + 10  # the worker's counter reaches /metrics shortly after the response
    while (after := outside()).get("longer", 0) == before.get("longer", 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after.get("longer", 0) - before.get("longer", 0) == 1
    assert after.get("shorter", 0) == before.get("shorter", 0)


def test_every_served_request_is_timed_stage_by_stage(server: str, test_set: data.Dataset) -> None:
    """``seqserve_stage_seconds{stage}`` (service/core/stages.py): each answered /predict request adds
    one observation to every stage, the stages add up to the total, and a refused request adds none."""

    def stages() -> dict[str, tuple[float, float]]:
        text = httpx.get(f"{server}/metrics").text
        out = {}
        for stage in ("parse", "queue", "to_batch", "compute", "from_batch", "respond", "total"):
            counts = re.findall(rf'^seqserve_stage_seconds_count\{{stage="{stage}"\}} (\S+)', text, re.M)
            sums = re.findall(rf'^seqserve_stage_seconds_sum\{{stage="{stage}"\}} (\S+)', text, re.M)
            out[stage] = (sum(map(float, counts)), sum(map(float, sums)))
        return out

    before = stages()
    with httpx.Client() as client:
        for i in range(12):
            assert predict(server, [test_set.sequences[i]], client).status_code == 200
        assert predict(server, [[[0.0] * 3]], client).status_code == 400  # refused: never reached the model
    deadline = time.monotonic() + 10
    while (after := stages())["total"][0] - before["total"][0] < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    added = {st: after[st][0] - before[st][0] for st in after}
    assert set(added.values()) == {12.0}, added
    parts = sum(after[st][1] - before[st][1] for st in after if st != "total")
    total = after["total"][1] - before["total"][1]
    assert parts == pytest.approx(total, rel=1e-6) and total > 0


def test_one_api_policy(server: str) -> None:
    """Issue 29 (5): the classifier's routes refuse unknown fields (they were ignored), answer THE error body (it
    leaked pydantic's), and /docs is a self-hosted page of every route, the admin routes included."""
    body = {"sequences": [[[0.0] * 12]]}
    paths = ("/predict", "/predict_nobatch", "/feedback", "/metadata", "/admin/retrain", "/admin/alert",
             "/admin/reload", "/v2/models/{name}/infer")  # fmt: skip
    check_api_policy(server, "/predict", body, paths)
    item = {"items": [{"sequence": [[0.0] * 12], "label": "1", "note": "x"}]}
    r = httpx.post(server + "/feedback", json=item)
    assert r.status_code == 400 and r.json()["error"]["field"] == "items[0].note", r.text
