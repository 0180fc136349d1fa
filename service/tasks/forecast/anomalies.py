"""Anomaly scores from one-step predictive quantiles: how far each observed point lies outside its interval.

For a point with one-step quantiles (forecast from the points before it) and a central interval of ``level``
(``[q_lo, q_hi]``, ``q_lo = (1 - level) / 2``): above the median, ``score = (y - q50) / (q_hi - q50)``; below it,
``(q50 - y) / (q50 - q_lo)``. So 0 is the median, 1 the interval's edge, 3 three interval half-widths out; a point
is flagged when its score exceeds 1. Flagged points next to each other form one range. Missing points and the
first ``skip`` points (too little history to forecast from) have no score.
"""

from __future__ import annotations

import numpy as np

from service.tasks.forecast.engine import interpolate


def scores(actual: np.ndarray, one_step: np.ndarray, grid: list[float], level: float, skip: int) -> np.ndarray:
    """Per point of ``actual`` ``[T]`` (NaN where unscored); ``one_step`` ``[T - skip, Q]``: the quantiles of
    points ``skip..T-1``."""
    lo, mid, hi = interpolate(grid, one_step, [(1 - level) / 2, 0.5, (1 + level) / 2]).T
    y = actual[skip:]
    eps = 1e-6 * np.maximum(np.abs(mid), 1.0)
    up = (y - mid) / np.maximum(hi - mid, eps)
    down = (mid - y) / np.maximum(mid - lo, eps)
    out = np.full(len(actual), np.nan, np.float64)
    out[skip:] = np.where(y >= mid, up, down)
    return out


def ranges(score: np.ndarray, threshold: float = 1.0) -> list[list[int]]:
    """``[[first, last], ...]`` (inclusive indices) of runs of points scoring above ``threshold``."""
    flagged = np.concatenate([[False], np.nan_to_num(score, nan=0.0) > threshold, [False]])
    edges = np.flatnonzero(np.diff(flagged.astype(np.int8)))
    return [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2], strict=True)]
