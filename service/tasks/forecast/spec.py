"""The forecaster's part of the artifact contract: its load-time reference check and what a model swap may change.

Its ``metadata.json`` section (``forecasting``: horizon, frequency, period, context, quantile grid, covariates,
scaling) is typed in ``service.core.artifact.Forecasting``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactMeta
from service.core.runtime import CHECK_TOLERANCE, judged


def check_reference(sess: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE) -> dict:
    """Run the recorded reference rows batched and alone; ``ReferenceMismatch`` beyond ``tolerance`` (relative to
    each row's scale: quantiles are in the series' own units)."""
    ref = np.load(reference_path)
    x, lengths, expected = ref["x"], ref["lengths"], ref["quantiles"]
    scale = np.maximum(np.abs(expected).max(axis=(1, 2), keepdims=True), 1.0)
    (batched,) = sess.run(None, {"x": x, "lengths": lengths})
    diff_batched = float((np.abs(batched - expected) / scale).max())
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        (alone,) = sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]})
        diff_alone = max(diff_alone, float((np.abs(alone[0] - expected[i]) / scale[i]).max()))
    return judged("series", len(lengths), diff_batched, diff_alone, tolerance)


def swap_problem(serving: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why ``new`` cannot replace ``serving`` without a restart, or None. The API workers validate requests
    against the horizon, frequency, quantile grid and covariates they read at start-up: those must stay."""
    a, b = serving.forecasting, new.forecasting
    keys = ("horizon", "frequency", "period", "context", "quantiles", "covariates", "time_features")
    if a is None or b is None or any(getattr(a, k) != getattr(b, k) for k in keys):
        return f"its forecasting contract differs ({b}; serving {a}): that needs a restart"
    return None
