"""Request validation for /predict (per request, *before* batching) and the response's JSON.

BentoML validates each request body against the pydantic type of the API parameter before it joins the
batch, so a bad request is rejected alone (HTTP 400) and never fails the requests batched with it. The
validator converts each sequence to a float32 ``[T, F]`` array once, here, and names the field and the
limit in every error: ``sequences[3][7]: 11 features, the model expects 12``. The error ``type`` names the
reason (``seqserve_feature_count``, ``seqserve_too_long``, ...); ``service.metrics`` counts rejections by it.
Each validated sequence remembers when it was parsed (``received_at``) for the queue-wait metric.

The common case (a well-formed sequence) takes a vectorised path: one ``np.array(seq, float32)``, one scan of
the value types, one ``isfinite``. Anything it does not accept goes through the step-by-step checks, which
find and name the first problem, so the error messages do not depend on the path. The limits are declared
in the parameter's JSON schema (``/docs.json``): sequences 1..max_sequences, time steps 1..max_length,
exactly feature_dim numbers per step.
"""

from __future__ import annotations

import time
from itertools import chain
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from annotated_types import Len
from pydantic import BaseModel, Field, WrapValidator
from pydantic_core import PydanticCustomError

MAX_SEQUENCES = 64
NUMBER_TYPES = frozenset((float, int))  # what JSON numbers decode to (bool, a subclass of int, is not here)


class ReceivedSequence(np.ndarray):
    """A validated float32 ``[T, F]`` sequence that remembers when its request was parsed."""

    received_at: float = 0.0


def _fail(reason: str, msg: str) -> PydanticCustomError:
    return PydanticCustomError(f"seqserve_{reason}", msg)


def _check_sequence(field: str, seq: Any, feature_dim: int, max_length: int) -> np.ndarray:
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


def _fast_sequence(seq: Any, feature_dim: int, max_length: int) -> np.ndarray | None:
    """The array for a well-formed sequence, or None (the slow path then names the problem)."""
    if type(seq) is not list or not 0 < len(seq) <= max_length:
        return None
    try:
        arr = np.array(seq, dtype=np.float32)
        types = set(map(type, chain.from_iterable(seq)))
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.ndim != 2 or arr.shape[1] != feature_dim or not types <= NUMBER_TYPES or not np.isfinite(arr).all():
        return None
    return arr


def _check_total_steps(field: str, lengths: Any, max_steps: int) -> None:
    total = sum(len(s) for s in lengths if isinstance(s, list))
    if total > max_steps:
        raise _fail(
            "too_many_steps",
            f"{field}: {total} time steps in all, at most {max_steps} per request (SEQSERVE_MAX_REQUEST_STEPS)",
        )


def sequences_type(
    feature_dim: int, max_length: int, max_sequences: int = MAX_SEQUENCES, max_steps: int = 1 << 62
) -> Any:
    """The annotated parameter type: JSON schema of nested float lists, validated into float32 arrays."""

    def validate(value: Any, handler: Any) -> list[np.ndarray]:
        if not isinstance(value, list):
            raise _fail(
                "bad_type", f"sequences: must be a list of 1..{max_sequences} sequences, got {type(value).__name__}"
            )
        if not 1 <= len(value) <= max_sequences:
            raise _fail("sequence_count", f"sequences: {len(value)} sequences, must be 1..{max_sequences} per request")
        _check_total_steps("sequences", value, max_steps)
        received = time.perf_counter()
        out = []
        for i, s in enumerate(value):
            arr = _fast_sequence(s, feature_dim, max_length)
            if arr is None:
                arr = _check_sequence(f"sequences[{i}]", s, feature_dim, max_length)
            arr = arr.view(ReceivedSequence)
            arr.received_at = received
            out.append(arr)
        return out

    step = Annotated[list[float], Len(feature_dim, feature_dim)]
    sequence = Annotated[list[step], Len(1, max_length)]
    return Annotated[list[sequence], Len(1, max_sequences), WrapValidator(validate)]


def feedback_type(
    feature_dim: int, max_length: int, classes: list[str], max_items: int = MAX_SEQUENCES, max_steps: int = 1 << 62
) -> Any:
    """``POST /feedback``'s ``items``: 1..max_items ``{"sequence": ..., "label": ...}``, each sequence checked as
    in /predict (field ``items[i].sequence``), each label one of the model's classes; validated into
    ``(float32 [T, F] array, label)`` pairs."""
    known = set(classes)

    def validate(value: Any, handler: Any) -> list[tuple[np.ndarray, str]]:
        if not isinstance(value, list):
            raise _fail("bad_type", f"items: must be a list of 1..{max_items} items, got {type(value).__name__}")
        if not 1 <= len(value) <= max_items:
            raise _fail("item_count", f"items: {len(value)} items, must be 1..{max_items} per request")
        _check_total_steps("items", (i.get("sequence") for i in value if isinstance(i, dict)), max_steps)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "sequence" not in item or "label" not in item:
                raise _fail("bad_item", f"items[{i}]: must be an object with 'sequence' and 'label'")
            seq, label = item["sequence"], item["label"]
            arr = _fast_sequence(seq, feature_dim, max_length)
            if arr is None:
                arr = _check_sequence(f"items[{i}].sequence", seq, feature_dim, max_length)
            if type(label) is int:  # JSON clients may send numeric class names as numbers
                label = str(label)
            if not isinstance(label, str) or label not in known:
                raise _fail(
                    "unknown_label",
                    f"items[{i}].label: {label!r} is not a class of this model (one of: {', '.join(classes)})",
                )
            out.append((arr, label))
        return out

    class FeedbackItemIn(BaseModel):
        sequence: Annotated[list[Annotated[list[float], Len(feature_dim, feature_dim)]], Len(1, max_length)]
        label: Literal[tuple(classes)] = Field(description="one of the model's classes")  # type: ignore[valid-type]

    return Annotated[list[FeedbackItemIn], Len(1, max_items), WrapValidator(validate)]


class FeedbackAck(BaseModel):
    """``POST /feedback``'s answer, sent after the items are committed to disk."""

    accepted: int = Field(description="items stored")
    ids: list[str] = Field(description="the stored items' ids, in request order")
    splits: list[str] = Field(description="train or holdout per item, fixed at insert")
    model_version: str = Field(description="the model this API worker serves")


class Prediction(BaseModel):
    """One sequence's answer (the documented response schema; responses are written by ``predictions_json``)."""

    label: str = Field(description="the most probable class")
    probabilities: dict[str, float] = Field(description="class -> probability, in the model's class order")
    attention: list[float] = Field(description="attention weight per input time step (sums to 1)")
    model_version: str = Field(description="content hash of the model that answered")


def first_non_finite(probabilities: list[np.ndarray]) -> int | None:
    """The index of the first answer whose probabilities are not all finite (None if all are)."""
    ok = np.isfinite(np.stack(probabilities)).all(axis=1)
    return None if ok.all() else int(np.flatnonzero(~ok)[0])


def non_finite_message(field: str) -> str:
    return (
        f"{field}: the model's output is not finite for this sequence (values this large overflow float32 inside "
        "the model); scale the input"
    )


def predictions_json(classes: list[str], version: str, probs: np.ndarray, attention: list[np.ndarray]) -> bytes:
    """The /predict response body: a JSON list of ``Prediction`` objects, one per sequence, in order.
    float32 values are written as the shortest decimal that reads back as the same float32."""
    labels = probs.argmax(axis=1).tolist()
    out = [
        {
            "label": classes[best],
            "probabilities": dict(zip(classes, p)),
            "attention": a,
            "model_version": version,
        }
        for best, p, a in zip(labels, probs, attention)
    ]
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
