"""Validating numeric sequences in a request, shared by every task that takes them (before batching).

Each sequence becomes a float32 ``[T, F]`` array once, here, and every error names the field and the limit:
``sequences[3][7]: 11 features, the model expects 12``. The error ``type`` names the reason
(``seqserve_feature_count``, ``seqserve_too_long``, ...); the task's rejection counter counts by it.

The common case (a well-formed sequence) takes a vectorised path (``fast_sequence``): one
``np.array(seq, float32)``, one scan of the value types, one ``isfinite``. Anything it does not accept goes
through the step-by-step checks (``check_sequence``), which find and name the first problem, so the error
messages do not depend on the path.

``number_field``: one numeric field of a JSON request (the decoding rooms' parameters), type and range checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
from pydantic_core import PydanticCustomError

NUMBER_TYPES = frozenset((float, int))  # what JSON numbers decode to (bool, a subclass of int, is not here)


class ReceivedSequence(np.ndarray):
    """A validated float32 ``[T, F]`` sequence that remembers when its request was parsed."""

    received_at: float = 0.0


def fail(reason: str, msg: str) -> PydanticCustomError:
    return PydanticCustomError(f"seqserve_{reason}", msg)


def check_sequence(field: str, seq: Any, feature_dim: int, max_length: int) -> np.ndarray:
    if not isinstance(seq, list):
        raise fail(
            "bad_type",
            f"{field}: must be a list of time steps (each a list of {feature_dim} numbers), got {type(seq).__name__}",
        )
    if not seq:
        raise fail("empty", f"{field}: empty sequence; need at least 1 time step")
    if len(seq) > max_length:
        raise fail("too_long", f"{field}: {len(seq)} time steps, the model accepts at most {max_length} (max_length)")
    for t, step in enumerate(seq):
        if not isinstance(step, list):
            raise fail("bad_type", f"{field}[{t}]: must be a list of {feature_dim} numbers, got {type(step).__name__}")
        if len(step) != feature_dim:
            raise fail(
                "feature_count", f"{field}[{t}]: {len(step)} features, the model expects {feature_dim} (feature_dim)"
            )
    arr = np.array(seq)  # homogeneous now: [T, F]
    if arr.dtype.kind not in "fiu" or any(type(v) is bool for step in seq for v in step):
        bad = next(
            (t, v) for t, step in enumerate(seq) for v in step if isinstance(v, bool) or not isinstance(v, (int, float))
        )
        raise fail("not_a_number", f"{field}[{bad[0]}]: {bad[1]!r} is not a number")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        t = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise fail("non_finite", f"{field}[{t}]: non-finite value (NaN, Infinity or beyond float32 range)")
    return arr


def fast_sequence(seq: Any, feature_dim: int, max_length: int) -> np.ndarray | None:
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


def check_total_steps(field: str, lengths: Any, max_steps: int) -> None:
    total = sum(len(s) for s in lengths if isinstance(s, list))
    if total > max_steps:
        raise fail(
            "too_many_steps",
            f"{field}: {total} time steps in all, at most {max_steps} per request (SEQSERVE_MAX_REQUEST_STEPS)",
        )


def as_sequence(field: str, seq: Any, feature_dim: int, max_length: int) -> np.ndarray:
    """``seq`` as a float32 ``[T, F]`` array (the fast path, else the checks that name the problem)."""
    arr = fast_sequence(seq, feature_dim, max_length)
    return check_sequence(field, seq, feature_dim, max_length) if arr is None else arr


def first_non_finite(probabilities: list[np.ndarray]) -> int | None:
    """The index of the first answer whose probabilities are not all finite (None if all are)."""
    ok = np.isfinite(np.stack(probabilities)).all(axis=1)
    return None if ok.all() else int(np.flatnonzero(~ok)[0])


def non_finite_message(field: str) -> str:
    return (
        f"{field}: the model's output is not finite for this sequence (values this large overflow float32 inside "
        "the model); scale the input"
    )


def number_field(
    body: dict,
    name: str,
    default: float,
    kind: type,
    low: float,
    high: float,
    error: Callable[[str, str], Exception],
    open_low: bool = False,
    range_reason: str | None = None,
) -> Any:
    """``body[name]`` (else ``default``) as ``kind`` within ``[low, high]`` (``(low, high]`` with ``open_low``);
    otherwise ``error(message, reason)``: reason ``bad_type``, or ``range_reason`` (default ``{name}_range``)."""
    value = body.get(name, default)
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type or (kind is int and not float(value).is_integer()) or not math.isfinite(value):
        raise error(f"{name}: expected {'an integer' if kind is int else 'a number'}", "bad_type")
    if (value <= low if open_low else value < low) or value > high:
        bracket = "(" if open_low else "["
        raise error(f"{name}: {value} is outside {bracket}{low}, {high}]", range_reason or f"{name}_range")
    return kind(value)
