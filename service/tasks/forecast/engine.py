"""The forecaster's in-process engine: series -> model rows -> quantiles, batched by the core's ``BatchEngine``.

**Rows.** The graph reads one row per series: its last ``context`` observed-or-missing values (NaN where missing)
with their time features and covariates, then ``horizon`` future steps carrying only time features and known
covariates (value NaN), as ``x`` ``[T + H, 1 + F_t + C]`` with ``lengths = T + H``. So a forecast is a variable-length
sequence like any other: the core plans, pads and runs merged batches of them (``service.core.batching``), and the
graph finds each row's future by its own length (exact under padding: the recurrent state at the end of a row's
history does not see what comes after it).

**Answers.** ``quantiles`` ``[N, H, Q]`` on the trained grid; ``levels`` interpolates any level inside it, ``mean``
integrates the quantile function, ``samples`` draws per step by inverse-CDF (independent across steps).

**Anomalies.** ``one_step`` forecasts every point of a series from the points before it (rolling origins, one row
each, batched like any other rows) and returns the one-step quantiles per point.
"""

from __future__ import annotations

import numpy as np

from service.core.artifact import Artifact, Forecasting, find_artifact
from service.core.batching.engine import BatchEngine, BatchStats
from service.core.runtime import SessionInfo, available_cpus, open_checked_session
from service.core.settings import Batching, Settings
from service.tasks.forecast.calendar import Calendar
from service.tasks.forecast.spec import check_reference


def build_row(
    fc: Forecasting, calendar: Calendar, target: np.ndarray, first_step: int, covariates: np.ndarray | None
) -> np.ndarray:
    """The model row of one series: ``[T + H, 1 + F_t + C]`` from its last ``context`` values (``target`` may
    hold NaN; ``covariates``: ``[len(target) + H, C]`` or None)."""
    n, h, c = len(target), fc.horizon, len(fc.covariates)
    t = min(n, fc.context)
    start = n - t
    row = np.empty((t + h, 1 + fc.time_features + c), np.float32)
    row[:t, 0] = target[start:]
    row[t:, 0] = np.nan
    row[:, 1 : 1 + fc.time_features] = calendar.features(first_step + start, t + h)
    if c:
        cov = np.zeros((t + h, c), np.float32)
        got = covariates[start : n + h]
        cov[: len(got)] = got
        row[:, 1 + fc.time_features :] = cov
    return row


def interpolate(grid: list[float], q: np.ndarray, levels: list[float]) -> np.ndarray:
    """Quantiles at ``levels`` (inside the grid) from ``q`` ``[..., len(grid)]`` (linear in the level)."""
    g = np.asarray(grid)
    j = np.clip(np.searchsorted(g, levels), 1, len(g) - 1)
    w = (np.asarray(levels) - g[j - 1]) / (g[j] - g[j - 1])
    return q[..., j - 1] + w * (q[..., j] - q[..., j - 1])


def mean_of(grid: list[float], q: np.ndarray) -> np.ndarray:
    """The mean of the piecewise-linear quantile function on ``grid``, the tails held flat (``[..., H]``)."""
    g = np.asarray(grid)
    widths = np.diff(g)
    inner = ((q[..., 1:] + q[..., :-1]) / 2 * widths).sum(-1)
    return inner + q[..., 0] * g[0] + q[..., -1] * (1 - g[-1])


def draw(grid: list[float], q: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` samples per step ``[num, H]`` from one series' quantiles ``q`` ``[H, Q]`` (inverse CDF; beyond the
    grid's ends the end values, as ``mean_of`` holds the tails)."""
    u = np.clip(rng.uniform(0.0, 1.0, size=(num, q.shape[0])), grid[0], grid[-1])
    g = np.asarray(grid)
    j = np.clip(np.searchsorted(g, u), 1, len(g) - 1)
    w = (u - g[j - 1]) / (g[j] - g[j - 1])
    steps = np.arange(q.shape[0])
    return q[steps, j - 1] + w * (q[steps, j] - q[steps, j - 1])


class ForecastEngine:
    def __init__(self, artifact: Artifact | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.artifact = artifact or find_artifact(self.settings.model or None)
        meta = self.artifact.meta
        assert meta.forecasting is not None, "not a forecast artifact"
        self.fc: Forecasting = meta.forecasting
        self.calendar = Calendar(self.fc.frequency, self.fc.period)
        self.model_version: str = meta.model_version
        self.feature_dim = meta.feature_dim
        threads = self.settings.ort_threads or max(1, available_cpus() // self.settings.model_workers)
        self.info: SessionInfo = open_checked_session(
            self.artifact, self.settings.device, threads, spin=self.settings.ort_spin, check=check_reference
        )
        self.session, self.provider, self.ort_threads = self.info.session, self.info.provider, threads
        self.batching: Batching = self.settings.batching(cuda=False)
        self.batch = BatchEngine(self.session, self.feature_dim, self.batching)

    def infer(self, rows: list[np.ndarray]) -> tuple[np.ndarray, BatchStats]:
        """Quantiles ``[N, H, Q]`` for model rows (``build_row``), in input order."""
        out = np.empty((len(rows), self.fc.horizon, len(self.fc.quantiles)), np.float32)
        stats = BatchStats()
        for g, (q,), _ in self.batch.calls(rows, stats):
            out[g] = q[: len(g)]
        return out, stats

    def rows_for(self, target: np.ndarray, first_step: int, covariates: np.ndarray | None) -> np.ndarray:
        return build_row(self.fc, self.calendar, target, first_step, covariates)

    def one_step_rows(
        self, target: np.ndarray, first_step: int, covariates: np.ndarray | None, skip: int
    ) -> list[np.ndarray]:
        """One row per point from ``skip`` on: the forecast of that point from the points before it."""
        return [build_row(self.fc, self.calendar, target[:t], first_step, covariates) for t in range(skip, len(target))]
