"""The training examples of the forecaster, as the service builds its rows: the artifact's forecasting contract,
one window per cut point of every series (variable history lengths, weighted as MASE weighs errors), histories
cut short the way short series arrive, and the base the median starts from (``pick_base``).
"""

from __future__ import annotations

import numpy as np
import torch

from service.core.artifact import Forecasting
from service.tasks.forecast.calendar import TIME_FEATURES
from service.tasks.forecast.engine import build_row
from training.tasks.forecast.data import Panel
from training.tasks.forecast.evaluate import naive_scale

MAX_CONTEXT = 256  # the default context's ceiling (a long period): the cost of a row is its length


def sizes(horizon: int, period: int, context: int, window: int) -> tuple[int, int]:
    """Default context (history read) and window (recent values to the head) from the horizon and period."""
    context = context or min(max(4 * period, 3 * horizon, 16), MAX_CONTEXT)
    window = window or min(context, max(period, 4) * (2 if period <= 12 else 1))
    return context, window


def contract(panel: Panel, horizon: int, context: int, quantiles: tuple[float, ...]) -> Forecasting:
    """The forecasting section of the artifact: what a row means (``service.tasks.forecast.engine.build_row``)."""
    return Forecasting(
        horizon=horizon,
        frequency=panel.calendar.freq,
        period=panel.calendar.period,
        context=context,
        quantiles=list(quantiles),
        covariates=list(panel.covariate_names),
        time_features=TIME_FEATURES,
    )


def windows(panel: Panel, fc: Forecasting, ends: bool = False, half_life: float = 0.0) -> dict[str, np.ndarray]:
    """Training examples at every cut point with an observed history and target, as the service builds its rows
    (``ends``: one per series, its whole history and no target: what is forecast). ``weight``: the window's scale
    (mean absolute history) over its series' seasonal-naive MAE, so the scaled loss weighs errors as MASE does,
    halved every ``half_life`` steps back from the series' end (0: no recency weighting)."""
    h, context = fc.horizon, fc.context
    xs, lengths, targets, weights, ages = [], [], [], [], []
    for i, y in enumerate(panel.values):
        n = len(y)
        naive = naive_scale(y, panel.calendar.period)
        cov = panel.covariates[i] if panel.covariates else None
        if ends:
            cuts = [n]
        else:
            finite = np.isfinite(y)
            cuts = [t for t in range(1, n - h + 1) if finite[max(0, t - context) : t].any() and finite[t : t + h].any()]
        for t in cuts:
            row = build_row(fc, panel.calendar, y[:t], panel.first_steps[i], cov)
            x = np.zeros((context + h, row.shape[1]), np.float32)
            x[: len(row)] = row
            xs.append(x)
            lengths.append(len(row))
            targets.append(np.full(h, np.nan, np.float32) if ends else y[t : t + h])
            level = np.nanmean(np.abs(row[:-h, 0])) if np.isfinite(row[:-h, 0]).any() else 1.0
            recency = 0.5 ** ((n - h - t) / half_life) if half_life > 0 else 1.0
            weights.append(recency * (level / naive if level > 0 else 1.0))
            ages.append(n - h - t)
    if not xs:
        raise ValueError(f"no training windows: every series is shorter than horizon + 1 ({h + 1}) or has no values")
    return {
        "x": np.stack(xs),
        "lengths": np.array(lengths, np.int64),
        "target": np.stack(targets).astype(np.float32),
        "weight": np.array(weights, np.float32),
        "age": np.array(ages, np.float32),
    }


def truncate_histories(
    x: torch.Tensor, lengths: torch.Tensor, horizon: int, share: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``share`` of the rows keep only the last ``k`` steps of their history (``k`` log-uniform in
    1..history), their future moved up behind it: a row as the service builds it for a series that short."""
    hist = (lengths - horizon).cpu().numpy()
    cut = rng.random(len(hist)) < share
    keep = np.where(cut, np.ceil(np.exp(rng.uniform(0, np.log(np.maximum(hist, 1))))), hist).astype(np.int64)
    keep = np.clip(keep, 1, hist)
    shift = torch.from_numpy(hist - keep).to(x.device)
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    idx = (steps + shift.unsqueeze(1)).clamp(max=x.shape[1] - 1)
    moved = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    new_lengths = torch.from_numpy(keep).to(x.device) + horizon
    inside = (steps < new_lengths.unsqueeze(1)).unsqueeze(-1)
    return torch.where(inside, moved, torch.zeros_like(moved)), new_lengths


def pick_base(panel: Panel, horizon: int, most: int) -> tuple[int, int]:
    """Where the median starts from, as ``(base_period, seasons)``: the candidate with the lowest MASE on the
    training data's last horizons (cut points a horizon apart, as many as cover a season): the naive forecast
    (the last value: ``(1, 1)``) or the mean of the last 1..``most`` seasons. A mean of 2 or more seasons
    (noisy series) or naive (one-step, smooth series) is kept; seasonal naive gives ``(period, 0)``, no base
    (the head reads the last season anyway, and on trending series a fixed seasonal base pulled the forecasts
    back: aus_retail MASE 1.36 with it, 1.29 without)."""
    m = panel.calendar.period
    origins = max(1, -(-m // horizon))
    candidates = [(1, 1)] + [(m, k) for k in range(1, most + 1)]
    steps = np.arange(horizon)
    errors = []
    for p, k in candidates:
        errs = []
        for y in panel.values:
            for o in range(origins):
                cut = len(y) - horizon * (o + 1)
                hist, a = y[:cut], y[cut : cut + horizon]
                if len(hist) < p * k or not np.isfinite(a).any():
                    continue
                f = np.nanmean(np.stack([hist[len(hist) - p * j + steps % p] for j in range(1, k + 1)]), axis=0)
                ok = np.isfinite(a) & np.isfinite(f)
                if ok.any():
                    errs.append(np.mean(np.abs(a[ok] - f[ok])) / naive_scale(hist, m))
        errors.append(float(np.mean(errs)) if errs else np.inf)
    p, k = candidates[int(np.argmin(errors))]
    return (p, k) if p == 1 or k > 1 else (m, 0)


def parse_base(text: str, period: int) -> tuple[int, int] | None:
    """``--base``: ``(base_period, seasons)``, or None for auto."""
    if text == "auto":
        return None
    if text == "none":
        return period, 0
    if text == "naive":
        return 1, 1
    if text.isdigit():
        return period, int(text)
    raise SystemExit(f"--base {text!r}: expected auto, none, naive or a number of seasons")


def describe_base(base_period: int, seasons: int) -> str:
    if not seasons:
        return "none"
    return "naive (the last value)" if base_period == 1 else f"the mean of the last {seasons} season(s)"
