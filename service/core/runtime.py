"""Find the model artifact and open an ONNX Runtime session on the right execution provider, checked.

``SEQSERVE_MODEL``: a model store tag or a path to an artifact directory; unset, the service serves the promoted
champion (``service.core.store.champion``), never whatever was stored last.
``SEQSERVE_DEVICE``: ``auto`` (CUDA if it really initialises and passes the check, else CPU), ``cpu``, or
``cuda`` (fail if CUDA is not in use or fails the check). onnxruntime-gpu lists CUDA as *available* even on
machines without a GPU, and asking for it there only logs an error and falls back to CPU, so the provider in
use is read back from the session.

The CUDA provider runs with ``CUDA_OPTIONS``: ORT's defaults (exhaustive cuDNN convolution search, TF32 on
Hopper) made it slower than the CPU and broke the 1e-5 parity (shared/gpu/README.md).

**Load-time check.** Export stores reference outputs (``reference.npz``: held-out inputs and what the CPU
graph gave for them). ``open_checked_session`` hands the new session to the task's check (a ``ReferenceCheck``:
``service/tasks/<task>/spec.py``, which runs the inputs alone and batched and reports through ``judged``), and
refuses a session that is off by more than ``CHECK_TOLERANCE``:
``auto`` then falls back to CPU and records why (``SessionInfo.fallback_reason``); ``cuda`` and ``cpu`` fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from service.core.artifact import REFERENCE_FILE, Artifact, ReferenceMismatch, check_integrity

log = logging.getLogger("seqserve")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", "do_copy_in_default_stream": "1"}
CHECK_TOLERANCE = 1e-5  # max abs difference of probabilities/attention vs the recorded CPU outputs
ReferenceCheck = Callable[[ort.InferenceSession, Path], dict]  # a task's check: its report, or ReferenceMismatch


@dataclass
class SessionInfo:
    session: ort.InferenceSession
    provider: str  # the provider actually in use
    provider_options: dict  # as the session reports them for that provider
    fallback_reason: str | None = None  # why auto is not on CUDA although CUDA was tried
    check: dict = field(default_factory=dict)  # the load-time reference check


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:  # cgroup v2: "max 100000" or "200000 100000"
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        quota = None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / period if q > 0 else None
        except (OSError, ValueError):
            quota = None
    if quota:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def session_options(threads: int, quiet: bool, spin: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spin:  # idle intra-op threads sleep instead of spinning (they would take CPU from the API workers)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4 if quiet else 2
    return opts


def _try_cuda(model_path: Path, threads: int, spin: bool = True) -> tuple[ort.InferenceSession | None, str]:
    """A session on CUDA, or (None, why not). The failed-CUDA fallback on a CPU machine logs errors: hushed."""
    if CUDA not in ort.get_available_providers():
        return None, "this onnxruntime build has no CUDAExecutionProvider"
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(
            str(model_path), session_options(threads, quiet=True, spin=spin), providers=[(CUDA, CUDA_OPTIONS), CPU]
        )
    except Exception as e:  # noqa: BLE001 - any CUDA init failure means "no CUDA here"
        return None, f"CUDA did not initialise ({str(e).splitlines()[0]})"
    finally:
        ort.set_default_logger_severity(2)
    if sess.get_providers()[0] != CUDA:
        return None, "CUDA did not initialise (no GPU or CUDA/cuDNN libraries)"
    return sess, ""


def judged(unit: str, n: int, diff_batched: float, diff_alone: float, tolerance: float) -> dict:
    """The load-time check's report, or ReferenceMismatch beyond ``tolerance``."""
    if max(diff_batched, diff_alone) > tolerance:
        raise ReferenceMismatch(
            f"outputs differ from the artifact's reference outputs by {max(diff_batched, diff_alone):.3g} "
            f"(batched {diff_batched:.3g}, alone {diff_alone:.3g}) > {tolerance}"
        )
    return {unit: n, "max_abs_diff_batched": diff_batched, "max_abs_diff_alone": diff_alone, "tolerance": tolerance}


def open_checked_session(
    artifact: Artifact, device: str = "auto", threads: int = 0, spin: bool = True, *, check: ReferenceCheck
) -> SessionInfo:
    """Open a session on ``device`` and check it with the task's ``check`` against the artifact's reference
    outputs (see module doc)."""
    device = device.lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"SEQSERVE_DEVICE must be auto, cpu or cuda, got {device!r}")
    check_integrity(artifact)
    has_reference = artifact.reference_path.exists()
    if not has_reference:
        log.warning("seqserve: artifact %s has no %s; load-time check skipped", artifact.path, REFERENCE_FILE)
    fallback = None
    if device in ("auto", "cuda"):
        sess, why = _try_cuda(artifact.onnx_path, threads, spin)
        if sess is not None:
            try:
                check_report = check(sess, artifact.reference_path) if has_reference else {}
            except ReferenceMismatch as e:
                why = f"CUDA failed the load-time check: {e}"
            else:
                log.info("seqserve: ONNX Runtime provider in use: %s %s", CUDA, sess.get_provider_options()[CUDA])
                return SessionInfo(sess, CUDA, sess.get_provider_options()[CUDA], None, check_report)
        if device == "cuda":
            raise RuntimeError(f"SEQSERVE_DEVICE=cuda but {why}")
        fallback = why
        if CUDA in ort.get_available_providers():
            log.info("seqserve: auto device: using CPU because %s", why)
    opts = session_options(threads, quiet=False, spin=spin)
    sess = ort.InferenceSession(str(artifact.onnx_path), opts, providers=[CPU])
    try:
        check_report = check(sess, artifact.reference_path) if has_reference else {}
    except ReferenceMismatch as e:
        raise ReferenceMismatch(f"model {artifact.source}: the CPU session {e}; refusing to serve it") from None
    log.info("seqserve: ONNX Runtime provider in use: %s", CPU)
    return SessionInfo(sess, CPU, sess.get_provider_options().get(CPU, {}), fallback, check_report)
