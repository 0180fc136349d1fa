"""Execution-provider choice and model lookup, in fresh processes (ORT logs straight to stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.procs import start_bentoml

ROOT = Path(__file__).resolve().parents[1]
OPEN = "from service.runtime import open_session; import sys; s, p = open_session(sys.argv[1], sys.argv[2]); print(p)"


def open_in_subprocess(model: Path, device: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OPEN, str(model), device], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def has_cuda(artifact: Path) -> bool:
    return open_in_subprocess(artifact / "model.onnx", "auto").stdout.strip() == "CUDAExecutionProvider"


def test_auto_reports_provider_in_use_without_error_noise(artifact: Path) -> None:
    proc = open_in_subprocess(artifact / "model.onnx", "auto")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert "[E:" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_cpu_is_cpu(artifact: Path) -> None:
    proc = open_in_subprocess(artifact / "model.onnx", "cpu")
    assert proc.stdout.strip() == "CPUExecutionProvider" and not proc.stderr.strip()


def test_cuda_fails_fast_without_gpu(artifact: Path) -> None:
    if has_cuda(artifact):
        pytest.skip("CUDA really works on this machine; the failure path cannot be exercised")
    proc = open_in_subprocess(artifact / "model.onnx", "cuda")
    assert proc.returncode != 0
    assert "SEQSERVE_DEVICE=cuda but" in proc.stderr


def test_bad_device_value(artifact: Path) -> None:
    proc = open_in_subprocess(artifact / "model.onnx", "tpu")
    assert proc.returncode != 0 and "SEQSERVE_DEVICE must be auto, cpu or cuda" in proc.stderr


def test_missing_model_fails_clearly(tmp_path: Path) -> None:
    """An empty model store: the server refuses to start and says what to do (no cloud lookup)."""
    with pytest.raises(RuntimeError) as e:
        start_bentoml(ROOT, {"BENTOML_HOME": str(tmp_path / "empty")}, tmp_path / "log.txt", timeout=60)
    assert "is not in the local model store" in str(e.value) and "make export" in str(e.value)


def test_model_from_directory(artifact: Path, tmp_path: Path) -> None:
    """SEQSERVE_MODEL may point at an artifact directory instead of a store tag."""
    code = "from service.runtime import find_artifact; a = find_artifact(); print(a.meta['model_version'])"
    env = {**os.environ, "SEQSERVE_MODEL": str(artifact)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 12, proc.stderr
