"""The translator's metrics (what its step scheduler and API record); the shared families: ``service.core.metrics``.

================================================  =====================================================
``seqserve_translate_source_tokens_total``        source tokens read by the encoder (tokens in)
``seqserve_translate_target_tokens_total``        target tokens decoded, by model_version (tokens out)
``seqserve_translate_sentences_total``            finished sentences, by finish_reason (end|length|cancelled)
``seqserve_translate_rejected_requests_total``    /translate 4xx/429, by reason (source_long, rows, busy, ...)
``seqserve_translate_beams``                      histogram: beam_size of each sentence
``seqserve_translate_decode_steps_total``         decoder step calls
``seqserve_translate_step_batch_rows``            histogram: decoder rows (beams of all sentences) per step call
``seqserve_translate_batch_fill_ratio``           histogram: rows per step call / the scheduler's slots
``seqserve_translate_step_seconds``               histogram: one decoder step call (ONNX Runtime)
``seqserve_translate_encode_batch_sentences``     histogram: sentences per encoder call
``seqserve_translate_encode_seconds``             histogram: one encoder call
``seqserve_translate_active_sentences``           sentences holding decoder slots (gauge)
``seqserve_translate_first_token_seconds``        histogram: sentence admitted -> its first target token
================================================  =====================================================
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.core.metrics import DEADLINE_DROPPED, MODEL_INFO, SECONDS_BUCKETS, gpu_present

ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TR_SOURCE = Counter("seqserve_translate_source_tokens", "Source tokens read by the encoder")
TR_TARGET = Counter("seqserve_translate_target_tokens", "Target tokens decoded", ["model_version"])
TR_SENTENCES = Counter("seqserve_translate_sentences", "Finished sentences, by finish reason", ["finish_reason"])
TR_REJECTED = Counter("seqserve_translate_rejected_requests", "/translate requests refused, by reason", ["reason"])
TR_BEAMS = Histogram("seqserve_translate_beams", "beam_size of each sentence", buckets=(1, 2, 3, 4, 5, 6, 8, 12, 16))
TR_STEPS = Counter("seqserve_translate_decode_steps", "Decoder step calls")
TR_STEP_ROWS = Histogram("seqserve_translate_step_batch_rows", "Decoder rows per step call", buckets=ROWS)
TR_FILL = Histogram(
    "seqserve_translate_batch_fill_ratio",
    "Decoder rows per step call / slots",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
)
TR_STEP_SECONDS = Histogram("seqserve_translate_step_seconds", "One decoder step call", buckets=SECONDS_BUCKETS)
TR_ENCODE_BATCH = Histogram("seqserve_translate_encode_batch_sentences", "Sentences per encoder call", buckets=ROWS)
TR_ENCODE_SECONDS = Histogram("seqserve_translate_encode_seconds", "One encoder call", buckets=SECONDS_BUCKETS)
TR_ACTIVE = Gauge(
    "seqserve_translate_active_sentences",
    "Sentences holding decoder slots",
    ["model_version"],
    multiprocess_mode="livesum",
)
TR_FIRST = Histogram(
    "seqserve_translate_first_token_seconds", "From a sentence admitted to its first token", buckets=SECONDS_BUCKETS
)


class TranslateMetrics:
    """What the translator's scheduler records (it calls these on its thread)."""

    def __init__(self, version: str, rnn: str, provider: str, device_requested: str, capacity: int, model: str) -> None:
        self.version, self.capacity = version, max(1, capacity)
        DEADLINE_DROPPED.labels("translate")
        for reason in ("end", "length"):
            TR_SENTENCES.labels(reason)
        self._target = TR_TARGET.labels(version)
        self._active = TR_ACTIVE.labels(version)
        self._info_labels = (version, rnn, provider, device_requested, "true" if gpu_present() else "false", model)
        MODEL_INFO.labels(*self._info_labels).set(1)

    def encoded(self, sentences: int, tokens: int, seconds: float) -> None:
        TR_ENCODE_BATCH.observe(sentences)
        TR_ENCODE_SECONDS.observe(seconds)
        TR_SOURCE.inc(tokens)

    def step(self, rows: int, seconds: float) -> None:
        TR_STEPS.inc()
        TR_STEP_ROWS.observe(rows)
        TR_FILL.observe(min(1.0, rows / self.capacity))
        TR_STEP_SECONDS.observe(seconds)

    def token(self, since_last: float, first: bool) -> None:
        if first:
            TR_FIRST.observe(since_last)

    def finished(self, reason: str, tokens: int) -> None:
        TR_SENTENCES.labels(reason).inc()
        if reason != "cancelled":
            self._target.inc(tokens)

    def admitted(self, beams: int) -> None:
        TR_BEAMS.observe(beams)

    def deadline_dropped(self) -> None:
        DEADLINE_DROPPED.labels("translate").inc()

    def active(self, n: int) -> None:
        self._active.set(n)

    def retire(self) -> None:
        MODEL_INFO.labels(*self._info_labels).set(0)
        self._active.set(0)
