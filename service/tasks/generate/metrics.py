"""The language model's metrics (what the step scheduler records); the shared families: ``service.core.metrics``.

=============================================  =======================================================
``seqserve_generate_tokens_total``             tokens generated, by model_version
``seqserve_generate_requests_total``           finished generations, by finish_reason (length|stop|end|cancelled|error)
``seqserve_generate_rejected_requests_total``  /generate 4xx/429, by reason (prompt_long, vocab, busy, ...)
``seqserve_generate_ttft_seconds``             histogram: request admitted -> its first token
``seqserve_generate_itl_seconds``              histogram: time between two tokens of a stream
``seqserve_generate_active_streams``           streams holding a state slot (gauge)
``seqserve_generate_step_batch_streams``       histogram of streams per step call
``seqserve_generate_step_seconds``             histogram of one step call (ONNX Runtime)
=============================================  =======================================================
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.core.metrics import DEADLINE_DROPPED, MODEL_INFO, SECONDS_BUCKETS, gpu_present

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

    def __init__(self, version: str, rnn: str, provider: str, device_requested: str, model: str) -> None:
        self.version = version
        DEADLINE_DROPPED.labels("generate")  # the series exists (at 0) before the first drop
        self._tokens = GEN_TOKENS.labels(version)
        self._active = GEN_ACTIVE.labels(version)
        self._info_labels = (version, rnn, provider, device_requested, "true" if gpu_present() else "false", model)
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
