"""The forecaster's metrics; the shared families (batch sizes, steps, calls, compute, queue): ``service.core.metrics``.

=============================================  =======================================================
``seqserve_forecast_series_total``             series answered, by route (forecast|anomalies|v2)
``seqserve_forecast_rejected_requests_total``  requests refused (4xx), by reason (bad_horizon, too_long, ...)
``seqserve_forecast_history_length``           histogram of the history length a series arrived with
``seqserve_forecast_horizon_steps``            histogram of the prediction_length asked for
``seqserve_forecast_missing_values_total``     history values sent as missing (masked by the model)
``seqserve_forecast_actuals_total``            observed series stored for retraining (POST /actuals)
``seqserve_anomaly_points_total``              points scored by /anomalies, by outcome (normal|flagged)
``seqserve_anomaly_max_score``                 histogram of each scored series' largest score (1 = interval edge)
=============================================  =======================================================

The alert ``SeqServeForecastAnomalyRate`` (deploy/prometheus/rules.yml) fires when the flagged share of scored
points stays far above what the interval's level leaves outside it.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Histogram

from service.core.batching.engine import BatchStats
from service.core.metrics import (
    DEADLINE_DROPPED,
    MODEL_INFO,
    BatchRecorder,
    gpu_present,
)

SERIES = Counter("seqserve_forecast_series", "Series answered", ["route"])
REJECTED = Counter("seqserve_forecast_rejected_requests", "Forecast requests refused, by reason", ["reason"])
HISTORY = Histogram(
    "seqserve_forecast_history_length",
    "History length a series arrived with",
    buckets=(1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
)
HORIZON = Histogram(
    "seqserve_forecast_horizon_steps", "prediction_length asked for", buckets=(1, 2, 4, 8, 12, 24, 48, 96, 192)
)
MISSING = Counter("seqserve_forecast_missing_values", "History values sent as missing (masked)")
ACTUALS = Counter("seqserve_forecast_actuals", "Observed series stored for retraining (POST /actuals)")
ANOMALY_POINTS = Counter("seqserve_anomaly_points", "Points scored by /anomalies", ["outcome"])
ANOMALY_MAX = Histogram(
    "seqserve_anomaly_max_score", "A scored series' largest anomaly score", buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 100)
)


class ForecastMetrics:
    """What the model service records per batch (the API workers record per request: ``observe_request``)."""

    def __init__(self, version: str, provider: str, device_requested: str, model: str) -> None:
        DEADLINE_DROPPED.labels("forecast")
        for outcome in ("normal", "flagged"):
            ANOMALY_POINTS.labels(outcome)
        self._info_labels = (version, "lstm", provider, device_requested, "true" if gpu_present() else "false", model)
        MODEL_INFO.labels(*self._info_labels).set(1)
        self._batches = BatchRecorder(model)

    def batch(self, stats: BatchStats, received: list[float]) -> None:
        self._batches.batch(stats, received)

    def failed(self, n: int) -> None:
        pass

    def retire(self) -> None:
        MODEL_INFO.labels(*self._info_labels).set(0)


def observe_request(route: str, targets: list[np.ndarray], horizon: int) -> None:
    SERIES.labels(route).inc(len(targets))
    HORIZON.observe(horizon)
    missing = 0
    for t in targets:
        HISTORY.observe(len(t))
        missing += int(np.isnan(t).sum())
    if missing:
        MISSING.inc(missing)


def observe_anomalies(scores: np.ndarray) -> None:
    """``scores``: one series' scores (NaN where not scored)."""
    scored = scores[np.isfinite(scores)]
    flagged = int((scored > 1).sum())
    ANOMALY_POINTS.labels("flagged").inc(flagged)
    ANOMALY_POINTS.labels("normal").inc(len(scored) - flagged)
    if len(scored):
        ANOMALY_MAX.observe(float(scored.max()))
