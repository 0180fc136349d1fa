"""What every task's export shares: the opset, the parity error, a quiet CPU session, the content version.

Each task's export lives beside the model it exports (``training/tasks/<task>/export.py``): it writes the graph,
gates it on parity with torch (``ParityError``), records reference outputs for the service's load-time check and
builds ``metadata.json`` through the artifact contract (``service.core.artifact``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort

OPSET = 17  # the TorchScript exporter's opset: native ONNX RNN ops with sequence_lens


class ParityError(RuntimeError):
    """The exported graph does not reproduce torch, or depends on batch composition."""


KNOWN_CPP_WARNINGS = (
    # The TorchScript exporter has no shape-inference rule for the packed-sequence ops; the ONNX graph it writes
    # is right all the same (each export's parity gate runs it on padded batches against torch).
    "The shape inference of prim::PackPadded type is missing",
    "The shape inference of prim::PadPacked type is missing",
)


@contextlib.contextmanager
def quiet_known_cpp_warnings() -> Iterator[None]:
    """Drop torch's C++ warnings in ``KNOWN_CPP_WARNINGS`` (printed on the process's stderr, out of reach of
    Python's ``warnings``) while the block runs; every other line still reaches stderr afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(known in line for known in KNOWN_CPP_WARNINGS):
                    sys.stderr.write(line)


def cpu_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def content_version(graph_sha256: str, contract: dict) -> str:
    """Version = hash of the graph's hash and the serving contract (classes, limits, normalisation)."""
    h = hashlib.sha256(graph_sha256.encode())
    h.update(json.dumps(contract, sort_keys=True).encode())
    return h.hexdigest()[:12]


def write_metadata(meta: dict[str, Any], run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """``metadata.json`` through the artifact contract (a field it refuses fails the export), and the run's
    ``checkpoint.pt`` beside it (what retraining fine-tunes from); the metadata as written."""
    from service.core.artifact import ArtifactMeta

    meta = ArtifactMeta.from_dict(meta, str(out_dir / "metadata.json")).to_dict()
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    shutil.copy2(run_dir / "checkpoint.pt", out_dir / "checkpoint.pt")
    return meta
