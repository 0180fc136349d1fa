"""Faults (issue 13): the feedback database full or read-only (a clear 503, nothing acknowledged that was not
stored), the model file deleted or corrupted on disk while serving (serving goes on from memory; a reload of a
damaged model is refused), and the model service's worker killed under load (a bounded outage, counted, then
back)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.procs import descendants, start_bentoml, stop_process
from service.tasks.classify.feedback import StoreUnavailable, open_store

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"sequences": [[[0.1] * 12] * 5]}


def items(n: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(n)
    return [(rng.standard_normal((20, 12)).astype(np.float32), "1") for _ in range(n)]


def test_a_full_database_refuses_and_stores_nothing(tmp_path: Path) -> None:
    """SQLite's max_page_count makes the disk "full" at a size of our choosing."""
    store = open_store(tmp_path)
    store.add(items(1))
    (pages,) = store.db.conn.execute("PRAGMA page_count").fetchone()
    store.db.conn.execute(f"PRAGMA max_page_count = {pages + 3}")
    acknowledged = 1
    with pytest.raises(StoreUnavailable, match="full"):
        for _ in range(100):
            acknowledged += len(store.add(items(4)))
    assert sum(store.counts().values()) == acknowledged  # the refused request left nothing behind
    store.db.conn.execute("PRAGMA max_page_count = 1000000")  # space again: writes go on
    assert len(store.add(items(2))) == 2


def test_a_read_only_database_refuses_and_stores_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add(items(3))
    store.db.conn.close()
    store.db.conn = sqlite3.connect(f"file:{tmp_path / 'feedback.db'}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(StoreUnavailable, match="readonly"):
        store.add(items(2))
    assert sum(store.counts().values()) == 3


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a small tmpfs at ``path`` (root only); the reason when it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return None if out.returncode == 0 else (out.stderr.decode().strip() or "mount failed")


def test_feedback_route_answers_503_on_a_full_disk(artifact: Path, tmp_path: Path) -> None:
    """A real filesystem: the data directory on a 2 MiB tmpfs, filled up, then freed again."""
    data = tmp_path / "data"
    reason = _mount_tmpfs(data, "2m")
    if reason:
        pytest.skip(f"cannot mount a tmpfs here ({reason}); the store-level tests above cover the logic")
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(data), "SEQSERVE_MODEL": str(artifact)}
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt")
    body = {"items": [{"sequence": [[0.1] * 12] * 30, "label": "1"}] * 8}
    try:
        assert httpx.post(f"{url}/feedback", json=body, timeout=30).status_code == 200
        filler = data / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=64"], capture_output=True)
        acknowledged, answers = 8, []
        for _ in range(20):
            r = httpx.post(f"{url}/feedback", json=body, timeout=30)
            answers.append(r.status_code)
            acknowledged += 8 if r.status_code == 200 else 0
        assert 503 in answers and set(answers) <= {200, 503}, answers
        r = httpx.post(f"{url}/feedback", json=body, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "nothing was stored" in r.json()["error"]["message"]
        assert httpx.post(f"{url}/predict", json=GOOD).status_code == 200  # predictions are not affected
        filler.unlink()
        assert httpx.post(f"{url}/feedback", json=body, timeout=30).status_code == 200
        acknowledged += 8  # (a read-only remount under an open database is refused by the kernel: EBUSY)
        assert "seqserve_feedback_unavailable_requests_total" in httpx.get(f"{url}/metrics").text
    finally:
        stop_process(proc)
        stored = sum(open_store(data).counts().values())
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
    assert stored == acknowledged  # nothing acknowledged that was not stored, nothing stored unacknowledged


def test_model_file_deleted_or_corrupted_while_serving(artifact: Path, tmp_path: Path) -> None:
    """Serving goes on from memory when the served file goes; a promoted model whose file is damaged before the
    service loads it is refused (its SHA-256 differs from the export's) and the old one keeps serving."""
    served, second = tmp_path / "served", tmp_path / "second"
    shutil.copytree(artifact, served)
    shutil.copytree(artifact, second)
    meta = json.loads((second / "metadata.json").read_text())
    meta["model_version"] = "second000000"  # the same graph under another version: a new champion
    (second / "metadata.json").write_text(json.dumps(meta))
    env = {
        "BENTOML_HOME": str(tmp_path / "home"),
        "SEQSERVE_DATA_DIR": str(tmp_path / "data"),
        "SEQSERVE_RELOAD_INTERVAL_S": "0",  # reloads only when asked (POST /admin/reload)
        "SEQSERVE_ADMIN_TOKEN": "t",
    }
    promote = [sys.executable, "-m", "export.promote"]
    run = {"cwd": ROOT, "env": {**os.environ, **env}, "capture_output": True}
    assert subprocess.run([*promote, str(served)], **run).returncode == 0  # the directory itself
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt")
    admin = {"authorization": "Bearer t"}
    try:
        first = httpx.post(f"{url}/predict", json=GOOD).json()
        (served / "model.onnx").unlink()
        for _ in range(20):
            r = httpx.post(f"{url}/predict", json=GOOD)
            assert r.status_code == 200 and r.json() == first
        assert subprocess.run([*promote, str(second)], **run).returncode == 0
        raw = bytearray((second / "model.onnx").read_bytes())
        raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # damaged after the promotion
        (second / "model.onnx").write_bytes(bytes(raw))
        reload = httpx.post(f"{url}/admin/reload", headers=admin).json()
        assert reload["model_version"] == first[0]["model_version"] and reload["outcome"] != "swapped", reload
        assert httpx.post(f"{url}/predict", json=GOOD).json() == first
        assert "seqserve_model_swap_failures_total 1.0" in httpx.get(f"{url}/metrics").text
        out = subprocess.run([*promote, str(second)], **run)  # promoting the damaged file again: refused at once
        assert out.returncode != 0 and b"damaged or replaced" in out.stderr, out.stderr
    finally:
        stop_process(proc)
    assert "damaged or replaced" in (tmp_path / "log.txt").read_text()


def test_killing_the_model_worker_is_a_bounded_counted_outage(artifact: Path, tmp_path: Path) -> None:
    """kill -9 of the model service's worker under load: it is started again, the requests caught in between
    wait or fail (5xx, counted in the request metrics), and the service answers again within seconds."""
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(tmp_path), "SEQSERVE_MODEL": str(artifact)}
    log = tmp_path / "log.txt"
    proc, url = start_bentoml(ROOT, env, log)
    results: list[tuple[float, float, int]] = []  # (sent, answered, status)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = client.post(f"{url}/predict", json=GOOD).status_code
                except httpx.HTTPError:
                    status = 0
                results.append((t0, time.monotonic(), status))

    def model_worker() -> int | None:
        found = [p for p in descendants(proc.pid) if b"seqserve-model" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return found[0] if found else None

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        old = model_worker()
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        deadline = killed_at + 60
        while time.monotonic() < deadline:  # back: a new worker, and answers sent after the kill are 200 again
            time.sleep(0.2)
            new = model_worker()
            if new not in (None, old) and any(s == 200 and t0 > killed_at for t0, _, s in results):
                break
        back_at = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert back_at < deadline, "the model service did not come back within 60 s"
        failed = [(t0, t1, s) for t0, t1, s in results if s != 200]
        assert all(t1 >= killed_at and t0 <= back_at for t0, t1, _ in failed), failed  # only around the kill
        assert all(s >= 500 for _, _, s in failed), failed
        slowest = max(t1 - t0 for t0, t1, _ in results if t1 >= killed_at)
        print(
            f"model worker killed: back after {back_at - killed_at:.1f} s; {len(failed)} of {len(results)} "
            f"requests failed; slowest answer around the kill {slowest:.1f} s"
        )
        text = httpx.get(f"{url}/metrics").text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("bentoml_service_request_total{") and 'http_response_code="5' in line
        )
        assert counted >= len(failed)
        assert httpx.post(f"{url}/predict", json=GOOD).status_code == 200
    finally:
        stop_process(proc)
