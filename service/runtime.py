"""Find the model artifact and open an ONNX Runtime session on the right execution provider.

``SEQSERVE_MODEL``: a model store tag (default ``seqclassifier:latest``) or a path to an artifact directory.
``SEQSERVE_DEVICE``: ``auto`` (CUDA if it really initialises, else CPU), ``cpu``, or ``cuda`` (fail if CUDA
is not in use). onnxruntime-gpu lists CUDA as *available* even on machines without a GPU, and asking for it
there only logs an error and falls back to CPU, so the provider in use is read back from the session.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("seqserve")

DEFAULT_TAG = "seqclassifier:latest"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class ModelNotFound(RuntimeError):
    pass


@dataclass
class Artifact:
    path: Path  # directory holding model.onnx and metadata.json
    meta: dict
    source: str  # the tag or path it was found by

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"


def find_artifact(ref: str | None = None) -> Artifact:
    """Resolve ``ref`` (tag or directory; default from ``SEQSERVE_MODEL``) in the local store only."""
    ref = ref or os.environ.get("SEQSERVE_MODEL") or DEFAULT_TAG
    candidate = Path(ref)
    if candidate.is_dir():
        path = candidate
    else:
        import bentoml
        from bentoml.exceptions import BentoMLException

        try:
            # The local store only: never reach for a remote/cloud model on a missing tag.
            path = Path(bentoml.models.get(ref).path)
        except BentoMLException as e:
            home = os.environ.get("BENTOML_HOME", "~/bentoml")
            raise ModelNotFound(
                f"model {ref!r} is not in the local model store ({home}); run `make export` first ({e})"
            ) from None
    if not (path / "model.onnx").exists() or not (path / "metadata.json").exists():
        raise ModelNotFound(f"{path} does not hold model.onnx and metadata.json")
    return Artifact(path, json.loads((path / "metadata.json").read_text()), ref)


def open_session(model_path: Path, device: str = "auto", threads: int = 0) -> tuple[ort.InferenceSession, str]:
    """Return (session, provider in use). ``threads``: ORT intra-op threads (0: ORT default)."""
    device = device.lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"SEQSERVE_DEVICE must be auto, cpu or cuda, got {device!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device in ("auto", "cuda") and CUDA in ort.get_available_providers():
        ort.set_default_logger_severity(4)  # the failed-CUDA fallback on a CPU machine is logged as an error
        opts.log_severity_level = 4
        try:
            sess = ort.InferenceSession(str(model_path), opts, providers=[CUDA, CPU])
        except Exception as e:  # noqa: BLE001 - any CUDA init failure means "no CUDA here"
            sess, why = None, str(e)
        else:
            why = "CUDA did not initialise (no GPU or CUDA/cuDNN libraries)"
        finally:
            ort.set_default_logger_severity(2)
            opts.log_severity_level = 2
        if sess is not None and sess.get_providers()[0] == CUDA:
            log.info("seqserve: ONNX Runtime provider in use: %s", CUDA)
            return sess, CUDA
        if device == "cuda":
            raise RuntimeError(f"SEQSERVE_DEVICE=cuda but {why}")
    elif device == "cuda":
        raise RuntimeError("SEQSERVE_DEVICE=cuda but this onnxruntime build has no CUDAExecutionProvider")
    sess = ort.InferenceSession(str(model_path), opts, providers=[CPU])
    log.info("seqserve: ONNX Runtime provider in use: %s", sess.get_providers()[0])
    return sess, sess.get_providers()[0]
