"""Prometheus metrics of the service (prefix ``seqserve_``), exposed on BentoML's ``/metrics``.

BentoML runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR under BENTOML_HOME), so the
counters and histograms here are summed across workers; gauges declare how workers combine (``livemax``).
Labels are bounded: model version, outcome, reason, kind, class (from the model's class list), feature
index (only when the model has <= 64 features). Never per-request values. BentoML's own request metrics
(``bentoml_service_request_total``, ``..._duration_seconds``, ``..._adaptive_batch_size``) stay.

=========================================  ===========================================================
``seqserve_sequences_total``               sequences answered, by model_version and outcome (ok|error)
``seqserve_rejected_requests_total``       HTTP 400s, by reason (feature_count, too_long, ...) and protocol (json|v2)
``seqserve_sequence_length_steps``         histogram of served sequence lengths (time steps)
``seqserve_length_outside_training_total`` sequences shorter/longer than any in training (side=shorter|longer)
``seqserve_batch_size_sequences``          histogram of sequences per model call (executed batch size)
``seqserve_batch_api_workers``             histogram of API worker processes sharing one adaptive batch
``seqserve_time_steps_total``              time steps run, kind=real|padded: padding efficiency = real/padded
``seqserve_model_compute_seconds``         histogram of one ONNX Runtime call
``seqserve_queue_wait_seconds``            histogram: request parsed -> its batch starts on the model
``seqserve_model_info``                    1, labels model_version, rnn, provider, device_requested, gpu_present
                                           (0 for a model swapped out: multiprocess gauges cannot be removed)
``seqserve_model_swaps_total``             promoted models swapped in; ``..._swap_failures_total`` refused
``seqserve_feedback_items_total``          feedback items stored, by split; ``..._full_requests_total`` refused,
                                           ``..._unavailable_requests_total`` 503 (the database refused the write)
``seqserve_deadline_dropped_total``         sequences/requests dropped, not computed, past their deadline, by task
``seqserve_predictions_total``             predicted class counts, by model_version and class
``seqserve_input_drift_score``             mean per-feature z-shift of recent inputs vs training (drift.py)
``seqserve_input_drift_feature_zshift``    the same per feature
``seqserve_input_drift_window_steps``      time steps in the drift window
``seqserve_generate_tokens_total``         tokens generated, by model_version
``seqserve_generate_requests_total``       finished generations, by finish_reason (length|stop|end|cancelled|error)
``seqserve_generate_rejected_requests_total`` /generate 4xx/429, by reason (prompt_long, vocab, busy, ...)
``seqserve_generate_ttft_seconds``         histogram: request admitted -> its first token
``seqserve_generate_itl_seconds``          histogram: time between two tokens of a stream
``seqserve_generate_active_streams``       streams holding a state slot (gauge)
``seqserve_generate_step_batch_streams``   histogram of streams per step call
``seqserve_generate_step_seconds``         histogram of one step call (ONNX Runtime)
=========================================  ===========================================================
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from service.core.drift import DriftMonitor
from service.core.metrics import MODEL_SWAP_FAILURES, MODEL_SWAPS  # noqa: F401 - shared families, re-exported
from service.engine import BatchStats, Engine

LENGTH_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

SEQUENCES = Counter("seqserve_sequences", "Sequences answered by the model", ["model_version", "outcome"])
REJECTED = Counter(
    "seqserve_rejected_requests", "Requests rejected with HTTP 400, by reason and protocol", ["reason", "protocol"]
)
LENGTH = Histogram("seqserve_sequence_length_steps", "Time steps per served sequence", buckets=LENGTH_BUCKETS)
LENGTH_OUTSIDE = Counter(
    "seqserve_length_outside_training",
    "Served sequences shorter or longer than every training sequence",
    ["model_version", "side"],
)
BATCH_SIZE = Histogram(
    "seqserve_batch_size_sequences",
    "Sequences per model call (executed batch size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
TIME_STEPS = Counter("seqserve_time_steps", "Time steps fed to the model: real, or padded (real + padding)", ["kind"])
BATCH_SOURCES = Histogram(
    "seqserve_batch_api_workers",
    "Distinct API worker processes whose requests share one adaptive batch of the model service",
    buckets=(1, 2, 4, 8, 16, 32),
)
MODEL_CALLS = Counter("seqserve_model_calls", "ONNX Runtime calls (sub-batches)")
COMPUTE_SECONDS = Histogram(
    "seqserve_model_compute_seconds", "Wall time of one ONNX Runtime call", buckets=SECONDS_BUCKETS
)
QUEUE_SECONDS = Histogram(
    "seqserve_queue_wait_seconds", "From request parsed to its batch starting on the model", buckets=SECONDS_BUCKETS
)
FEEDBACK_ITEMS = Counter("seqserve_feedback_items", "Feedback items stored, by split", ["split"])
DEADLINE_DROPPED = Counter(
    "seqserve_deadline_dropped", "Work dropped, not computed, because its deadline had passed", ["task"]
)
FEEDBACK_UNAVAILABLE = Counter(
    "seqserve_feedback_unavailable_requests", "Feedback requests answered 503: the database refused the write"
)
FEEDBACK_FULL = Counter("seqserve_feedback_full_requests", "Feedback requests refused because the store is full")
MODEL_INFO = Gauge(
    "seqserve_model_info",
    "The loaded model (always 1)",
    ["model_version", "rnn", "provider", "device_requested", "gpu_present"],
    multiprocess_mode="livemax",
)
PREDICTIONS = Counter("seqserve_predictions", "Predicted class counts", ["model_version", "class"])
DRIFT = Gauge(
    "seqserve_input_drift_score",
    "Mean per-feature |recent mean - training mean| / training std",
    ["model_version"],
    multiprocess_mode="livemax",
)
DRIFT_FEATURE = Gauge(
    "seqserve_input_drift_feature_zshift",
    "Per-feature |recent mean - training mean| / std",
    ["model_version", "feature"],
    multiprocess_mode="livemax",
)
DRIFT_STEPS = Gauge(
    "seqserve_input_drift_window_steps",
    "Time steps in the drift window",
    ["model_version"],
    multiprocess_mode="livemax",
)
MAX_FEATURE_LABELS = 64


class ServiceMetrics:
    """Everything one model worker records about its model; it calls ``observe`` once per merged batch.

    The model service's processes write these; BentoML's ``/metrics`` on the API port aggregates every
    process of both services (they share one PROMETHEUS_MULTIPROC_DIR)."""

    def __init__(self, engine: Engine, device_requested: str, drift_window_steps: int = 4096) -> None:
        self.version = engine.model_version
        self.classes = engine.classes
        DEADLINE_DROPPED.labels("classify")  # the series exists (at 0) before the first drop
        meta = engine.artifact.meta
        self.drift = DriftMonitor(meta.normalisation.mean, meta.normalisation.std, window_steps=drift_window_steps)
        rnn = meta.rnn["rnn"]
        gpu = "true" if gpu_present() else "false"
        self._info_labels = (self.version, rnn, engine.provider, device_requested, gpu)
        MODEL_INFO.labels(*self._info_labels).set(1)
        self._ok = SEQUENCES.labels(self.version, "ok")
        self._error = SEQUENCES.labels(self.version, "error")
        self._predicted = [PREDICTIONS.labels(self.version, c) for c in self.classes]
        self._real, self._padded = TIME_STEPS.labels("real"), TIME_STEPS.labels("padded")
        self._drift_features = engine.feature_dim <= MAX_FEATURE_LABELS
        low, high = meta.training_length_range
        self.training_lengths = (int(low), int(high))
        self._shorter = LENGTH_OUTSIDE.labels(self.version, "shorter")
        self._longer = LENGTH_OUTSIDE.labels(self.version, "longer")

    def observe(
        self, seqs: list[np.ndarray], stats: BatchStats, probs: np.ndarray, started: float, received: list[float]
    ) -> None:
        """After a successful model run. ``started``: the perf_counter time the batch started; ``received``: when
        each sequence's request was parsed (perf_counter, in the API worker: CLOCK_MONOTONIC is system-wide)."""
        self._ok.inc(stats.sequences)
        low, high = self.training_lengths
        for s, t in zip(seqs, received):
            LENGTH.observe(len(s))
            if len(s) < low:
                self._shorter.inc()
            elif len(s) > high:
                self._longer.inc()
            if t > 0:
                QUEUE_SECONDS.observe(max(0.0, started - t))
        self._real.inc(stats.real_steps)
        self._padded.inc(stats.padded_steps)
        MODEL_CALLS.inc(stats.model_calls)
        for size, seconds in zip(stats.call_sizes, stats.call_seconds):
            BATCH_SIZE.observe(size)
            COMPUTE_SECONDS.observe(seconds)
        counts = np.bincount(probs.argmax(axis=1), minlength=len(self.classes))
        for counter, n in zip(self._predicted, counts.tolist()):
            if n:
                counter.inc(n)
        self.drift.update(seqs)
        shift = self.drift.feature_shift()
        if not np.isnan(shift).any():
            DRIFT.labels(self.version).set(float(shift.mean()))
            if self._drift_features:
                for f, z in enumerate(shift.tolist()):
                    DRIFT_FEATURE.labels(self.version, str(f)).set(z)
        DRIFT_STEPS.labels(self.version).set(self.drift.steps)

    def retire(self) -> None:
        """This model was swapped out: its info series drops to 0 (the new model's is 1)."""
        MODEL_INFO.labels(*self._info_labels).set(0)

    def batch_sources(self, api_workers: int) -> None:
        BATCH_SOURCES.observe(api_workers)

    def failed(self, n: int) -> None:
        self._error.inc(n)


def gpu_present() -> bool:
    """An NVIDIA GPU device node exists (whether or not CUDA works): the alert's "a GPU is left idle" test."""
    dev = Path("/dev")
    return (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))


REASONS = {"json_invalid": "invalid_json", "missing": "missing_field"}


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
        kind = json.loads(body)["detail"][0]["type"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "other"
    if kind.startswith("seqserve_"):
        return kind[len("seqserve_") :]
    return REASONS.get(kind, "other")


# --- generation (service/scheduler.py) --------------------------------------------------------------------------
GEN_TOKENS = Counter("seqserve_generate_tokens", "Tokens generated", ["model_version"])
GEN_REQUESTS = Counter("seqserve_generate_requests", "Finished generations, by finish reason", ["finish_reason"])
GEN_REJECTED = Counter("seqserve_generate_rejected_requests", "/generate requests refused, by reason", ["reason"])
GEN_TTFT = Histogram(
    "seqserve_generate_ttft_seconds", "From a generation admitted to its first token", buckets=SECONDS_BUCKETS
)
GEN_ITL = Histogram("seqserve_generate_itl_seconds", "Time between two tokens of a stream", buckets=SECONDS_BUCKETS)
GEN_ACTIVE = Gauge(
    "seqserve_generate_active_streams", "Streams holding a state slot", ["model_version"], multiprocess_mode="livesum"
)
GEN_STEP_BATCH = Histogram(
    "seqserve_generate_step_batch_streams",
    "Streams per step call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
GEN_STEP_SECONDS = Histogram("seqserve_generate_step_seconds", "One step call", buckets=SECONDS_BUCKETS)


class GenerateMetrics:
    """What the step scheduler records (it calls these on its thread)."""

    def __init__(self, version: str, rnn: str, provider: str, device_requested: str) -> None:
        self.version = version
        DEADLINE_DROPPED.labels("generate")  # the series exists (at 0) before the first drop
        self._tokens = GEN_TOKENS.labels(version)
        self._active = GEN_ACTIVE.labels(version)
        self._info_labels = (version, rnn, provider, device_requested, "true" if gpu_present() else "false")
        MODEL_INFO.labels(*self._info_labels).set(1)
        self._new_tokens = 0  # counted per token, written once per scheduler turn (active())

    def step(self, streams: int, seconds: float) -> None:
        GEN_STEP_BATCH.observe(streams)
        GEN_STEP_SECONDS.observe(seconds)

    def token(self, since_last: float, first: bool) -> None:
        self._new_tokens += 1
        (GEN_TTFT if first else GEN_ITL).observe(since_last)

    def finished(self, reason: str, tokens: int) -> None:
        GEN_REQUESTS.labels(reason).inc()

    def deadline_dropped(self) -> None:
        DEADLINE_DROPPED.labels("generate").inc()

    def active(self, n: int) -> None:
        """Once per scheduler turn: the streams holding slots, and the tokens of the turn."""
        self._active.set(n)
        if self._new_tokens:
            self._tokens.inc(self._new_tokens)
            self._new_tokens = 0

    def retire(self) -> None:
        MODEL_INFO.labels(*self._info_labels).set(0)
        self._active.set(0)
