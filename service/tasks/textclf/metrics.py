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

from prometheus_client import Counter, Histogram

from service.core.batching.engine import BatchStats
from service.core.metrics import (
    DEADLINE_DROPPED,
    MODEL_INFO,
    BatchRecorder,
    gpu_present,
)
from service.core.tokens import UNK

TEXTS = Counter("seqserve_textclf_texts", "Texts answered", ["route"])
REJECTED = Counter("seqserve_textclf_rejected_requests", "Text-classification requests refused, by reason", ["reason"])
TOKENS = Histogram(
    "seqserve_textclf_tokens", "Tokens in a text (<s> included)", buckets=(2, 4, 8, 16, 32, 64, 128, 256, 512)
)
UNKNOWN = Counter("seqserve_textclf_unknown_tokens", "Tokens the vocabulary did not know (<unk>)")
FEEDBACK = Counter("seqserve_textclf_feedback_items", "Labelled texts stored by POST /feedback", ["label"])
PREDICTIONS = Counter("seqserve_textclf_predictions", "Answers by predicted class", ["label"])


class TextClfMetrics:
    """What the model service records per batch (the API workers record per request: ``observe_request``)."""

    def __init__(self, version: str, rnn: str, provider: str, device_requested: str, model: str) -> None:
        DEADLINE_DROPPED.labels("textclf")
        self._info_labels = (version, rnn, provider, device_requested, "true" if gpu_present() else "false", model)
        MODEL_INFO.labels(*self._info_labels).set(1)
        self._batches = BatchRecorder(model)

    def batch(self, stats: BatchStats, received: list[float]) -> None:
        self._batches.batch(stats, received)

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
