"""The Open Inference Protocol (issue 11): tritonclient, a client nobody here wrote, against a real server."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from training import data

ROOT = Path(__file__).resolve().parents[1]
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"

pytestmark = pytest.mark.integration
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")


@pytest.fixture(scope="module")
def batch() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Five JapaneseVowels sequences of different lengths, padded into x [N, T, F] with lengths [N, 1]."""
    test = data.load(JV_TEST)
    seqs = [test.sequences[i] for i in (0, 7, 40, 100, 300)]
    t = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), t, 12), np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return seqs, x, np.array([[len(s)] for s in seqs], np.int64)


def model_name(artifact: Path) -> str:
    return json.loads((artifact / "metadata.json").read_text())["model_name"]


def triton_infer(url: str, name: str, x: np.ndarray, lengths: np.ndarray, binary: bool) -> dict:
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    inputs = [
        httpclient.InferInput("x", list(x.shape), "FP32"),
        httpclient.InferInput("lengths", list(lengths.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(lengths, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "attention")]
    result = client.infer(name, inputs, outputs=outputs)
    return {n: result.as_numpy(n) for n in ("probabilities", "attention")}


def test_tritonclient_health_and_metadata(server: str, artifact: Path) -> None:
    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    name = model_name(artifact)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == [
        json.loads((artifact / "metadata.json").read_text())["model_version"]
    ]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "x": ("FP32", [-1, -1, 12]),
        "lengths": ("INT64", [-1, 1]),
    }
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "attention", "label"]
    assert meta["parameters"]["max_length"] == 64 and len(meta["parameters"]["classes"]) == 9
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_predict(server: str, artifact: Path, batch, binary: bool) -> None:  # noqa: ANN001
    seqs, x, lengths = batch
    got = triton_infer(server, model_name(artifact), x, lengths, binary)
    expected = httpx.post(f"{server}/predict", json={"sequences": [s.tolist() for s in seqs]}, timeout=60).json()
    assert got["probabilities"].shape == (5, 9) and got["attention"].shape == x.shape[:2]
    for i, (s, e) in enumerate(zip(seqs, expected)):
        np.testing.assert_allclose(got["probabilities"][i], list(e["probabilities"].values()), atol=1e-6)
        np.testing.assert_allclose(got["attention"][i, : len(s)], e["attention"], atol=1e-6)
        assert not got["attention"][i, len(s) :].any()  # nothing beyond each length


def test_labels_as_bytes_binary_and_json(server: str, artifact: Path, batch) -> None:  # noqa: ANN001
    seqs, x, lengths = batch
    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    inputs = [httpclient.InferInput("x", list(x.shape), "FP32"), httpclient.InferInput("lengths", [5], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(lengths.reshape(-1))  # [N] works as well as [N, 1]
    expected = [
        e["label"] for e in httpx.post(f"{server}/predict", json={"sequences": [s.tolist() for s in seqs]}).json()
    ]
    for binary in (True, False):
        result = client.infer(
            model_name(artifact), inputs, outputs=[httpclient.InferRequestedOutput("label", binary_data=binary)]
        )
        assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()] == expected


def v2_body(
    x: list, lengths: list, x_type: str = "FP32", x_shape: list | None = None, l_shape: list | None = None
) -> dict:
    n = len(lengths)
    return {
        "inputs": [
            {"name": "x", "datatype": x_type, "shape": x_shape or [n, len(x) // (12 * n), 12], "data": x},
            {"name": "lengths", "datatype": "INT64", "shape": l_shape or [n, 1], "data": lengths},
        ]
    }


GOOD_X = [0.1] * (2 * 3 * 12)
BAD_V2 = [
    (v2_body(GOOD_X, [3, 2], x_type="FP64"), "input 'x': datatype 'FP64', the model takes FP32"),
    (v2_body(GOOD_X[:-1], [3, 2], x_shape=[2, 3, 12]), "input 'x': 71 values, shape [2, 3, 12] needs 72"),
    (v2_body(GOOD_X, [0, 2]), "input 'lengths'[0]: 0, must be 1..3"),
    (v2_body(GOOD_X, [4, 2]), "input 'lengths'[0]: 4, must be 1..3"),
    (
        v2_body([0.1] * (65 * 12), [65], x_shape=[1, 65, 12]),
        "input 'lengths'[0]: 65 time steps, the model accepts at most 64",
    ),
    (
        v2_body([0.1] * (65 * 12), [1] * 65, x_shape=[65, 1, 12], l_shape=[65, 1]),
        "input 'x': 65 sequences, must be 1..64",
    ),
    (v2_body([0.1] * 35 + [1e39] + [0.1] * 36, [3, 2]), "input 'x'[0]: non-finite value"),
    (
        v2_body([0.1] * (2 * 3 * 11), [3, 2], x_shape=[2, 3, 11]),
        "input 'x': shape [2, 3, 11], the model takes [N, T, 12]",
    ),
    (v2_body(GOOD_X, [3, 2, 1], x_shape=[2, 3, 12], l_shape=[3]), "input 'lengths': shape [3], must be [2] or [2, 1]"),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 12], "data": [0.1] * 12}]},
        "input 'lengths' is missing",
    ),
    ({"inputs": "nope"}, "expected an object with 'inputs'"),
    (v2_body(GOOD_X, [3, 2]) | {"outputs": [{"name": "logits"}]}, "outputs: 'logits' is not an output"),
]


@pytest.mark.parametrize("body, needle", BAD_V2, ids=[n[:35] for _, n in BAD_V2])
def test_bad_v2_requests_are_clear_400s(server: str, artifact: Path, body: dict, needle: str) -> None:
    r = httpx.post(f"{server}/v2/models/{model_name(artifact)}/infer", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()


def test_binary_sizes_must_match(server: str, artifact: Path) -> None:
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2, 12], "parameters": {"binary_data_size": 96}},
                {"name": "lengths", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
            ]
        }
    ).encode()
    url = f"{server}/v2/models/{model_name(artifact)}/infer"
    good = np.ones((1, 2, 12), "<f4").tobytes() + np.array([2], "<i8").tobytes()
    headers = {"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"}
    assert httpx.post(url, content=head + good, headers=headers).status_code == 200
    r = httpx.post(url, content=head + good[:-4], headers=headers)
    assert r.status_code == 400 and "binary_data_size 8 runs past" in r.json()["error"]
    r = httpx.post(url, content=head + good + b"xx", headers=headers)
    assert r.status_code == 400 and "2 bytes of binary data that no input" in r.json()["error"]


def test_unknown_model_or_version_is_a_404(server: str, artifact: Path) -> None:
    name = model_name(artifact)
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{name}/versions/0000/ready"):
        r = httpx.get(server + path)
        assert r.status_code == 404 and "error" in r.json(), path
    version = json.loads((artifact / "metadata.json").read_text())["model_version"]
    assert httpx.get(f"{server}/v2/models/{name}/versions/{version}/ready").status_code == 200
    assert httpx.get(f"{server}/v2").json()["extensions"] == ["binary_tensor_data"]


@pytest.fixture(scope="module")
def triton_peer(artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    """The benchmark's Triton peer (nvidia-pytriton) serving the same model.onnx, where its venv exists."""
    import argparse

    from loadtest.peer_servers import ROOT as BENCH_ROOT
    from loadtest.peer_servers import start_triton

    if not (BENCH_ROOT / "bench/venvs/triton/.installed").exists():
        pytest.skip("the Triton peer's venv (bench/venvs/triton, made by `make bench`) is not here")
    work = tmp_path_factory.mktemp("triton")
    server = start_triton(artifact, work, argparse.Namespace(workers=1, ort_threads=1))
    url = f"http://127.0.0.1:{server.port}"
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/v2/models/seqclassifier/ready").status_code != 200:  # the server is up before its model
        assert time.monotonic() < deadline, "the Triton peer never loaded its model"
        time.sleep(0.5)
    yield url
    server.stop()


def test_one_client_two_servers_the_same_answers(server: str, triton_peer: str, artifact: Path, batch) -> None:  # noqa: ANN001
    """The same tritonclient code against seqserve and against Triton serving the same model.onnx."""
    seqs, x, lengths = batch
    ours = triton_infer(server, model_name(artifact), x, lengths, binary=True)
    theirs = triton_infer(triton_peer, "seqclassifier", x, lengths, binary=True)
    np.testing.assert_allclose(ours["probabilities"], theirs["probabilities"], atol=1e-6)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(ours["attention"][i, : len(s)], theirs["attention"][i, : len(s)], atol=1e-6)


def test_v2_metrics_use_route_templates_and_a_protocol_label(server: str, artifact: Path) -> None:
    name = model_name(artifact)
    httpx.post(f"{server}/v2/models/{name}/infer", json=v2_body(GOOD_X, [3, 2], x_type="FP64"))
    httpx.get(f"{server}/v2/models/some-random-name-{time.time_ns()}/ready")
    metrics = httpx.get(f"{server}/metrics").text
    endpoints = set(re.findall(r'bentoml_service_request_total\{endpoint="(/v2[^"]*)"', metrics))
    assert "/v2/models/{name}/infer" in endpoints and "/v2/models/{name}/ready" in endpoints
    assert not any(name in e or "some-random-name" in e for e in endpoints), endpoints  # no raw paths
