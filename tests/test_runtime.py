"""Execution-provider choice and model lookup, in fresh processes (ORT logs straight to stderr)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.procs import start_bentoml
from service.core import runtime
from service.core.artifact import ReferenceMismatch, find_artifact
from service.core.runtime import CPU, CUDA_OPTIONS, available_cpus, open_checked_session
from service.tasks.classify.spec import check_reference

ROOT = Path(__file__).resolve().parents[1]
OPEN = (
    "import sys; from service.core.artifact import find_artifact;"
    "from service.core.runtime import open_checked_session; from service.tasks.classify.spec import check_reference;"
    "print(open_checked_session(find_artifact(sys.argv[1]), sys.argv[2], check=check_reference).provider)"
)


def open_in_subprocess(artifact: Path, device: str) -> subprocess.CompletedProcess:
    """The service's own session opening (provider choice and load-time check) in a fresh process."""
    return subprocess.run(
        [sys.executable, "-c", OPEN, str(artifact), device], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def has_cuda(artifact: Path) -> bool:
    return open_in_subprocess(artifact, "auto").stdout.strip() == "CUDAExecutionProvider"


def test_auto_reports_provider_in_use_without_error_noise(artifact: Path) -> None:
    proc = open_in_subprocess(artifact, "auto")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert "[E:" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_cpu_is_cpu(artifact: Path) -> None:
    proc = open_in_subprocess(artifact, "cpu")
    assert proc.stdout.strip() == "CPUExecutionProvider" and not proc.stderr.strip()


def test_cuda_fails_fast_without_gpu(artifact: Path) -> None:
    if has_cuda(artifact):
        pytest.skip("CUDA really works on this machine; the failure path cannot be exercised")
    proc = open_in_subprocess(artifact, "cuda")
    assert proc.returncode != 0
    assert "SEQSERVE_DEVICE=cuda but" in proc.stderr


def test_bad_device_value(artifact: Path) -> None:
    proc = open_in_subprocess(artifact, "tpu")
    assert proc.returncode != 0 and "SEQSERVE_DEVICE must be auto, cpu or cuda" in proc.stderr


def test_missing_model_fails_clearly(tmp_path: Path) -> None:
    """No model named, none promoted: the server refuses to start and says what to do; a named tag that is not
    in the (empty) store: the same, with no cloud lookup."""
    env = {"BENTOML_HOME": str(tmp_path / "empty"), "SEQSERVE_DATA_DIR": str(tmp_path / "data")}
    with pytest.raises(RuntimeError) as e:
        start_bentoml(ROOT, env, tmp_path / "log.txt", timeout=60)
    assert "no model to serve: set SEQSERVE_MODEL" in str(e.value) and "export.promote" in str(e.value)
    with pytest.raises(RuntimeError) as e:
        start_bentoml(ROOT, env | {"SEQSERVE_MODEL": "seqclassifier:nothere"}, tmp_path / "log2.txt", timeout=60)
    assert "is not in the local model store" in str(e.value) and "make export" in str(e.value)


def test_model_from_directory(artifact: Path, tmp_path: Path) -> None:
    """SEQSERVE_MODEL may point at an artifact directory instead of a store tag."""
    code = "from service.core.artifact import find_artifact; a = find_artifact(); print(a.meta.model_version)"
    env = {**os.environ, "SEQSERVE_MODEL": str(artifact)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 12, proc.stderr


def copy_artifact(artifact: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in artifact.iterdir():
        shutil.copy2(f, dest / f.name)
    return dest


def test_load_check_passes_and_reports_the_session(artifact: Path) -> None:
    info = open_checked_session(find_artifact(str(artifact)), "auto", threads=1, check=check_reference)
    assert info.check["sequences"] == 8
    assert info.check["max_abs_diff_alone"] <= 1e-5 and info.check["max_abs_diff_batched"] <= 1e-5
    assert info.provider_options == info.session.get_provider_options()[info.provider]  # read back, not assumed
    if info.provider == CPU:  # auto tried CUDA first and says why it is not in use
        assert info.fallback_reason
    else:
        assert info.provider_options["cudnn_conv_algo_search"] == CUDA_OPTIONS["cudnn_conv_algo_search"]
        assert info.provider_options["use_tf32"] == "0"


def test_load_check_refuses_edited_reference_outputs(artifact: Path, tmp_path: Path) -> None:
    edited = copy_artifact(artifact, tmp_path / "edited")
    ref = dict(np.load(edited / "reference.npz"))
    ref["probabilities"] = ref["probabilities"] + 1e-3
    np.savez(edited / "reference.npz", **ref)
    with pytest.raises(ReferenceMismatch) as e:
        open_checked_session(find_artifact(str(edited)), "cpu", threads=1, check=check_reference)
    assert "differ from the artifact's reference outputs by 0.001" in str(e.value) and "refusing" in str(e.value)


def test_auto_falls_back_to_cpu_when_the_gpu_session_fails_the_check(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-choice session (on a GPU machine, CUDA) computes something else: auto serves CPU and says why.
    Here a real session of another model stands in for a CUDA session that drifted."""
    from test_export import write_run

    from training.onnx import cpu_session
    from training.tasks.classify.export import export_run

    other = tmp_path / "other"
    export_run(write_run(tmp_path, seed=5, rnn="gru", bidirectional=True, attention="additive", stride=1), other)
    monkeypatch.setattr(runtime, "_try_cuda", lambda path, threads, spin=True: (cpu_session(other / "model.onnx"), ""))
    info = open_checked_session(find_artifact(str(artifact)), "auto", threads=1, check=check_reference)
    assert info.provider == CPU
    assert info.fallback_reason.startswith("CUDA failed the load-time check: outputs differ")
    with pytest.raises(RuntimeError, match="SEQSERVE_DEVICE=cuda but CUDA failed the load-time check"):
        open_checked_session(find_artifact(str(artifact)), "cuda", threads=1, check=check_reference)


def test_available_cpus_is_within_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
