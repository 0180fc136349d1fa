"""Prometheus metrics of the service (prefix ``seqserve_``), exposed on BentoML's /metrics.

BentoML runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR under BENTOML_HOME), so
counters and histograms created here are summed across workers. Labels are bounded: model version,
outcome, kind; never per-request values.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from service.engine import BatchStats

SEQUENCES = Counter("seqserve_sequences", "Sequences answered by the model", ["model_version", "outcome"])
TIME_STEPS = Counter("seqserve_time_steps", "Time steps fed to the model: real, or padded (real + padding)",
                     ["kind"])
MODEL_CALLS = Counter("seqserve_model_calls", "ONNX Runtime calls (sub-batches)")
BATCH_SIZE = Histogram("seqserve_batch_size_sequences", "Sequences per model call (executed batch size)",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
COMPUTE_SECONDS = Histogram("seqserve_model_compute_seconds", "Wall time of one ONNX Runtime call",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def record_batch(stats: BatchStats, model_version: str) -> None:
    SEQUENCES.labels(model_version, "ok").inc(stats.sequences)
    TIME_STEPS.labels("real").inc(stats.real_steps)
    TIME_STEPS.labels("padded").inc(stats.padded_steps)
    MODEL_CALLS.inc(stats.model_calls)
    for size, seconds in zip(stats.call_sizes, stats.call_seconds):
        BATCH_SIZE.observe(size)
        COMPUTE_SECONDS.observe(seconds)
