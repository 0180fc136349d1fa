"""The classifier's V2 adapter (service/core/protocol/v2.py): its tensors are the ONNX model's own.

Input ``x`` FP32 ``[N, T, F]`` (padded) and ``lengths`` INT64 ``[N]`` or ``[N, 1]``; outputs ``probabilities``
FP32 ``[N, C]``, ``attention`` FP32 ``[N, T]`` (zero beyond each length) and ``label`` BYTES ``[N]``. Each row is
cut to its length and goes to the same length-aware batcher as ``/predict`` (``SeqServe.infer_items``), so both
protocols share batches and give the same answers. Every ``/predict`` rule holds, as a 400 naming the tensor and
the limit.
"""

from __future__ import annotations

import bentoml
import numpy as np

from service.core.artifact import ArtifactMeta
from service.core.batching.hop import request_items
from service.core.catalogue import asked
from service.core.protocol.v2 import Tensor, V2Error, tensor
from service.core.repository import Entry
from service.core.validate import first_non_finite, non_finite_message

OUTPUTS = ("probabilities", "attention", "label")


def sequences(
    request: dict, binaries: dict, meta: ArtifactMeta, max_length: int, max_n: int
) -> tuple[list[np.ndarray], int]:
    """Validate ``x`` and ``lengths``; each padded row cut to its length, and the padded length T."""
    inputs = {spec.get("name"): spec for spec in request["inputs"] if isinstance(spec, dict)}
    unknown = set(inputs) - {"x", "lengths"}
    if unknown or len(inputs) != len(request["inputs"]):
        raise V2Error(
            f"inputs: {sorted(map(str, unknown))} unknown; the model takes 'x' and 'lengths'", reason="bad_input"
        )
    for name in ("x", "lengths"):
        if name not in inputs:
            raise V2Error(
                f"input '{name}' is missing (the model takes 'x' FP32 [N, T, F] and 'lengths' INT64 [N])",
                reason="bad_input",
            )
    x = tensor(inputs["x"], binaries.get("x"), "FP32", "x")
    lengths = tensor(inputs["lengths"], binaries.get("lengths"), "INT64", "lengths")
    if x.ndim != 3 or x.shape[2] != meta.feature_dim:
        raise V2Error(
            f"input 'x': shape {list(x.shape)}, the model takes [N, T, {meta.feature_dim}] (feature_dim)",
            reason="feature_count",
        )
    n, t = x.shape[0], x.shape[1]
    if not 1 <= n <= max_n:
        raise V2Error(f"input 'x': {n} sequences, must be 1..{max_n} per request", reason="sequence_count")
    if lengths.shape not in ((n,), (n, 1)):
        raise V2Error(f"input 'lengths': shape {list(lengths.shape)}, must be [{n}] or [{n}, 1]", reason="shape")
    lengths = lengths.reshape(-1)
    for i, length in enumerate(lengths.tolist()):
        if not 1 <= length <= t:
            raise V2Error(
                f"input 'lengths'[{i}]: {length}, must be 1..{t} (the padded length T of 'x')", reason="length"
            )
        if length > max_length:
            raise V2Error(
                f"input 'lengths'[{i}]: {length} time steps, the model accepts at most {max_length}", reason="too_long"
            )
    seqs = [np.ascontiguousarray(x[i, :length], dtype=np.float32) for i, length in enumerate(lengths.tolist())]
    for i, s in enumerate(seqs):
        if not np.isfinite(s).all():
            raise V2Error(
                f"input 'x'[{i}]: non-finite value (NaN, Infinity or beyond float32 range)", reason="non_finite"
            )
    return seqs, t


def outputs(meta: ArtifactMeta, results: list, max_t: int) -> dict[str, Tensor]:
    """The output tensors of the answered sequences (probabilities, attention padded to ``max_t``, labels)."""
    probs = np.stack([r[0] for r in results]).astype("<f4")
    attention = np.zeros((len(results), max_t), "<f4")
    for i, r in enumerate(results):
        attention[i, : len(r[1])] = r[1]
    labels = [meta.classes[k] for k in probs.argmax(axis=1).tolist()]
    return {
        "probabilities": ("FP32", list(probs.shape), probs),
        "attention": ("FP32", list(attention.shape), attention),
        "label": ("BYTES", [len(labels)], labels),
    }


class ClassifyV2:
    """The classifier's ``V2Adapter`` of one served model (an entry of the server's model repository,
    ``service.core.repository``); the running API service is ``bentoml.get_current_service()``."""

    def __init__(self, entry: Entry, max_length: int, max_sequences: int) -> None:
        self.entry, self.max_length, self.max_sequences = entry, max_length, max_sequences
        self.meta = entry.artifact.meta
        self.model_name = entry.name

    def metadata(self) -> dict:
        meta = self.meta
        return {
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, -1, meta.feature_dim]},
                {"name": "lengths", "datatype": "INT64", "shape": [-1, 1]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(meta.classes)]},
                {"name": "attention", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "classes": meta.classes,
                "max_length": self.max_length,
                "max_sequences": self.max_sequences,
            },
        }

    async def version(self, ask: bool) -> str:
        if ask:  # the API worker's own note of the version lags a swap until an answer
            await asked(self.entry)  # Rejected (503) if the model service is not there
        return self.entry.version

    async def infer(self, request: dict, binaries: dict) -> tuple[str, dict[str, Tensor]]:
        seqs, t = sequences(request, binaries, self.meta, self.max_length, self.max_sequences)
        service = bentoml.get_current_service()
        results = await service.infer_items(request_items(seqs), self.entry)  # DeadlinePassed: 504
        bad = first_non_finite([r[0] for r in results])
        if bad is not None:
            raise V2Error(non_finite_message(f"x[{bad}]"), 422, "non_finite_output")
        return results[0][2], outputs(self.meta, results, t)
