"""Request validation for /predict (per request, *before* batching) and the response's JSON.

BentoML validates each request body against the pydantic type of the API parameter before it joins the
batch, so a bad request is rejected alone (HTTP 400) and never fails the requests batched with it. The
validator converts each sequence to a float32 ``[T, F]`` array once, here, and names the field and the
limit in every error: ``sequences[3][7]: 11 features, the model expects 12``. The error ``type`` names the
reason (``seqserve_feature_count``, ``seqserve_too_long``, ...); ``service.tasks.classify.metrics`` counts
rejections by it.
Each validated sequence remembers when it was parsed (``received_at``) for the queue-wait metric.

Each sequence goes through ``service.core.validate`` (a vectorised fast path, else step-by-step checks that name
the first problem). The limits are declared
in the parameter's JSON schema (``/docs.json``): sequences 1..max_sequences, time steps 1..max_length,
exactly feature_dim numbers per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from annotated_types import Len
from pydantic import BaseModel, Field, ValidationInfo, WrapValidator

from service.core.validate import ReceivedSequence, as_sequence, check_total_steps, fail

MAX_SEQUENCES = 64


# A model repository's limits by model name: (feature_dim, max_length, classes) of the model a request names
# in its ``model`` field, validated before this field (service/core/repository.py).
PerModel = Callable[[str], tuple[int, int, list[str]]]


def sequences_type(
    feature_dim: int,
    max_length: int,
    max_sequences: int = MAX_SEQUENCES,
    max_steps: int = 1 << 62,
    per_model: PerModel | None = None,
) -> Any:
    """The annotated parameter type: JSON schema of nested float lists, validated into float32 arrays. With
    ``per_model``, the limits are those of the model the request names (the schema shows the default's)."""
    default_limits = feature_dim, max_length

    def validate(value: Any, handler: Any, info: ValidationInfo) -> list[np.ndarray]:
        feature_dim, max_length = default_limits
        if per_model is not None and "model" in (info.data or {}):
            feature_dim, max_length, _ = per_model(info.data["model"])
        if not isinstance(value, list):
            raise fail(
                "bad_type", f"sequences: must be a list of 1..{max_sequences} sequences, got {type(value).__name__}"
            )
        if not 1 <= len(value) <= max_sequences:
            raise fail("sequence_count", f"sequences: {len(value)} sequences, must be 1..{max_sequences} per request")
        check_total_steps("sequences", value, max_steps)
        received = time.perf_counter()
        out = []
        for i, s in enumerate(value):
            arr = as_sequence(f"sequences[{i}]", s, feature_dim, max_length).view(ReceivedSequence)
            arr.received_at = received
            out.append(arr)
        return out

    step = Annotated[list[float], Len(feature_dim, feature_dim)]
    sequence = Annotated[list[step], Len(1, max_length)]
    return Annotated[list[sequence], Len(1, max_sequences), WrapValidator(validate)]


def feedback_type(
    feature_dim: int,
    max_length: int,
    classes: list[str],
    max_items: int = MAX_SEQUENCES,
    max_steps: int = 1 << 62,
    per_model: PerModel | None = None,
) -> Any:
    """``POST /feedback``'s ``items``: 1..max_items ``{"sequence": ..., "label": ...}``, each sequence checked as
    in /predict (field ``items[i].sequence``), each label one of the model's classes; validated into
    ``(float32 [T, F] array, label)`` pairs. ``per_model`` as in ``sequences_type``."""
    default_limits = feature_dim, max_length, classes

    def validate(value: Any, handler: Any, info: ValidationInfo) -> list[tuple[np.ndarray, str]]:
        feature_dim, max_length, classes = default_limits
        if per_model is not None and "model" in (info.data or {}):
            feature_dim, max_length, classes = per_model(info.data["model"])
        if not isinstance(value, list):
            raise fail("bad_type", f"items: must be a list of 1..{max_items} items, got {type(value).__name__}")
        if not 1 <= len(value) <= max_items:
            raise fail("item_count", f"items: {len(value)} items, must be 1..{max_items} per request")
        check_total_steps("items", (i.get("sequence") for i in value if isinstance(i, dict)), max_steps)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "sequence" not in item or "label" not in item:
                raise fail("bad_item", f"items[{i}]: must be an object with 'sequence' and 'label'")
            unknown = sorted(set(item) - {"sequence", "label"})
            if unknown:
                raise fail("unknown_field", f"items[{i}].{unknown[0]}: unknown field (the fields: sequence, label)")
            seq, label = item["sequence"], item["label"]
            arr = as_sequence(f"items[{i}].sequence", seq, feature_dim, max_length)
            if type(label) is int:  # JSON clients may send numeric class names as numbers
                label = str(label)
            if not isinstance(label, str) or label not in classes:
                raise fail(
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
