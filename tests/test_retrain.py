"""Retraining (issue 10): feedback through HTTP -> retrain -> gate -> promotion -> the running server swaps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtest.procs import start_bentoml, stop_process
from training import data

ROOT = Path(__file__).resolve().parents[1]
JV_TRAIN = ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts"
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def weak_champion(tmp_path_factory: pytest.TempPathFactory, train_and_export) -> Path:  # noqa: ANN001
    """A deliberately weak model: tiny, one epoch, no random-kernel branch (whose closed-form ridge head alone can
    make a one-epoch model about as good as a retrained one: the gate then rejected the challenger, a flaky test)."""
    run_dir, out = tmp_path_factory.mktemp("weak_run"), tmp_path_factory.mktemp("weak_artifact")
    weak = ("--hidden", "8", "--layers", "1", "--epochs", "1", "--seed", "3", "--kernel-features", "0")
    train_and_export(run_dir, out, *weak)
    assert (out / "checkpoint.pt").exists()  # exported beside the graph: what retraining fine-tunes from
    return out


def retrain(out: Path, env: dict, *extra: str) -> dict:
    data_dir = env["SEQSERVE_DATA_DIR"]
    args = ["-m", "training", "retrain", "--data-dir", data_dir, "--out", str(out), "--quiet", *extra]
    run([*args, "--epochs", "15", "--time-budget", "60"], env)
    return json.loads((out / "report.json").read_text())


def test_feedback_retrain_promote_and_swap(weak_champion: Path, tmp_path: Path) -> None:
    # A model store of its own: a `bentoml serve` start empties its home's Prometheus directory, which would
    # wipe the metrics of the session's shared server.
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    run(["-m", "export.promote", str(weak_champion), "--store", "--data-dir", env["SEQSERVE_DATA_DIR"]], env)
    weak = json.loads((weak_champion / "metadata.json").read_text())["model_version"]
    server_env = {k: env[k] for k in ("BENTOML_HOME", "SEQSERVE_DATA_DIR")} | {"SEQSERVE_RELOAD_INTERVAL_S": "0.3"}
    server_env["SEQSERVE_ADMIN_TOKEN"] = TOKEN
    proc, url = start_bentoml(ROOT, server_env, tmp_path / "log.txt")
    try:
        assert httpx.get(f"{url}/metadata").json()["model_version"] == weak
        train = data.load(JV_TRAIN)
        for start in range(0, 200, 50):
            items = [{"sequence": s.tolist(), "label": lab} for s, lab in zip(train.sequences, train.labels)]
            r = httpx.post(f"{url}/feedback", json={"items": items[start : start + 50]}, timeout=60)
            assert r.status_code == 200, r.text

        skipped = retrain(tmp_path / "r0", env, "--min-new-items", "100000")
        assert skipped["state"] == "skipped" and "need 100000" in skipped["reason"]

        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert httpx.post(f"{url}/admin/retrain", headers=headers).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{url}/admin/retrain", headers=auth)
        assert r.status_code == 202 and r.json()["queued"] and r.json()["job"]["state"] == "queued"
        drift = {"alerts": [{"status": "firing", "labels": {"alertname": "SeqserveInputDrift"}}]}
        again = httpx.post(f"{url}/admin/alert", headers=auth, json=drift).json()
        assert not again["queued"] and again["job"]["id"] == r.json()["job"]["id"]  # one job at a time
        other = {"alerts": [{"status": "firing", "labels": {"alertname": "SeqserveHighErrorRate"}}]}
        assert httpx.post(f"{url}/admin/alert", headers=auth, json=other).json()["queued"] is False
        worker = ["-m", "training", "worker", "--once", "--data-dir", env["SEQSERVE_DATA_DIR"], "--quiet"]
        run([*worker, "--runs-dir", str(tmp_path / "jobs"), "--epochs", "15", "--time-budget", "60"], env)
        job = httpx.get(f"{url}/admin/retrain", headers=auth).json()["job"]
        assert job["state"] == "promoted" and job["trigger"] == "api", job
        report = job["report"]
        assert report["mode"] == "fine-tune from the champion"
        assert report["feedback"]["new_train"] == report["feedback"]["train"] >= 120
        assert report["accuracy"]["challenger"] >= report["accuracy"]["champion"]
        new = report["challenger"]["version"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/metadata").json()["model_version"] != new:
            assert time.monotonic() < deadline, "the promoted model was not served within 10 s"
            time.sleep(0.3)
        body = {"sequences": [train.sequences[0].tolist()]}
        assert httpx.post(f"{url}/predict", json=body).json()[0]["model_version"] == new

        worse = retrain(tmp_path / "r2", env, "--force", "--margin", "1.0", "--from-scratch")
        assert worse["state"] == "rejected" and "margin" in worse["reason"]
        assert worse["mode"].startswith("from scratch")
        assert worse["holdout"] == report["holdout"]  # the second generation reads the original data, not r1's files
        same = {k: Path(v).read_bytes() for k, v in worse["original_data"].items()}  # the copies in the store
        assert same == {k: Path(v).read_bytes() for k, v in report["original_data"].items()}
        reload = httpx.post(f"{url}/admin/reload", headers=auth).json()
        models = [{"name": "seqclassifier", "outcome": "unchanged", "model_version": new}]
        assert reload == {"outcome": "unchanged", "model_version": new, "models": models}  # the pointer did not move
    finally:
        stop_process(proc)


def test_fine_tune_with_a_frozen_front_end(small_run: Path, tmp_path: Path) -> None:
    import torch

    from training.__main__ import main

    args = ["train", "--train", str(JV_TRAIN), "--test", str(JV_TEST), "--out", str(tmp_path), "--hidden", "32"]
    warm = small_run / "checkpoint.pt"
    assert main([*args, "--layers", "1", "--epochs", "2", "--quiet", "--init-from", str(warm), "--freeze-front"]) == 0
    before = torch.load(warm, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state_dict"]
    moved = {k.split(".")[0] for k in before if k in after and not torch.equal(before[k], after[k])}
    assert moved and moved <= {"rnn", "att_v", "att_w", "head", "mean", "std"}, moved
    assert "rnn" in moved and not any(k.startswith("proj") and not torch.equal(before[k], after[k]) for k in before)
    bigger = ["--hidden", "16", "--layers", "1", "--epochs", "1", "--quiet", "--init-from", str(warm)]
    assert main([*args[:-2], *bigger]) == 2  # another architecture: a clear error, not a crash


def test_a_champion_without_checkpoint_is_retrained_from_scratch(weak_champion: Path, tmp_path: Path) -> None:
    old = tmp_path / "old_artifact"
    shutil.copytree(weak_champion, old)
    (old / "checkpoint.pt").unlink()  # exported before checkpoints were stored
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    run(["-m", "export.promote", str(old), "--data-dir", env["SEQSERVE_DATA_DIR"]], env)
    report = retrain(tmp_path / "r", env, "--force", "--margin", "1.0")
    assert report["mode"].startswith("from scratch (checkpoint.pt not stored with the champion")
    assert report["state"] == "rejected"  # margin 1.0: nothing is that much better


@pytest.fixture
def moved_data_champion(tmp_path: Path, train_and_export) -> tuple[Path, Path]:  # noqa: ANN001
    """A weak champion trained from files in a folder of their own (removed by the tests); (artifact, folder)."""
    folder = tmp_path / "original"
    folder.mkdir()
    train, test = shutil.copy(JV_TRAIN, folder), shutil.copy(JV_TEST, folder)
    art = tmp_path / "artifact"
    weak = ("--hidden", "8", "--epochs", "1", "--seed", "3", "--kernel-features", "0", "--train", train, "--test", test)
    train_and_export(tmp_path / "run", art, *weak)
    return art, folder


def test_a_retrain_needs_only_the_model_store_and_the_database(moved_data_champion, tmp_path: Path) -> None:  # noqa: ANN001
    """Issue 29 (2): the original data travels with the model; with the training machine's files gone (a
    Kubernetes worker never had them), the retrain reads the copies in the store."""
    art, folder = moved_data_champion
    files = json.loads((art / "metadata.json").read_text())["training_data"]["files"]
    assert {files["train"]["file"], files["test"]["file"]} == {"data-train.ts", "data-test.ts"}
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    run(["-m", "export.promote", str(art), "--store", "--data-dir", env["SEQSERVE_DATA_DIR"]], env)
    shutil.rmtree(folder), shutil.rmtree(art)  # only the store and the database are left
    report = retrain(tmp_path / "r", env, "--force")
    assert report["state"] in ("promoted", "rejected"), report
    assert all(p.startswith(str(tmp_path / "home")) for p in report["original_data"].values()), report
    assert report["holdout"]["original_test"] == 370 and report["gate"]["rule"]
    if report["state"] == "promoted":  # the challenger's artifact carries the same originals onward
        again = retrain(tmp_path / "r2", env, "--force", "--margin", "1.0")
        assert again["state"] == "rejected" and again["holdout"] == report["holdout"]


def test_a_failed_retrain_still_writes_its_report(moved_data_champion, tmp_path: Path) -> None:  # noqa: ANN001
    """Issue 29 (4): a champion from before the stored copies, its training file gone: the retrain exits 2 and
    its report says where and why; the worker's job keeps that report."""
    art, folder = moved_data_champion
    meta = json.loads((art / "metadata.json").read_text())
    for stored in meta["training_data"].pop("files").values():
        (art / stored["file"]).unlink()
    (art / "metadata.json").write_text(json.dumps(meta))
    shutil.rmtree(folder)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    run(["-m", "export.promote", str(art), "--data-dir", env["SEQSERVE_DATA_DIR"]], env)
    out = tmp_path / "rt-missing"
    cmd = ["-m", "training", "retrain", "--force", "--data-dir", env["SEQSERVE_DATA_DIR"], "--out", str(out)]
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "retrain failed at step data" in proc.stderr, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["state"] == "failed" and report["step"] == "data" and "file not found" in report["reason"]
    worker = [
        "-m",
        "training",
        "worker",
        "--once",
        "--force",
        "--enqueue",
        "test",
        "--data-dir",
        env["SEQSERVE_DATA_DIR"],
    ]
    run([*worker, "--runs-dir", str(tmp_path / "jobs"), "--quiet"], env)
    from service.core.store.jobs import JobQueue

    job = JobQueue(env["SEQSERVE_DATA_DIR"]).latest()
    assert job.state == "failed" and job.report["step"] == "data", job
    assert json.loads(next((tmp_path / "jobs").glob("retrain-job-*/report.json")).read_text())["state"] == "failed"
