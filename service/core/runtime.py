"""Find the model artifact and open an ONNX Runtime session on the right execution provider, checked.

``SEQSERVE_MODEL``: a model store tag or a path to an artifact directory; unset, the service serves the promoted
champion (``service.core.store.champion``), never whatever was stored last.
``SEQSERVE_DEVICE``: ``auto`` (CUDA if it really initialises and passes the check, else CPU), ``cpu``, or
``cuda`` (fail if CUDA is not in use or fails the check). onnxruntime-gpu lists CUDA as *available* even on
machines without a GPU, and asking for it there only logs an error and falls back to CPU, so the provider in
use is read back from the session.

The CUDA provider runs with ``CUDA_OPTIONS``: ORT's defaults (exhaustive cuDNN convolution search, TF32 on
Hopper) made it slower than the CPU and broke the 1e-5 parity (shared/gpu/README.md).

**Load-time check.** Export stores reference outputs (``reference.npz``: held-out sequences and the CPU
graph's probabilities and attention). ``open_checked_session`` runs them on the new session, each sequence
alone and all of them batched together, and refuses a session that is off by more than ``CHECK_TOLERANCE``:
``auto`` then falls back to CPU and records why (``SessionInfo.fallback_reason``); ``cuda`` and ``cpu`` fail.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import REFERENCE_FILE, Artifact, ReferenceMismatch, check_integrity

log = logging.getLogger("seqserve")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0", "do_copy_in_default_stream": "1"}
CHECK_TOLERANCE = 1e-5  # max abs difference of probabilities/attention vs the recorded CPU outputs


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


def check_session(sess: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE) -> dict:
    """Run the recorded reference sequences alone and batched; raise ReferenceMismatch beyond ``tolerance``."""
    ref = np.load(reference_path)
    if "tokens" in ref:
        return check_step_session(sess, ref, tolerance)
    x, lengths, probs, att = ref["x"], ref["lengths"], ref["probabilities"], ref["attention"]
    p_batch, a_batch = sess.run(None, {"x": x, "lengths": lengths})
    diff_batched = max(float(np.abs(p_batch - probs).max()), float(np.abs(a_batch - att).max()))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        p, a = sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]})
        diff_alone = max(diff_alone, float(np.abs(p[0] - probs[i]).max()), float(np.abs(a[0] - att[i, :n]).max()))
    return _judged("sequences", len(lengths), diff_batched, diff_alone, tolerance)


def check_step_session(sess: ort.InferenceSession, ref: np.lib.npyio.NpzFile, tolerance: float) -> dict:
    """A language model's step graph (``export.lm_export``): the recorded streams batched, and each alone."""
    tokens, lengths = ref["tokens"], ref["lengths"]
    names = [i.name for i in sess.get_inputs()][2:]  # h (, c)
    states = [ref[f"state{i}"] for i in range(len(names))]
    want = [ref[f"out{i}"] for i in range(len(names) + 1)]
    got = sess.run(None, {"tokens": tokens, "lengths": lengths, **dict(zip(names, states))})
    diff_batched = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        feed = {"tokens": tokens[i : i + 1, :n], "lengths": lengths[i : i + 1]}
        one = sess.run(None, {**feed, **{k: s[:, i : i + 1] for k, s in zip(names, states)}})
        diff_alone = max(diff_alone, float(np.abs(one[0][0] - want[0][i]).max()))
        diff_alone = max(diff_alone, *(float(np.abs(o[:, 0] - w[:, i]).max()) for o, w in zip(one[1:], want[1:])))
    return _judged("streams", len(lengths), diff_batched, diff_alone, tolerance)


def _judged(unit: str, n: int, diff_batched: float, diff_alone: float, tolerance: float) -> dict:
    """The load-time check's report, or ReferenceMismatch beyond ``tolerance``."""
    if max(diff_batched, diff_alone) > tolerance:
        raise ReferenceMismatch(
            f"outputs differ from the artifact's reference outputs by {max(diff_batched, diff_alone):.3g} "
            f"(batched {diff_batched:.3g}, alone {diff_alone:.3g}) > {tolerance}"
        )
    return {unit: n, "max_abs_diff_batched": diff_batched, "max_abs_diff_alone": diff_alone, "tolerance": tolerance}


def open_checked_session(artifact: Artifact, device: str = "auto", threads: int = 0, spin: bool = True) -> SessionInfo:
    """Open a session on ``device`` and check it against the artifact's reference outputs (see module doc)."""
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
                check = check_session(sess, artifact.reference_path) if has_reference else {}
            except ReferenceMismatch as e:
                why = f"CUDA failed the load-time check: {e}"
            else:
                log.info("seqserve: ONNX Runtime provider in use: %s %s", CUDA, sess.get_provider_options()[CUDA])
                return SessionInfo(sess, CUDA, sess.get_provider_options()[CUDA], None, check)
        if device == "cuda":
            raise RuntimeError(f"SEQSERVE_DEVICE=cuda but {why}")
        fallback = why
        if CUDA in ort.get_available_providers():
            log.info("seqserve: auto device: using CPU because %s", why)
    opts = session_options(threads, quiet=False, spin=spin)
    sess = ort.InferenceSession(str(artifact.onnx_path), opts, providers=[CPU])
    try:
        check = check_session(sess, artifact.reference_path) if has_reference else {}
    except ReferenceMismatch as e:
        raise ReferenceMismatch(f"model {artifact.source}: the CPU session {e}; refusing to serve it") from None
    log.info("seqserve: ONNX Runtime provider in use: %s", CPU)
    return SessionInfo(sess, CPU, sess.get_provider_options().get(CPU, {}), fallback, check)
