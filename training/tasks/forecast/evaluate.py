"""The forecasting scores, one definition for the model and the statistical baselines (``make eval-forecast``).

Per series, with the last ``h`` points held out: MASE (mean absolute error of the point forecast over the
in-sample seasonal-naive MAE of the training part), sMAPE (percent), the scaled pinball loss at 0.1/0.5/0.9
(pinball over the same seasonal-naive scale) and whether the actual lies in the 80% interval [q0.1, q0.9]. The
set's figure is the mean over series (coverage: over all points). NaN actuals are skipped.
"""

from __future__ import annotations

import numpy as np

SCORED_QUANTILES = (0.1, 0.5, 0.9)


def naive_scale(history: np.ndarray, period: int) -> float:
    """In-sample MAE of the seasonal-naive forecast (lag ``period``, 1 if the history is shorter; 1.0 if 0)."""
    y = history[np.isfinite(history)] if np.isnan(history).any() else history
    m = period if len(y) > period else 1
    d = np.abs(y[m:] - y[:-m]) if len(y) > m else np.array([])
    scale = float(np.mean(d)) if len(d) else 0.0
    return scale if scale > 0 else 1.0


def series_scores(
    history: np.ndarray, actual: np.ndarray, point: np.ndarray, q: dict[float, np.ndarray], period: int
) -> dict:
    """Scores of one series; ``q`` maps 0.1/0.5/0.9 to ``[h]`` forecasts (finite wherever the actual is)."""
    ok = np.isfinite(actual)
    a, p = actual[ok], point[ok]
    if not (np.isfinite(p).all() and all(np.isfinite(v[ok]).all() for v in q.values())):
        raise ValueError("a forecast is NaN or infinite where the actual is known")
    scale = naive_scale(history, period)
    denom = np.abs(a) + np.abs(p)
    smape = np.where(denom > 0, 200.0 * np.abs(a - p) / np.where(denom > 0, denom, 1), 0.0)
    pin = []
    for level in SCORED_QUANTILES:
        diff = a - q[level][ok]
        pin.append(np.mean(np.maximum(level * diff, (level - 1) * diff)) / scale)
    inside = (a >= q[0.1][ok]) & (a <= q[0.9][ok])
    return {
        "mase": float(np.mean(np.abs(a - p)) / scale),
        "smape": float(np.mean(smape)),
        "pinball": float(np.mean(pin)),
        "covered": int(inside.sum()),
        "points": int(ok.sum()),
    }


def summarise(rows: list[dict]) -> dict:
    """The set's figures from ``series_scores`` rows."""
    points = sum(r["points"] for r in rows)
    return {
        "series": len(rows),
        "mase": float(np.mean([r["mase"] for r in rows])),
        "smape": float(np.mean([r["smape"] for r in rows])),
        "pinball": float(np.mean([r["pinball"] for r in rows])),
        "coverage_80": sum(r["covered"] for r in rows) / points if points else float("nan"),
    }


def interpolate(grid: tuple[float, ...], values: np.ndarray, levels: list[float]) -> np.ndarray:
    """Quantiles at ``levels`` from ``values`` ``[..., len(grid)]`` on ``grid`` (linear in the level)."""
    g = np.asarray(grid)
    out = np.empty(values.shape[:-1] + (len(levels),), dtype=values.dtype)
    for k, level in enumerate(levels):
        j = int(np.clip(np.searchsorted(g, level), 1, len(g) - 1))
        w = (level - g[j - 1]) / (g[j] - g[j - 1])
        out[..., k] = values[..., j - 1] + w * (values[..., j] - values[..., j - 1])
    return out


def score_set(
    histories: list[np.ndarray], actuals: list[np.ndarray], grid: tuple[float, ...], preds: np.ndarray, period: int
) -> dict:
    """Figures of a model's ``preds`` ``[N, H, Q]`` on ``grid`` (point forecast: the median)."""
    q = interpolate(grid, preds, list(SCORED_QUANTILES))
    rows = [
        series_scores(h, a, q[i, : len(a), 1], {lv: q[i, : len(a), k] for k, lv in enumerate(SCORED_QUANTILES)}, period)
        for i, (h, a) in enumerate(zip(histories, actuals, strict=True))
    ]
    return summarise(rows)
