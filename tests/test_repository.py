"""Issue 29 (7): several models (and versions) per server. ``SEQSERVE_MODELS`` (service/core/repository.py):
each model addressed by name in the JSON routes (``model``, ``model_version``) and the V2 routes
(``/v2/models/{name}[/versions/{v}]``), each with its own champion, its own batcher and its own metric labels.
The unit tests read the setting and resolve names; one real server serves two JapaneseVowels versions under one
name and a BasicMotions model (another feature count) under another."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.procs import start_bentoml, stop_process
from service.core.artifact import find_artifact
from service.core.repository import ModelSpec, Repository, UnknownModel, parse_models
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MOTIONS_TRAIN, MOTIONS_TEST = ROOT / "data/ucr/BasicMotions_TRAIN.ts", ROOT / "data/ucr/BasicMotions_TEST.ts"


# --- the setting and name resolution (no server) -------------------------------------------------------------------


def test_models_setting_is_read_and_bad_entries_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_models("") == ()
    assert parse_models(" jv=@champion, jv=seqclassifier:abc ,motions") == (
        ModelSpec("jv", "@champion"),
        ModelSpec("jv", "seqclassifier:abc"),
        ModelSpec("motions"),
    )
    for bad, says in [
        ("a b", "not a model name"),
        ("/x=y", "not a model name"),
        ("jv=", "names no model"),
        ("jv,jv", "listed twice"),
        ("jv,jv=@champion", "two champions"),
        ("a=@champion,b=@champion", "only one entry"),
        (",".join(f"m{i}" for i in range(17)), "at most 16"),
    ]:
        with pytest.raises(ValueError, match="SEQSERVE_MODELS") as e:
            parse_models(bad)
        assert says in str(e.value), (bad, e.value)
    monkeypatch.setenv("SEQSERVE_MODEL", "seqclassifier:abc")
    monkeypatch.setenv("SEQSERVE_MODELS", "jv")
    with pytest.raises(ValueError, match="SEQSERVE_MODEL and SEQSERVE_MODELS"):
        Settings()


def test_names_and_versions_resolve_to_entries(artifact: Path) -> None:
    from service.core.repository import Entry

    art = find_artifact(str(artifact))
    followed = Entry(0, "jv", art, "champion", "classify", True)
    fixed = Entry(1, "jv", art, "SEQSERVE_MODELS", None, False)
    fixed.version = "old"
    other = Entry(2, "motions", art, "champion", "classify/motions", False)
    repo = Repository([fixed, followed, other])  # the followed entry is the name's default, wherever listed
    asked: list[int] = []

    async def ask(e: Entry) -> str:
        asked.append(e.index)
        return "swapped-in"

    def resolve(name: str | None, version: str | None) -> Entry:
        return asyncio.run(repo.resolve(name, version, ask))

    assert repo.default_name == "jv" and repo.names == ["jv", "motions"]
    assert resolve(None, None) is followed and resolve("jv", None) is followed and resolve("motions", None) is other
    assert resolve("jv", "old") is fixed and asked == []  # the notes answer first
    assert resolve("jv", "swapped-in") is followed and asked == [0]  # a followed entry may have swapped: asked
    with pytest.raises(UnknownModel) as e:
        resolve("nope", None)
    assert e.value.reason == "unknown_model" and "jv, motions" in str(e.value)
    with pytest.raises(UnknownModel) as e:
        resolve("jv", "never")
    assert e.value.reason == "unknown_version" and str(e.value).startswith("model_version:")


# --- one server, three models ----------------------------------------------------------------------------------------


def _train(out: Path, train: Path, test: Path, seed: int, epochs: int = 2) -> Path:
    from training.__main__ import main

    run = out / "run"
    args = ["train", "--train", str(train), "--test", str(test), "--out", str(run), "--quiet", "--seed", str(seed)]
    assert main([*args, "--hidden", "8", "--layers", "1", "--epochs", str(epochs)]) == 0
    cmd = [sys.executable, "-m", "export", "--run", str(run), "--out", str(out / "artifact"), "--no-store"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "artifact"


def _promote(ref: Path, data: Path, *name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "export.promote", str(ref), "--data-dir", str(data), *name]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def repo_server(artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("repository")
    data = base / "data"
    jv_old = _train(base / "jv_old", ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts",
                    ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts", seed=3)  # fmt: skip
    motions = _train(base / "motions", MOTIONS_TRAIN, MOTIONS_TEST, seed=1)
    motions_next = _train(base / "motions_next", MOTIONS_TRAIN, MOTIONS_TEST, seed=2, epochs=3)
    assert _promote(artifact, data).returncode == 0  # the task's champion, served as "jv"
    named = _promote(motions, data, "--name", "motions")
    assert named.returncode == 0 and "champion of 'motions'" in named.stderr, named.stderr
    bad = _promote(motions, data, "--name", "no/slash")
    assert bad.returncode == 2 and "--name" in bad.stderr
    # its own BENTOML_HOME: BentoML keeps the metrics of a server's processes there and clears them at its exit
    env = {"BENTOML_HOME": str(base / "home"), "SEQSERVE_DATA_DIR": str(data), "SEQSERVE_RELOAD_INTERVAL_S": "0.5"}
    env["SEQSERVE_MODELS"] = f"jv=@champion,jv={jv_old},motions"
    proc, url = start_bentoml(ROOT, env, base / "log.txt")
    paths = {"jv": artifact, "jv_old": jv_old, "motions": motions, "motions_next": motions_next}
    versions = {k: json.loads((p / "metadata.json").read_text())["model_version"] for k, p in paths.items()}
    yield url, data, versions, paths
    stop_process(proc)


def _seqs(n_features: int, steps: int = 9, n: int = 2) -> list:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, steps, n_features)).round(3).tolist()


def test_each_model_is_addressed_by_name_and_version_in_json(repo_server) -> None:
    url, _, v, _ = repo_server
    champion, old = v["jv"], v["jv_old"]
    listing = httpx.get(url + "/models").json()
    assert listing["default"] == "jv"
    rows = [(m["name"], m["model_version"], m["state"], m["default_version"]) for m in listing["models"]]
    assert rows[0] == ("jv", champion, "READY", True) and rows[1] == ("jv", old, "READY", False)
    assert rows[2][0] == "motions" and rows[2][2] == "READY"

    r = httpx.post(url + "/predict", json={"sequences": _seqs(12)})  # no name: the default model
    assert r.status_code == 200 and {p["model_version"] for p in r.json()} == {champion}
    r = httpx.post(url + "/predict", json={"model": "jv", "model_version": old, "sequences": _seqs(12)})
    assert r.status_code == 200 and {p["model_version"] for p in r.json()} == {old}
    r = httpx.post(url + "/predict", json={"model": "motions", "sequences": _seqs(6)})
    assert r.status_code == 200 and r.json()[0]["label"] in ("Standing", "Running", "Walking", "Badminton")
    r = httpx.post(url + "/predict_nobatch", json={"model": "motions", "sequences": _seqs(6)})
    assert r.status_code == 200 and r.json()[0]["label"] in ("Standing", "Running", "Walking", "Badminton")

    # each model's own limits, named
    r = httpx.post(url + "/predict", json={"model": "motions", "sequences": _seqs(12)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "feature_count" and r.json()["error"]["limit"] == 6
    r = httpx.post(url + "/predict", json={"sequences": _seqs(6)})
    assert r.status_code == 400 and r.json()["error"]["limit"] == 12
    r = httpx.post(url + "/predict", json={"model": "nope", "sequences": _seqs(12)})
    assert (
        r.status_code == 400 and r.json()["error"]["field"] == "model" and r.json()["error"]["code"] == "unknown_model"
    )
    r = httpx.post(url + "/predict", json={"model": "jv", "model_version": "never", "sequences": _seqs(12)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_version"

    meta = httpx.get(url + "/metadata", params={"model": "motions"}).json()
    assert meta["model"] == "motions" and meta["feature_dim"] == 6
    assert httpx.get(url + "/metadata", params={"model": "jv", "model_version": old}).json()["model_version"] == old
    assert httpx.get(url + "/metadata", params={"model": "nope"}).status_code == 404
    assert httpx.get(url + "/metadata", params={"modle": "jv"}).json()["error"]["field"] == "modle"


def test_each_model_is_addressed_in_the_v2_routes(repo_server) -> None:
    url, _, v, _ = repo_server
    old = v["jv_old"]
    x6 = np.asarray(_seqs(6), np.float32)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x6.shape), "data": x6.ravel().tolist()},
            {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [9, 5]},
        ]
    }
    r = httpx.post(url + "/v2/models/motions/infer", json=body)
    assert r.status_code == 200 and r.json()["model_name"] == "motions", r.text
    body12 = json.loads(json.dumps(body))
    x12 = np.asarray(_seqs(12), np.float32)
    body12["inputs"][0] |= {"shape": list(x12.shape), "data": x12.ravel().tolist()}
    r = httpx.post(url + f"/v2/models/jv/versions/{old}/infer", json=body12)
    assert r.status_code == 200 and r.json()["model_version"] == old
    assert httpx.post(url + "/v2/models/motions/infer", json=body12).status_code == 400  # motions' limits
    r = httpx.post(url + "/v2/models/jv/versions/never/infer", json=body12)
    assert r.status_code == 404 and "has no version" in r.json()["error"]
    assert httpx.post(url + "/v2/models/nope/infer", json=body).status_code == 404
    meta = httpx.get(url + "/v2/models/jv").json()
    assert meta["versions"][1] == old and len(meta["versions"]) == 2
    index = httpx.post(url + "/v2/repository/index").json()
    assert [(m["name"], m["state"]) for m in index] == [("jv", "READY"), ("jv", "READY"), ("motions", "READY")]


def test_each_model_has_its_own_batcher_and_metric_labels(repo_server) -> None:
    url, *_ = repo_server
    before = httpx.get(url + "/metrics").text
    httpx.post(url + "/predict", json={"model": "motions", "sequences": _seqs(6, n=3)})
    after = httpx.get(url + "/metrics").text

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    motions_batches = 'seqserve_batch_size_sequences_sum{model="motions"}'
    jv_batches = 'seqserve_batch_size_sequences_sum{model="jv"}'
    assert value(after, motions_batches) - value(before, motions_batches) == 3
    assert value(after, jv_batches) == value(before, jv_batches)  # its batches never held another model's
    assert "seqserve_model_info{device_requested=" in after and 'model="motions"' in after
    assert any(line.startswith('seqserve_sequences_total{model="motions"') for line in after.splitlines())


def test_each_model_follows_its_own_champion_and_feedback_goes_to_the_tasks(repo_server) -> None:
    url, data, v, paths = repo_server
    champion = v["jv"]
    r = httpx.post(
        url + "/feedback", json={"model": "motions", "items": [{"sequence": _seqs(6)[0], "label": "Running"}]}
    )
    assert (
        r.status_code == 400
        and r.json()["error"]["code"] == "feedback_model"
        and "'jv'" in r.json()["error"]["message"]
    )
    r = httpx.post(url + "/feedback", json={"items": [{"sequence": _seqs(12)[0], "label": "1"}]})
    assert r.status_code == 200 and r.json()["model_version"] == champion

    def versions() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in httpx.get(url + "/models").json()["models"]:
            out.setdefault(m["name"], []).append(m["model_version"])
        return out

    jv_before = versions()["jv"]
    # a JapaneseVowels model promoted as "motions": another contract, refused; motions keeps serving
    assert _promote(paths["jv"], data, "--name", "motions").returncode == 0
    time.sleep(2)
    assert versions()["motions"] == [v["motions"]]
    # a new motions model: swapped in for motions alone
    assert _promote(paths["motions_next"], data, "--name", "motions").returncode == 0
    deadline = time.monotonic() + 30
    while versions()["motions"] != [v["motions_next"]] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert versions() == {"jv": jv_before, "motions": [v["motions_next"]]}
    r = httpx.post(url + "/predict", json={"model": "motions", "sequences": _seqs(6)})
    assert {p["model_version"] for p in r.json()} == {v["motions_next"]}


def test_the_launcher_waits_for_every_named_model(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    from export.promote import promote
    from service.launch import why_no_model

    monkeypatch.setenv("SEQSERVE_MODELS", f"jv=@champion,old={artifact},motions")
    monkeypatch.setenv("SEQSERVE_DATA_DIR", str(tmp_path))
    assert "no classify champion" in why_no_model("classify", Settings())
    promote(str(artifact), tmp_path)
    reason = why_no_model("classify", Settings())
    assert "'motions'" in reason and "--name motions" in reason
    promote(str(artifact), tmp_path, name="motions")
    assert why_no_model("classify", Settings()) is None
