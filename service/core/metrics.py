"""The metric families every task shares (prefix ``seqserve_``; each task's own live in its room's ``metrics.py``).

BentoML runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR under BENTOML_HOME), so counters
and histograms are summed across workers; gauges declare how workers combine (``livemax``). Labels are bounded
(model name and version, kind, task), never per-request values; the batching families carry ``model``, the
name a model is served under (a server's model repository serves several: service/core/repository.py). A
family is defined once, here or in one room: prometheus refuses a name registered twice.

=========================================  ===========================================================
``seqserve_model_info``                    1, labels model_version, rnn, provider, device_requested, gpu_present,
                                           model (the name the model is served under)
                                           (0 for a model swapped out: multiprocess gauges cannot be removed)
``seqserve_model_swaps_total``             promoted models swapped in; ``..._swap_failures_total`` refused
``seqserve_deadline_dropped_total``        sequences/requests dropped, not computed, past their deadline, by task
``seqserve_batch_size_sequences``          histogram of sequences per model call (executed batch size)
``seqserve_batch_api_workers``             histogram of API worker processes sharing one adaptive batch
``seqserve_time_steps_total``              time steps run, kind=real|padded: padding efficiency = real/padded
``seqserve_model_calls_total``             ONNX Runtime calls (sub-batches)
``seqserve_model_compute_seconds``         histogram of one ONNX Runtime call
``seqserve_queue_wait_seconds``            histogram: request parsed -> its batch starts on the model
=========================================  ===========================================================
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# The adaptive batcher's families, made on first import (``from service.core.metrics import BATCH_SIZE``), so that
# only the servers whose rooms batch this way (classify, textclf) export them: a generation or forecasting server
# showed them as empty series (issue 29).
_BATCHING = {
    "BATCH_SIZE": lambda: Histogram(
        "seqserve_batch_size_sequences",
        "Sequences per model call (executed batch size)",
        ["model"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    ),
    "TIME_STEPS": lambda: Counter(
        "seqserve_time_steps", "Time steps fed to the model: real, or padded (real + padding)", ["model", "kind"]
    ),
    "BATCH_SOURCES": lambda: Histogram(
        "seqserve_batch_api_workers",
        "Distinct API worker processes whose requests share one adaptive batch of the model service",
        ["model"],
        buckets=(1, 2, 4, 8, 16, 32),
    ),
    "MODEL_CALLS": lambda: Counter("seqserve_model_calls", "ONNX Runtime calls (sub-batches)", ["model"]),
    "COMPUTE_SECONDS": lambda: Histogram(
        "seqserve_model_compute_seconds", "Wall time of one ONNX Runtime call", ["model"], buckets=SECONDS_BUCKETS
    ),
    "QUEUE_SECONDS": lambda: Histogram(
        "seqserve_queue_wait_seconds",
        "From request parsed to its batch starting on the model",
        ["model"],
        buckets=SECONDS_BUCKETS,
    ),
}


def __getattr__(name: str) -> Any:
    if name in _BATCHING:
        metric = globals()[name] = _BATCHING[name]()  # once per process; later imports find the global
        return metric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BatchRecorder:
    """One served model's series of the batching families (made on first use: ``__getattr__`` above)."""

    def __init__(self, model: str) -> None:
        family = {name: globals()[name] if name in globals() else __getattr__(name) for name in _BATCHING}
        self._size, self._seconds = family["BATCH_SIZE"].labels(model), family["COMPUTE_SECONDS"].labels(model)
        self._calls, self._queue = family["MODEL_CALLS"].labels(model), family["QUEUE_SECONDS"].labels(model)
        steps = family["TIME_STEPS"]
        self._real, self._padded = steps.labels(model, "real"), steps.labels(model, "padded")
        self.sources = family["BATCH_SOURCES"].labels(model)

    def batch(self, stats: Any, received: list[float], started: float | None = None) -> None:
        """A batch's model calls (``service.core.batching.engine.BatchStats``); ``received``: when each of its
        items was parsed (perf_counter; 0: unknown), ``started``: when the batch started (default: now)."""
        started = time.perf_counter() if started is None else started
        for size, seconds in zip(stats.call_sizes, stats.call_seconds, strict=True):
            self._size.observe(size)
            self._seconds.observe(seconds)
        self._calls.inc(stats.model_calls)
        self._real.inc(stats.real_steps)
        self._padded.inc(stats.padded_steps)
        for r in received:
            if r > 0:
                self._queue.observe(max(0.0, started - r))


DEADLINE_DROPPED = Counter(
    "seqserve_deadline_dropped", "Work dropped, not computed, because its deadline had passed", ["task"]
)

MODEL_INFO = Gauge(
    "seqserve_model_info",
    "The loaded model (always 1)",
    ["model_version", "rnn", "provider", "device_requested", "gpu_present", "model"],
    multiprocess_mode="livemax",
)
MODEL_SWAPS = Counter("seqserve_model_swaps", "Models swapped in after a promotion (load, check, swap)")
MODEL_SWAP_FAILURES = Counter("seqserve_model_swap_failures", "Promoted models refused; the old one kept serving")


def gpu_present() -> bool:
    """An NVIDIA GPU device node exists (whether or not CUDA works): the alert's "a GPU is left idle" test."""
    dev = Path("/dev")
    return (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))
