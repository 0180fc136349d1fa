"""The classifier's Prometheus metrics (prefix ``seqserve_``), exposed on BentoML's ``/metrics``; the families
every task shares (model info, swaps, deadline drops, batch sizes, compute and queue time) are in
``service.core.metrics``.

Labels are bounded: model (the name it is served under: a model repository serves several,
service/core/repository.py), model version, outcome, reason, kind, class (from the model's class list), feature
index (only when the model has <= 64 features). Never per-request values. BentoML's own request metrics
(``bentoml_service_request_total``, ``..._duration_seconds``, ``..._adaptive_batch_size``) stay.

=========================================  ===========================================================
``seqserve_sequences_total``               sequences answered, by model, model_version and outcome (ok|error)
``seqserve_rejected_requests_total``       HTTP 400s, by reason (feature_count, too_long, ...) and protocol (json|v2)
``seqserve_sequence_length_steps``         histogram of served sequence lengths (time steps)
``seqserve_length_outside_training_total`` sequences shorter/longer than any in training (side=shorter|longer)
``seqserve_feedback_items_total``          feedback items stored, by split; ``..._full_requests_total`` refused,
                                           ``..._unavailable_requests_total`` 503 (the database refused the write)
``seqserve_predictions_total``             predicted class counts, by model, model_version and class
``seqserve_input_drift_score``             mean per-feature z-shift of recent inputs vs training (drift.py)
``seqserve_input_drift_feature_zshift``    the same per feature
``seqserve_input_drift_window_steps``      time steps in the drift window
=========================================  ===========================================================
"""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from service.core.batching.engine import BatchStats
from service.core.drift import DriftMonitor
from service.core.errors import PYDANTIC_CODES
from service.core.metrics import (
    DEADLINE_DROPPED,
    MODEL_INFO,
    BatchRecorder,
    gpu_present,
)
from service.tasks.classify.engine import Engine

LENGTH_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

SEQUENCES = Counter("seqserve_sequences", "Sequences answered by the model", ["model", "model_version", "outcome"])
REJECTED = Counter(
    "seqserve_rejected_requests", "Requests rejected with HTTP 400, by reason and protocol", ["reason", "protocol"]
)
LENGTH = Histogram(
    "seqserve_sequence_length_steps", "Time steps per served sequence", ["model"], buckets=LENGTH_BUCKETS
)
LENGTH_OUTSIDE = Counter(
    "seqserve_length_outside_training",
    "Served sequences shorter or longer than every training sequence",
    ["model", "model_version", "side"],
)
FEEDBACK_ITEMS = Counter("seqserve_feedback_items", "Feedback items stored, by split", ["split"])
FEEDBACK_UNAVAILABLE = Counter(
    "seqserve_feedback_unavailable_requests", "Feedback requests answered 503: the database refused the write"
)
FEEDBACK_FULL = Counter("seqserve_feedback_full_requests", "Feedback requests refused because the store is full")
PREDICTIONS = Counter("seqserve_predictions", "Predicted class counts", ["model", "model_version", "class"])
DRIFT = Gauge(
    "seqserve_input_drift_score",
    "Mean per-feature |recent mean - training mean| / training std",
    ["model", "model_version"],
    multiprocess_mode="livemax",
)
DRIFT_FEATURE = Gauge(
    "seqserve_input_drift_feature_zshift",
    "Per-feature |recent mean - training mean| / std",
    ["model", "model_version", "feature"],
    multiprocess_mode="livemax",
)
DRIFT_STEPS = Gauge(
    "seqserve_input_drift_window_steps",
    "Time steps in the drift window",
    ["model", "model_version"],
    multiprocess_mode="livemax",
)
MAX_FEATURE_LABELS = 64


class ServiceMetrics:
    """Everything one model worker records about its model; it calls ``observe`` once per merged batch.

    The model service's processes write these; BentoML's ``/metrics`` on the API port aggregates every
    process of both services (they share one PROMETHEUS_MULTIPROC_DIR)."""

    def __init__(self, engine: Engine, model: str, device_requested: str, drift_window_steps: int = 4096) -> None:
        self.version = engine.model_version
        labels = self._labels = (model, self.version)
        self.classes = engine.classes
        DEADLINE_DROPPED.labels("classify")  # the series exists (at 0) before the first drop
        meta = engine.artifact.meta
        self.drift = DriftMonitor(meta.normalisation.mean, meta.normalisation.std, window_steps=drift_window_steps)
        rnn = meta.rnn["rnn"]
        gpu = "true" if gpu_present() else "false"
        self._info_labels = (self.version, rnn, engine.provider, device_requested, gpu, model)
        MODEL_INFO.labels(*self._info_labels).set(1)
        self._ok = SEQUENCES.labels(*labels, "ok")
        self._error = SEQUENCES.labels(*labels, "error")
        self._predicted = [PREDICTIONS.labels(*labels, c) for c in self.classes]
        self._length, self._batches = LENGTH.labels(model), BatchRecorder(model)
        self._drift_features = engine.feature_dim <= MAX_FEATURE_LABELS
        low, high = meta.training_length_range
        self.training_lengths = (int(low), int(high))
        self._shorter = LENGTH_OUTSIDE.labels(*labels, "shorter")
        self._longer = LENGTH_OUTSIDE.labels(*labels, "longer")
        self._drift_score, self._drift_steps = DRIFT.labels(*labels), DRIFT_STEPS.labels(*labels)

    def observe(
        self, seqs: list[np.ndarray], stats: BatchStats, probs: np.ndarray, started: float, received: list[float]
    ) -> None:
        """After a successful model run. ``started``: the perf_counter time the batch started; ``received``: when
        each sequence's request was parsed (perf_counter, in the API worker: CLOCK_MONOTONIC is system-wide)."""
        self._ok.inc(stats.sequences)
        low, high = self.training_lengths
        for s in seqs:
            self._length.observe(len(s))
            if len(s) < low:
                self._shorter.inc()
            elif len(s) > high:
                self._longer.inc()
        self._batches.batch(stats, received, started)
        counts = np.bincount(probs.argmax(axis=1), minlength=len(self.classes))
        for counter, n in zip(self._predicted, counts.tolist()):
            if n:
                counter.inc(n)
        self.drift.update(seqs)
        shift = self.drift.feature_shift()
        if not np.isnan(shift).any():
            self._drift_score.set(float(shift.mean()))
            if self._drift_features:
                for f, z in enumerate(shift.tolist()):
                    DRIFT_FEATURE.labels(*self._labels, str(f)).set(z)
        self._drift_steps.set(self.drift.steps)

    def retire(self) -> None:
        """This model was swapped out: its info series drops to 0 (the new model's is 1)."""
        MODEL_INFO.labels(*self._info_labels).set(0)

    def batch_sources(self, api_workers: int) -> None:
        self._batches.sources.observe(api_workers)

    def failed(self, n: int) -> None:
        self._error.inc(n)


REASONS = PYDANTIC_CODES  # pydantic's own error types, as reasons


class RejectionCounter:
    """ASGI middleware: count each HTTP 400 from the API routes by the reason in its JSON body (the V2 routes
    name it in an ``x-seqserve-reason`` header) and the protocol (``json``: /predict and /feedback; ``v2``).

    Validation runs inside BentoML before our code sees the request, so the response is the one place
    where every rejection (ours and pydantic's, e.g. invalid JSON) can be counted.
    """

    def __init__(self, app, paths: tuple[str, ...] = ("/predict", "/predict_nobatch", "/feedback")) -> None:  # noqa: ANN001
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        v2 = scope["type"] == "http" and scope["path"].startswith("/v2/models/")
        if scope["type"] != "http" or (scope["path"] not in self.paths and not v2):
            await self.app(scope, receive, send)
            return
        state: dict = {"status": 0, "body": b"", "reason": None}

        async def watch(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = dict(message.get("headers", []))
                state["reason"] = headers.get(b"x-seqserve-reason", b"").decode() or None
            elif message["type"] == "http.response.body" and state["status"] == 400:
                state["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    reason = state["reason"] or rejection_reason(state["body"])
                    REJECTED.labels(reason, "v2" if v2 else "json").inc()
            await send(message)

        await self.app(scope, receive, watch)


def rejection_reason(body: bytes) -> str:
    """``seqserve_too_long`` -> ``too_long``; pydantic's own types map through REASONS; else ``other``."""
    try:
        doc = json.loads(body)
        if isinstance(doc.get("error"), dict):  # already in THE shape (service/core/errors.py)
            return str(doc["error"]["code"])
        kind = doc["detail"][0]["type"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "other"
    if kind.startswith("seqserve_"):
        return kind[len("seqserve_") :]
    return REASONS.get(kind, "other")
