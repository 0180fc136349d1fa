"""Hot swap (issue 10): promotions reach a running server, which swaps models between batches under load;
broken promotions are refused and the old model keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from export.promote import promote
from loadtest.procs import start_bentoml, stop_process
from service.core.store.champion import ChampionPointer
from training import data

ROOT = Path(__file__).resolve().parents[1]
JV_TRAIN = ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts"
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"

pytestmark = pytest.mark.integration
SETTLE_S = 2.0  # a promotion must be served within this (pointer polled every 0.3 s, load + check ~1 s here)


@pytest.fixture(scope="module")
def challenger(tmp_path_factory: pytest.TempPathFactory, train_and_export) -> Path:  # noqa: ANN001
    """A second model with the same contract (same data, another seed), exported to a directory."""
    run_dir, out = tmp_path_factory.mktemp("run2"), tmp_path_factory.mktemp("artifact2")
    return train_and_export(run_dir, out, "--hidden", "32", "--layers", "1", "--epochs", "4", "--seed", "2")


def version_of(art: Path) -> str:
    return json.loads((art / "metadata.json").read_text())["model_version"]


def broken_copies(art: Path, tmp: Path) -> tuple[Path, Path]:
    truncated, wrong_dim = tmp / "truncated", tmp / "wrong_dim"
    shutil.copytree(art, truncated)
    onnx = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(onnx[: len(onnx) // 3])
    shutil.copytree(art, wrong_dim)
    meta = json.loads((wrong_dim / "metadata.json").read_text())
    meta["feature_dim"] += 1  # a valid contract, but not the one being served
    meta["normalisation"]["mean"].append(0.0)
    meta["normalisation"]["std"].append(1.0)
    (wrong_dim / "metadata.json").write_text(json.dumps(meta))
    return truncated, wrong_dim


def v2_after_swap(url: str, name: str, old: str, new: str, seq: np.ndarray) -> dict:
    """What the V2 routes answer for the swapped-out and the served version (every API worker is asked)."""
    x = seq.astype(np.float32)[None]
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
            {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [len(seq)]},
        ]
    }
    out: dict = {}
    for _ in range(4):  # a new connection each, so more than one API worker answers
        for key, version in (("old", old), ("new", new)):
            base = f"{url}/v2/models/{name}/versions/{version}"
            for route, r in (
                ("ready", httpx.get(f"{base}/ready")),
                ("infer", httpx.post(f"{base}/infer", json=body, timeout=30)),
            ):
                out.setdefault(f"{key} {route}", set()).add(r.status_code)
    out["versions"] = httpx.get(f"{url}/v2/models/{name}").json()["versions"]
    return {k: (v.pop() if isinstance(v, set) and len(v) == 1 else v) for k, v in out.items()}


def test_promotions_swap_models_under_load(artifact: Path, challenger: Path, tmp_path: Path) -> None:
    a, b = version_of(artifact), version_of(challenger)
    assert a != b
    data_dir = tmp_path / "data"
    promote(str(artifact), data_dir)
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(data_dir)}
    env.update({"SEQSERVE_RELOAD_INTERVAL_S": "0.3", "SEQSERVE_MAX_LATENCY_MS": "20000"})
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt")
    test = data.load(JV_TEST)
    log: list[tuple[float, float, int, set[str]]] = []  # sent, answered, status, versions in the answer
    stop = threading.Event()

    def load(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                picks = rng.integers(len(test.sequences), size=int(rng.integers(1, 4)))
                body = {"sequences": [test.sequences[i].tolist() for i in picks]}
                t0 = time.monotonic()
                r = client.post(f"{url}/predict", json=body)
                versions = {o["model_version"] for o in r.json()} if r.status_code == 200 else set()
                log.append((t0, time.monotonic(), r.status_code, versions))

    try:
        meta = httpx.get(f"{url}/metadata").json()
        assert (meta["model_version"], meta["served_because"]) == (a, "champion")
        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        promotions = []
        for k in range(5):  # a -> b -> a -> b -> a -> b
            target = challenger if k % 2 == 0 else artifact
            promotions.append((time.monotonic(), version_of(target)))
            promote(str(target), data_dir)
            time.sleep(4)
        for bad in broken_copies(artifact, tmp_path):  # version a, but unloadable / another contract
            promotions.append((time.monotonic(), b))  # b must keep serving
            # the pointer set directly: promote itself refuses a damaged file, as if it broke after promotion
            ChampionPointer(data_dir, "classify").set(str(bad), version_of(bad))
            time.sleep(3)
        stop.set()
        for t in threads:
            t.join(60)
        # No answer has told the API workers of this swap: the V2 routes must still know the version served.
        promote(str(artifact), data_dir)
        time.sleep(SETTLE_S)
        v2 = v2_after_swap(url, meta["model_name"], b, a, test.sequences[0])
        metrics = httpx.get(f"{url}/metrics").text
        final = httpx.get(f"{url}/metadata").json()
    finally:
        stop.set()
        stop_process(proc)
    assert log and all(status == 200 for _, _, status, _ in log), [s for _, _, s, _ in log if s != 200][:5]
    assert set().union(*(v for *_, v in log)) == {a, b}
    ends = [t for t, _ in promotions[1:]] + [float("inf")]
    for (t_promo, expected), t_next in zip(promotions, ends):
        settled = [v for sent, answered, _, v in log if sent >= t_promo + SETTLE_S and answered <= t_next]
        assert settled and all(v == {expected} for v in settled), (expected, settled[:3])
    assert v2 == {"old ready": 404, "old infer": 404, "new ready": 200, "new infer": 200, "versions": [a]}, v2
    assert final["model_version"] == a
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith("seqserve_")
    }
    assert values["seqserve_model_swaps_total"] == 6 and values["seqserve_model_swap_failures_total"] == 2
    info = {k: v for k, v in values.items() if k.startswith("seqserve_model_info{")}
    assert [k for k, v in info.items() if v == 1] == [k for k in info if f'model_version="{a}"' in k]
