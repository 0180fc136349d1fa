"""``POST /classify-text`` and V2 on a real ``bentoml serve service.textclf_service:SeqTextClf`` (issue 28): labels,
probabilities and per-token attention; the same answer alone and among concurrent requests; 4xx naming the field;
V2 with BYTES input (JSON and binary); metadata and metrics; a promoted challenger hot-swapped under load."""

from __future__ import annotations

import concurrent.futures
import json
import re
import struct
import threading
import time
from pathlib import Path

import httpx
import pytest
from api_policy import check_api_policy, fuzz

from loadtest.procs import start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
TARGET = "service.textclf_service:SeqTextClf"
TEXTS = ["A gorgeous, witty, seductive movie.", "Dull and lifeless.", "It's not the worst film of the year."]


@pytest.fixture(scope="module")
def tc_server(textclf_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    """The server following the textclf champion pointer (the tiny artifact promoted), reloading every 0.3 s."""
    from export.promote import promote

    tmp = tmp_path_factory.mktemp("textclf_server")
    data = tmp / "data"
    promote(str(textclf_artifact), data)
    env = {"BENTOML_HOME": str(tmp / "home"), "SEQSERVE_DATA_DIR": str(data), "SEQSERVE_RELOAD_INTERVAL_S": "0.3",
           "SEQSERVE_TEXTCLF_MAX_TEXTS": "8", "SEQSERVE_TEXTCLF_MAX_CHARS": "300"}  # fmt: skip
    proc, url = start_bentoml(ROOT, env, tmp / "log.txt", target=TARGET)
    yield url, data
    stop_process(proc)


def test_labels_probabilities_and_attention_over_the_texts_tokens(tc_server: tuple, textclf_artifact: Path) -> None:
    url, _ = tc_server
    r = httpx.post(f"{url}/classify-text", json={"texts": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    meta = json.loads((textclf_artifact / "metadata.json").read_text())
    assert answer["model_version"] == meta["model_version"] and len(answer["results"]) == 3
    for res in answer["results"]:
        probs = res["probabilities"]
        assert set(probs) == {"negative", "positive"} and sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert res["label"] == max(probs, key=probs.get)
        assert len(res["tokens"]) == len(res["attention"]) >= 2
        assert sum(res["attention"]) + res["start_attention"] == pytest.approx(1, abs=1e-4)
    assert "".join(answer["results"][1]["tokens"]).strip() == TEXTS[1]
    plain = httpx.post(f"{url}/classify-text", json={"texts": TEXTS[:1], "return_attention": False}).json()
    assert set(plain["results"][0]) == {"label", "probabilities"}


def test_a_texts_answer_is_the_same_alone_and_among_concurrent_requests(tc_server: tuple) -> None:
    url, _ = tc_server
    alone = [httpx.post(f"{url}/classify-text", json={"texts": [t]}).json()["results"][0] for t in TEXTS]

    def mixed(i: int) -> dict:
        texts = [TEXTS[i % 3], "longer text " * (1 + i % 7), TEXTS[(i + 1) % 3]]
        return httpx.post(f"{url}/classify-text", json={"texts": texts}, timeout=60).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(mixed, range(48)))
    for i, a in enumerate(answers):
        for got, want in ((a["results"][0], alone[i % 3]), (a["results"][2], alone[(i + 1) % 3])):
            assert got["label"] == want["label"]
            assert all(abs(got["probabilities"][c] - want["probabilities"][c]) <= 1e-5 for c in want["probabilities"])
            assert max(abs(x - y) for x, y in zip(got["attention"], want["attention"], strict=True)) <= 1e-5


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"texts": []}, "texts: required"),
        ({"texts": ["fine"], "foo": 1}, "foo: unknown field"),
        ({"texts": ["fine"] * 9}, "texts: 9 texts, the limit is 8"),
        ({"texts": ["x" * 301]}, "texts[0]: 301 characters, the limit is 300"),
        ({"texts": ["fine", ""]}, "texts[1]: empty"),
        ({"texts": [None]}, "texts[0]: must be a string"),
        ([1, 2], "body: must be a JSON object"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(tc_server: tuple, body: object, needle: str) -> None:
    url, _ = tc_server
    r = httpx.post(f"{url}/classify-text", json=body, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_v2_with_bytes_input_as_json_and_binary(tc_server: tuple) -> None:
    url, _ = tc_server
    meta = httpx.get(f"{url}/v2/models/textclf").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["classes"] == ["negative", "positive"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    r = httpx.post(f"{url}/v2/models/textclf/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["probabilities"]["shape"] == [2, 2] and len(out["label"]["data"]) == 2
    js = httpx.post(f"{url}/classify-text", json={"texts": TEXTS[:2]}).json()["results"]
    assert out["label"]["data"] == [x["label"] for x in js]
    assert abs(out["probabilities"]["data"][1] - js[0]["probabilities"]["positive"]) <= 1e-5
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (t.encode() for t in TEXTS[:2]))
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()  # fmt: skip
    rb = httpx.post(f"{url}/v2/models/textclf/infer", content=head + raw,
                    headers={"inference-header-content-length": str(len(head))})  # fmt: skip
    assert rb.status_code == 200 and rb.json()["outputs"][1]["data"] == out["label"]["data"], rb.text
    wrong = httpx.post(f"{url}/v2/models/textclf/infer", json={"inputs": [{**body["inputs"][0], "name": "x"}]})
    assert wrong.status_code == 400 and "'text'" in wrong.json()["error"]
    long = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["y" * 301]}]}
    r = httpx.post(f"{url}/v2/models/textclf/infer", json=long)
    assert r.status_code == 400 and "301 characters, the limit is 300" in r.json()["error"]


def test_metadata_and_metrics(tc_server: tuple) -> None:
    url, _ = tc_server
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["task"] == "textclf" and meta["provider"] == "CPUExecutionProvider"
    assert (meta["max_texts"], meta["max_chars"], meta["max_tokens"]) == (8, 300, 512)
    assert meta["tokenizer"] == "sentencepiece" and meta["base_lm"]["run"] != "none"
    metrics = httpx.get(f"{url}/metrics").text
    for family in ("seqserve_textclf_texts_total", "seqserve_textclf_tokens_bucket",
                   "seqserve_textclf_rejected_requests_total", "seqserve_textclf_predictions_total"):  # fmt: skip
        assert family in metrics, family
    assert 'seqserve_textclf_rejected_requests_total{reason="unknown_field"}' in metrics


def test_a_promoted_challenger_is_swapped_in_under_load(tc_server: tuple, textclf_run: Path, tmp_path: Path) -> None:
    """Fine-tuned again from the same language model (the same tokenizer: a compatible contract), promoted while
    requests run: every request answered, the new version served within seconds."""
    from export.promote import promote
    from training.__main__ import main
    from training.tasks.textclf.export import export_textclf_run

    url, data = tc_server
    run = tmp_path / "challenger"
    args = ["textclf", "--pretrained", str(textclf_run.parent / "lm"), "--out", str(run), "--labels", "0.05"]
    assert main([*args, "--few-labels", "0", "--epochs", "1", "--seed", "1"]) == 0
    new = json.loads(json.dumps(export_textclf_run(run, tmp_path / "artifact")))["model_version"]
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{url}/classify-text", json={"texts": TEXTS})
                answers.append((r.status_code, r.json().get("model_version", "")))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        promote(str(tmp_path / "artifact"), data)
        deadline = time.time() + 20
        while time.time() < deadline and (not answers or answers[-1][1] != new):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert answers and all(status == 200 for status, _ in answers)
    assert answers[-1][1] == new and len({v for _, v in answers}) == 2


def test_bench_and_eval_drivers_run_briefly(textclf_artifact: Path, tmp_path: Path) -> None:
    """``make bench-textclf`` and ``make eval-textclf`` in short form: real servers and real training, figures
    that mean nothing but a shape that does."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "loadtest.bench_textclf", "--artifact", str(textclf_artifact), "--duration", "1"]
    proc = subprocess.run([*cmd, "--concurrency", "1,4", "--out", str(out), "--doc", ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench = json.loads(out.read_text())
    assert bench["in_process_texts_per_s"]["batch_64"] > 0 and bench["http"]["c4"]["texts_per_s"] > 0
    assert bench["http"]["c4"]["errors"] == 0
    cmd = [sys.executable, "-m", "loadtest.eval_textclf", "--quick", "--corpora", "amazon"]
    proc = subprocess.run([*cmd, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "textclf")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "textclf.json").read_text())
    amazon = result["corpora"]["amazon"]
    assert {"pretrained", "scratch"} <= set(amazon) and amazon["pretrained"]["few_labels_test"]["texts"] > 0
    # each model tried at both peak rates, the pick made on validation
    by_lr = amazon["scratch"]["by_lr"]
    assert set(by_lr) == {"4e-3", "1e-3"} and by_lr[amazon["scratch"]["lr"]]["val"] == max(
        v["val"] for v in by_lr.values()
    )
    assert "| amazon | pre-trained LM, fine-tuned |" in (tmp_path / "textclf.md").read_text()
    # another LM against the same baselines: scratch copied from the first report, not trained again
    keep = ["--reuse", "--keep-baselines", str(tmp_path / "textclf.json"), "--out", str(tmp_path / "again")]
    proc = subprocess.run([*cmd, "--work", str(tmp_path / "work"), *keep], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["corpora"]["amazon"]["scratch"] == amazon["scratch"] and "textclf.json" in again["baselines_from"]
    assert "copied from" in (tmp_path / "again.md").read_text()


def test_eval_verdicts_never_count_a_baseline_that_did_not_learn() -> None:
    """A scratch model that answers one class would make any gain look large; the verdict refuses to judge it."""
    from loadtest.eval_textclf import verdicts

    def model(acc: float, f1: float, few: float) -> dict:
        return {"test": {"accuracy": acc, "macro_f1": f1}, "few_labels_test": {"accuracy": few, "macro_f1": f1}}

    collapsed = verdicts({"movie": {"pretrained": model(0.78, 0.78, 0.67), "scratch": model(0.52, 0.34, 0.48)}})
    assert any("not judged" in v for v in collapsed) and not any("**met**" in v for v in collapsed)
    close = verdicts({"nyt": {"pretrained": model(0.78, 0.78, 0.67), "scratch": model(0.767, 0.76, 0.60)}})
    assert any("+1.3 points" in v and "**not met**" in v for v in close)
    far = verdicts({"nyt": {"pretrained": model(0.80, 0.8, 0.70), "scratch": model(0.76, 0.76, 0.60)}})
    assert any("**met**" in v for v in far)


def test_one_api_policy(tc_server: tuple) -> None:
    paths = ("/classify-text", "/metadata", "/admin/reload", "/v2/models/{name}/infer")
    check_api_policy(tc_server[0], "/classify-text", {"texts": ["a fine film"]}, paths)


def test_the_reference_documents_the_request_and_survives_schema_fuzzing(tc_server: tuple) -> None:
    """/docs.json gives /classify-text's body with the server's limits (and V2's routes); schemathesis, driven by
    it, finds no 5xx and no answer outside the documented schema."""
    spec = httpx.get(tc_server[0] + "/docs.json").json()
    body = spec["paths"]["/classify-text"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["texts"]["maxItems"] == 8 and body["properties"]["texts"]["items"]["maxLength"] == 300
    assert body["additionalProperties"] is False and spec["info"]["x-seqserve-limits"]["max_texts"] == 8
    assert (
        "/v2/models/{name}/infer" in spec["paths"] and "requestBody" in spec["paths"]["/v2/models/{name}/infer"]["post"]
    )
    assert fuzz(tc_server[0], 40) >= 200


def test_feedback_is_stored_durably_and_retrains_the_classifier(tc_server: tuple, tmp_path: Path) -> None:
    """POST /feedback keeps labelled texts (label<TAB>text lines, synced before the 2xx); python -m training textclf
    --feedback adds them to the training texts but a hashed share, scored apart."""
    url, data = tc_server
    stored = data / "textclf" / "feedback.tsv"
    before = len(stored.read_text(encoding="utf-8").splitlines()) if stored.exists() else 0  # the fuzzer's items

    def positives() -> float:
        text = httpx.get(f"{url}/metrics").text
        found = re.search(r'seqserve_textclf_feedback_items_total\{label="positive"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    counted = positives()
    sentences = [f"review number {k}: {'a delight' if k % 2 else 'a chore'}\tto\nwatch" for k in range(12)]
    items = [{"text": t, "label": "positive" if k % 2 else "negative"} for k, t in enumerate(sentences)]
    for start in range(0, 12, 6):  # two requests (the test server takes 8 items at most)
        r = httpx.post(f"{url}/feedback", json={"items": items[start : start + 6]}, timeout=30)
        assert r.status_code == 200 and r.json() == {"accepted": 6}, r.text
    for body, needle in (
        ({"items": [{"text": "fine", "label": "meh"}]}, "items[0].label: 'meh' is not a class"),
        ({"items": [{"text": "  \t", "label": "positive"}]}, "items[0].text: empty"),
        ({"items": [{"text": "x" * 301, "label": "positive"}]}, "items[0].text: 301 characters, the limit is 300"),
        ({"items": [{"text": "ok", "label": "positive"}] * 9}, "items: 9 items, the limit is 8"),
        ({"items": [{"text": "ok", "label": "positive", "score": 1}]}, "items[0].score: unknown field"),
    ):
        r = httpx.post(f"{url}/feedback", json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
    lines = stored.read_text(encoding="utf-8").splitlines()
    assert len(lines) == before + 12 and lines[before + 1] == "positive\treview number 1: a delight to watch"
    assert positives() == counted + 6
    assert httpx.get(f"{url}/metadata").json()["feedback_file"].endswith("textclf/feedback.tsv")

    from conftest import train_tiny_textclf

    run = train_tiny_textclf(tmp_path, "--feedback", str(stored), "--feedback-holdout", "0.25")
    fb = json.loads((run / "metrics.json").read_text())["feedback"]
    distinct = len({line.split("\t", 1)[1] for line in lines})
    assert fb["train_texts"] + fb["holdout_texts"] <= distinct and fb["holdout_texts"] >= 1 and fb["train_texts"] >= 1
    assert 0 <= fb["holdout"]["accuracy"] <= 1 and f"{distinct} texts" in fb["source"]
