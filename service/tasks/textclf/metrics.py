"""The text classifier's metrics; the shared families (batch sizes, steps, calls, compute, queue) are in
``service.core.metrics``.

============================================  =======================================================
``seqserve_textclf_texts_total``              texts answered, by route (classify|v2)
``seqserve_textclf_rejected_requests_total``  requests refused (4xx), by reason (too_long, empty_text, ...)
``seqserve_textclf_tokens``                   histogram of a text's token count (``<s>`` included)
``seqserve_textclf_unknown_tokens_total``     tokens the vocabulary did not know (``<unk>``): drift in the text
``seqserve_textclf_predictions_total``        answers by predicted class
============================================  =======================================================
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from service.core.batching.engine import BatchStats
from service.core.metrics import (
    BATCH_SIZE,
    COMPUTE_SECONDS,
    DEADLINE_DROPPED,
    MODEL_CALLS,
    MODEL_INFO,
    QUEUE_SECONDS,
    TIME_STEPS,
    gpu_present,
)
from service.core.tokens import UNK

TEXTS = Counter("seqserve_textclf_texts", "Texts answered", ["route"])
REJECTED = Counter("seqserve_textclf_rejected_requests", "Text-classification requests refused, by reason", ["reason"])
TOKENS = Histogram(
    "seqserve_textclf_tokens", "Tokens in a text (<s> included)", buckets=(2, 4, 8, 16, 32, 64, 128, 256, 512)
)
UNKNOWN = Counter("seqserve_textclf_unknown_tokens", "Tokens the vocabulary did not know (<unk>)")
PREDICTIONS = Counter("seqserve_textclf_predictions", "Answers by predicted class", ["label"])


class TextClfMetrics:
    """What the model service records per batch (the API workers record per request: ``observe_request``)."""

    def __init__(self, version: str, rnn: str, provider: str, device_requested: str) -> None:
        DEADLINE_DROPPED.labels("textclf")
        self._info_labels = (version, rnn, provider, device_requested, "true" if gpu_present() else "false")
        MODEL_INFO.labels(*self._info_labels).set(1)

    def batch(self, stats: BatchStats, received: list[float]) -> None:
        now = time.perf_counter()
        for size, seconds in zip(stats.call_sizes, stats.call_seconds, strict=True):
            BATCH_SIZE.observe(size)
            COMPUTE_SECONDS.observe(seconds)
        MODEL_CALLS.inc(stats.model_calls)
        TIME_STEPS.labels("real").inc(stats.real_steps)
        TIME_STEPS.labels("padded").inc(stats.padded_steps)
        for r in received:
            if r:
                QUEUE_SECONDS.observe(max(0.0, now - r))

    def failed(self, n: int) -> None:
        pass

    def retire(self) -> None:
        MODEL_INFO.labels(*self._info_labels).set(0)


def observe_request(route: str, ids: list[list[int]], labels: list[str]) -> None:
    TEXTS.labels(route).inc(len(ids))
    unknown = 0
    for t in ids:
        TOKENS.observe(len(t))
        unknown += t.count(UNK)
    if unknown:
        UNKNOWN.inc(unknown)
    for label in labels:
        PREDICTIONS.labels(label).inc()
