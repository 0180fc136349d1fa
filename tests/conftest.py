"""Shared fixtures: a small model trained in this session, its artifact in a temporary model store, and a real
``bentoml serve`` process on a free 127.0.0.1 port (stopped by PID at the end)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loadtest.procs import start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
JV_TRAIN = ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts"
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# Every process the tests start gets an empty service database (feedback, champion pointer) unless a test
# names one: a champion promoted in the checkout's own .seqserve/ must not decide what a test serves.
os.environ["SEQSERVE_DATA_DIR"] = tempfile.mkdtemp(prefix="seqserve-test-data-")


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml_home")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick real training run on JapaneseVowels (seconds): 1-layer BiGRU, 8 epochs."""
    from training.__main__ import main

    out = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "train",
            "--train",
            str(JV_TRAIN),
            "--test",
            str(JV_TEST),
            "--out",
            str(out),
            "--hidden",
            "32",
            "--layers",
            "1",
            "--epochs",
            "8",
            "--quiet",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def artifact(small_run: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export through the real CLI into a temporary BentoML model store."""
    out = tmp_path_factory.mktemp("artifact")
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--run", str(small_run), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stored as seqclassifier:" in proc.stderr
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's SEQSERVE_DATA_DIR (its feedback store)."""
    return tmp_path_factory.mktemp("data_dir")


@pytest.fixture(scope="session")
def server(artifact: Path, bentoml_home: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``bentoml serve`` on 127.0.0.1 loading ``seqclassifier:latest`` from the temporary store, accepting
    sequences of up to 64 steps."""
    log = tmp_path_factory.mktemp("logs") / "bentoml.log"
    # SEQSERVE_MAX_LENGTH: the serve-time override of the artifact's (generous) limit, kept small to test it.
    env = {"BENTOML_HOME": str(bentoml_home), "SEQSERVE_MAX_LATENCY_MS": "20000", "SEQSERVE_MAX_LENGTH": "64"}
    env["SEQSERVE_DATA_DIR"] = str(data_dir)
    proc, url = start_bentoml(ROOT, env, log)
    yield url
    stop_process(proc)
