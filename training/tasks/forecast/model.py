"""The global forecaster: one LSTM over every series, a direct multi-horizon quantile head (MQ-RNN style).

Read top to bottom, ``Forecaster.forward`` is the whole model, and the exported graph is exactly this function:

1. **Masking and scaling.** ``y`` is ``[B, T]`` raw values, right-padded to the longest history in the batch,
   with NaN where a value is missing. A step counts if it is inside the row's ``lengths`` and finite. Each row is
   divided by the mean absolute value of its counted steps (its *scale*, 1 if that is 0), so one model serves
   series of any level; the answer is multiplied back.
2. **Encoder.** Per step: the scaled value (0 where missing), an observed flag, seasonal time features and the
   known covariates (standardised with training statistics). A unidirectional LSTM over right-padded rows gives
   at step ``lengths - 1`` exactly what it gives the row alone: padding comes after it (exact under batching).
3. **Head.** The last state, the last ``window`` scaled values (a seasonal-naive-like shortcut), the future time
   features and future covariates go through an MLP to ``[H, Q]`` numbers: the median and softplus steps away from
   it, so quantiles never cross. The median is added to a *base* when training picked one: the last value
   (naive, ``period`` 1) or the mean of the last ``base_seasons`` seasons (``base_map``).

Trained on the pinball loss over a quantile grid; any quantile inside the grid is served by interpolation.
"""

from __future__ import annotations

import torch
from torch import nn

QUANTILES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


class Forecaster(nn.Module):
    def __init__(
        self,
        horizon: int,
        time_features: int,
        covariates: int = 0,
        window: int = 8,
        period: int = 1,  # the base's period: the series' season, or 1 for the naive base (the last value)
        base_seasons: int = 1,
        hidden: int = 64,
        layers: int = 2,
        head: int = 256,
        dropout: float = 0.1,
        quantiles: tuple[float, ...] = QUANTILES,
    ) -> None:
        super().__init__()
        assert 0.5 in quantiles, "the quantile grid needs the median"
        self.horizon, self.window, self.covariates, self.time_features = horizon, window, covariates, time_features
        self.quantiles = tuple(quantiles)
        self.mid = self.quantiles.index(0.5)
        self.register_buffer("cov_mean", torch.zeros(max(covariates, 1)))
        self.register_buffer("cov_std", torch.ones(max(covariates, 1)))
        self.base_seasons = base_seasons
        self.register_buffer("base_map", base_map(window, horizon, period, base_seasons))
        self.rnn = nn.LSTM(2 + time_features + covariates, hidden, layers, batch_first=True, dropout=dropout)
        n_in = hidden + 2 * window + horizon * (time_features + covariates)
        self.head = nn.Sequential(
            nn.Linear(n_in, head), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head, horizon * len(self.quantiles))
        )

    def scaled(self, y: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scaled values with 0 where not counted, the observed mask as float, the scale ``[B, 1]``)."""
        steps = torch.arange(y.shape[1], device=y.device).unsqueeze(0)
        observed = (steps < lengths.unsqueeze(1)) & torch.isfinite(y)
        y0 = torch.where(observed, y, torch.zeros_like(y))
        count = observed.float().sum(1, keepdim=True).clamp(min=1.0)
        scale = y0.abs().sum(1, keepdim=True) / count
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return y0 / scale, observed.float(), scale

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, 1 + F_t + C]``: each row's history (value, NaN if missing; time features; covariates)
        then its ``horizon`` future steps; ``lengths`` = history + horizon. Quantiles ``[B, H, Q]`` in the
        series' own units."""
        hist = lengths - self.horizon
        ys, observed, scale = self.scaled(x[..., 0], hist)
        known = x[..., 1:]
        if self.covariates:
            cov = (known[..., self.time_features :] - self.cov_mean) / self.cov_std
            known = torch.cat([known[..., : self.time_features], cov], -1)
        out, _ = self.rnn(torch.cat([ys.unsqueeze(-1), observed.unsqueeze(-1), known], -1))
        last = (hist - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        state = out.gather(1, last).squeeze(1)
        ahead = hist.unsqueeze(1) + torch.arange(self.horizon, device=x.device).unsqueeze(0)
        future = known.gather(1, ahead.unsqueeze(-1).expand(-1, -1, known.shape[-1]))
        # the last ``window`` scaled values and flags, by position from each row's own end (0 before its start)
        idx = hist.unsqueeze(1) - self.window + torch.arange(self.window, device=x.device).unsqueeze(0)
        valid = (idx >= 0).float()
        idx = idx.clamp(min=0)
        values, flags = ys.gather(1, idx) * valid, observed.gather(1, idx) * valid
        # the seasonal mean of the last seasons (where the median starts from; none with 0 seasons)
        seen = flags @ self.base_map
        level = values.sum(1, keepdim=True) / flags.sum(1, keepdim=True).clamp(min=1.0)
        base = torch.where(seen > 0, (values @ self.base_map) / seen.clamp(min=1.0), level)  # all missing: the level
        z = self.head(torch.cat([state, values, flags, future.flatten(1)], 1))
        z = z.view(-1, self.horizon, len(self.quantiles))
        median = z[..., self.mid : self.mid + 1] + (base.unsqueeze(-1) if self.base_seasons else 0.0)
        steps = nn.functional.softplus(z)
        upper = median + torch.cumsum(steps[..., self.mid + 1 :], -1)
        lower = median - torch.flip(torch.cumsum(torch.flip(steps[..., : self.mid], [-1]), -1), [-1])
        return torch.cat([lower, median, upper], -1) * scale.unsqueeze(-1)


def base_map(window: int, horizon: int, period: int, seasons: int) -> torch.Tensor:
    """``[window, horizon]``: step ``j`` ahead averages the values one, two, ... ``seasons`` periods before it
    among the last ``window`` (0 seasons: no base, the head predicts the level itself)."""
    m = torch.zeros(window, horizon)
    for j in range(horizon):
        for i in range(1, seasons + 1):
            pos = window - period * i + (j % period)
            while pos >= window:  # horizons beyond one period repeat the last season
                pos -= period
            if 0 <= pos:
                m[pos, j] = 1.0
    return m


def pinball(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Pinball loss per element ``[B, H, Q]`` (``target`` ``[B, H]``; NaN targets give 0)."""
    diff = target.unsqueeze(-1) - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1) * diff)
    return torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
