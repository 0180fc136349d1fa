"""Request validation for /predict, run per request *before* adaptive batching.

BentoML validates each request body against the pydantic type of the API parameter before it joins the
batch, so a bad request is rejected alone (HTTP 400) and never fails the requests batched with it. The
validator converts each sequence to a float32 ``[T, F]`` array once, here, and names the field and the
limit in every error: ``sequences[3][7]: 11 features, the model expects 12``. The error ``type`` names the
reason (``seqserve_feature_count``, ``seqserve_too_long``, ...); ``service.metrics`` counts rejections by it.
Each validated sequence remembers when it was parsed (``received_at``) for the queue-wait metric.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from pydantic import WrapValidator
from pydantic_core import PydanticCustomError

MAX_SEQUENCES = 64


class ReceivedSequence(np.ndarray):
    """A validated float32 ``[T, F]`` sequence that remembers when its request was parsed."""

    received_at: float = 0.0


def _fail(reason: str, msg: str) -> PydanticCustomError:
    return PydanticCustomError(f"seqserve_{reason}", msg)


def _check_sequence(i: int, seq: Any, feature_dim: int, max_length: int) -> np.ndarray:
    field = f"sequences[{i}]"
    if not isinstance(seq, list):
        raise _fail(
            "bad_type",
            f"{field}: must be a list of time steps (each a list of {feature_dim} numbers), got {type(seq).__name__}",
        )
    if not seq:
        raise _fail("empty", f"{field}: empty sequence; need at least 1 time step")
    if len(seq) > max_length:
        raise _fail("too_long", f"{field}: {len(seq)} time steps, the model accepts at most {max_length} (max_length)")
    for t, step in enumerate(seq):
        if not isinstance(step, list):
            raise _fail("bad_type", f"{field}[{t}]: must be a list of {feature_dim} numbers, got {type(step).__name__}")
        if len(step) != feature_dim:
            raise _fail(
                "feature_count", f"{field}[{t}]: {len(step)} features, the model expects {feature_dim} (feature_dim)"
            )
    arr = np.array(seq)  # homogeneous now: [T, F]
    if arr.dtype.kind not in "fiu" or any(type(v) is bool for step in seq for v in step):
        bad = next(
            (t, v) for t, step in enumerate(seq) for v in step if isinstance(v, bool) or not isinstance(v, (int, float))
        )
        raise _fail("not_a_number", f"{field}[{bad[0]}]: {bad[1]!r} is not a number")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        t = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise _fail("non_finite", f"{field}[{t}]: non-finite value (NaN, Infinity or beyond float32 range)")
    return arr


def sequences_type(feature_dim: int, max_length: int, max_sequences: int = MAX_SEQUENCES) -> Any:
    """The annotated parameter type: JSON schema of nested float lists, validated into float32 arrays."""

    def validate(value: Any, handler: Any) -> list[np.ndarray]:
        if not isinstance(value, list):
            raise _fail(
                "bad_type", f"sequences: must be a list of 1..{max_sequences} sequences, got {type(value).__name__}"
            )
        if not 1 <= len(value) <= max_sequences:
            raise _fail("sequence_count", f"sequences: {len(value)} sequences, must be 1..{max_sequences} per request")
        received = time.perf_counter()
        out = []
        for i, s in enumerate(value):
            arr = _check_sequence(i, s, feature_dim, max_length).view(ReceivedSequence)
            arr.received_at = received
            out.append(arr)
        return out

    return Annotated[list[list[list[float]]], WrapValidator(validate)]
