"""Issue 29 (3): a server with no champion runs unready with the reason, and loads the first one promoted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtest.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_no_champion_is_unready_then_the_first_promotion_is_served(artifact: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "home"),
           "SEQSERVE_DATA_DIR": str(tmp_path / "data"), "SEQSERVE_RELOAD_INTERVAL_S": "1"}  # fmt: skip
    env.pop("SEQSERVE_MODEL", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service.launch", "service.service:SeqServe", "--host", "127.0.0.1"]
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen([*cmd, "--port", str(port), "--timeout-graceful-shutdown", "5"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_http(f"{url}/livez", 60, proc, tmp_path / "log.txt")  # alive, and still the launcher
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "30"
        error = ready.json()["error"]
        assert error["code"] == "no_model" and "no classify champion is promoted" in error["message"], error
        assert httpx.post(f"{url}/predict", json={"sequences": [[[0.0] * 12]]}).status_code == 503
        assert 'seqserve_waiting_for_model{task="classify"} 1' in httpx.get(f"{url}/metrics").text
        time.sleep(2)
        assert proc.poll() is None  # still waiting, not crashed

        promote = [sys.executable, "-m", "export.promote", str(artifact), "--store"]
        done = subprocess.run([*promote, "--data-dir", env["SEQSERVE_DATA_DIR"]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        version = json.loads((artifact / "metadata.json").read_text())["model_version"]
        wait_http(f"{url}/readyz", 120, proc, tmp_path / "log.txt")  # the promoted champion, on the same process
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["model_version"] == version and meta["served_because"] == "champion"
    finally:
        stop_process(proc)


def test_bentoml_serve_without_a_model_says_why_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "home"),
           "SEQSERVE_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    env.pop("SEQSERVE_MODEL", None)
    code = "import service.service"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no model to serve" in proc.stderr and "python -m service.launch service.service:SeqServe" in proc.stderr
