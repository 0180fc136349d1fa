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

from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.tasks.forecast.calendar import TIME_FEATURES
from training.tasks.forecast.data import Panel

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
        transform: str = "none",  # "log1p": the model works on log(1 + scaled value) (non-negative data)
        head_dropout: float | None = None,  # the head's own (None: ``dropout``)
        interval_scale: float = 1.0,  # the steps away from the median, scaled after training (--calibrate)
    ) -> None:
        super().__init__()
        self.interval_scale = interval_scale
        assert 0.5 in quantiles, "the quantile grid needs the median"
        assert transform in ("none", "log1p"), transform
        self.transform = transform
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
            nn.Linear(n_in, head),
            nn.ReLU(),
            nn.Dropout(dropout if head_dropout is None else head_dropout),
            nn.Linear(head, horizon * len(self.quantiles)),
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

    def to_model(self, v: torch.Tensor) -> torch.Tensor:
        """Scaled values into the model's space (``log1p``: log(1 + v), v clamped above -1)."""
        return torch.log1p(v.clamp(min=-0.999)) if self.transform == "log1p" else v

    def from_model(self, v: torch.Tensor) -> torch.Tensor:
        """The inverse (monotone: quantiles stay in order)."""
        return torch.expm1(v) if self.transform == "log1p" else v

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Steps 1 and 2 and the head's inputs: the encoder's state at each row's last history step, the last
        ``window`` scaled values and flags, the future known features, the base and the scale."""
        hist = lengths - self.horizon
        ys, observed, scale = self.scaled(x[..., 0], hist)
        ys = self.to_model(ys)  # 0 where not counted stays 0 (log1p(0) = 0)
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
        base = base if self.base_seasons else torch.zeros_like(base)
        return {"state": state, "values": values, "flags": flags, "future": future, "base": base, "scale": scale}

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, 1 + F_t + C]``: each row's history (value, NaN if missing; time features; covariates)
        then its ``horizon`` future steps; ``lengths`` = history + horizon. Quantiles ``[B, H, Q]`` in the
        series' own units."""
        e = self.encode(x, lengths)
        return self.decode(e, self.features(e))

    @staticmethod
    def features(e: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's input: the encoder's state, the last window's values and flags, the future features."""
        return torch.cat([e["state"], e["values"], e["flags"], e["future"].flatten(1)], 1)

    def decode(self, e: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        """The head: the encoder's ``features`` -> quantiles ``[B, H, Q]`` (a median plus steps that never cross)."""
        z = self.head(features).view(-1, self.horizon, len(self.quantiles))
        median = z[..., self.mid : self.mid + 1] + e["base"].unsqueeze(-1)
        steps = nn.functional.softplus(z) * self.interval_scale  # 1 in training
        upper = median + torch.cumsum(steps[..., self.mid + 1 :], -1)
        lower = median - torch.flip(torch.cumsum(torch.flip(steps[..., : self.mid], [-1]), -1), [-1])
        return self.from_model(torch.cat([lower, median, upper], -1)) * e["scale"].unsqueeze(-1)

    def loss(
        self, x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor, widths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training loss per element ``[B, H, Q]`` in each row's scaled units: the pinball loss of the grid
        (``widths`` ``[B]``: the interval's quantiles, all but the median, weigh that much in each row)."""
        e = self.encode(x, lengths)
        scale = e["scale"]  # [B, 1]
        qs = torch.tensor(self.quantiles, device=x.device)
        out = pinball(self.decode(e, self.features(e)) / scale.unsqueeze(-1), target / scale, qs)
        if widths is None:
            return out
        weights = widths.view(-1, 1, 1).expand(-1, 1, len(self.quantiles)).clone()
        weights[..., self.mid] = 1.0
        return out * weights


class DeepAR(Forecaster):
    """The autoregressive variant (DeepAR style, ``--head deepar``): the same encoder, then an LSTM cell walks the
    horizon one step at a time, each step a Gaussian (mean, spread) in the row's scaled units fed the value before
    it: the actual in training (teacher forcing, negative log-likelihood), a sampled value when forecasting. The
    quantiles are the empirical quantiles of ``samples`` paths drawn with a fixed table of normal draws (stratified
    per step), so the graph is deterministic and answers in the same ``[B, H, Q]`` as the direct head."""

    def __init__(self, *args, samples: int = 200, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        hidden, drop = self.rnn.hidden_size, self.rnn.dropout
        known = self.time_features + self.covariates
        self.head = nn.Sequential(nn.Linear(hidden + 2 * self.window, 2 * hidden), nn.Tanh())  # the cell's start
        self.cell = nn.LSTM(2 + known, hidden, batch_first=True)  # one step at a time (LSTMCell does not export)
        self.drop = nn.Dropout(drop)
        self.out = nn.Linear(hidden, 2)
        g = torch.Generator().manual_seed(0)
        grid = torch.special.ndtri((torch.arange(samples, dtype=torch.float64) + 0.5) / samples).float()
        draws = [grid[torch.randperm(samples, generator=g)] for _ in range(self.horizon)]
        self.register_buffer("noise", torch.stack(draws, 1))  # [samples, H]
        pos = torch.tensor(self.quantiles, dtype=torch.float64) * (samples - 1)
        self.register_buffer("lo", pos.floor().long())
        self.register_buffer("hi", pos.ceil().long())
        self.register_buffer("frac", (pos - pos.floor()).float())

    def walk(
        self, e: dict[str, torch.Tensor], feed: torch.Tensor | None, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder over the horizon: ``feed`` ``[R, H]`` scaled actuals (teacher forcing; NaN = missing) or
        ``noise`` ``[R, H]`` draws (sampling). (means, spreads, values walked) ``[R, H]`` each."""
        start = self.head(torch.cat([e["state"], e["values"], e["flags"]], 1))
        n = self.cell.hidden_size
        h, c = start[:, :n].unsqueeze(0).contiguous(), start[:, n:].unsqueeze(0).contiguous()
        prev, seen = e["values"][:, -1:], e["flags"][:, -1:]
        means, spreads, walked = [], [], []
        for t in range(self.horizon):
            step, (h, c) = self.cell(torch.cat([prev, seen, e["future"][:, t]], 1).unsqueeze(1), (h, c))
            o = self.out(self.drop(step[:, 0]))
            mean, spread = o[:, :1] + e["base"][:, t : t + 1], nn.functional.softplus(o[:, 1:]) + 1e-3
            if feed is not None:
                actual = feed[:, t : t + 1]
                seen = torch.isfinite(actual).float()
                prev = torch.where(seen > 0, actual, torch.zeros_like(actual))
            else:
                prev = mean + spread * noise[:, t : t + 1]
            means.append(mean)
            spreads.append(spread)
            walked.append(prev)
        return torch.cat(means, 1), torch.cat(spreads, 1), torch.cat(walked, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        e = self.encode(x, lengths)
        n = self.noise.shape[0]
        rows = {k: v.unsqueeze(1).expand(v.shape[0], n, *v.shape[1:]).flatten(0, 1) for k, v in e.items()}
        noise = self.noise.unsqueeze(0).expand(x.shape[0], -1, -1).flatten(0, 1)
        _, _, paths = self.walk(rows, None, noise)
        paths, _ = torch.sort(paths.view(-1, n, self.horizon), dim=1)
        q = paths[:, self.lo] * (1 - self.frac.view(1, -1, 1)) + paths[:, self.hi] * self.frac.view(1, -1, 1)
        return self.from_model(q.transpose(1, 2)) * e["scale"].unsqueeze(-1)

    def loss(self, x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Gaussian negative log-likelihood per step ``[B, H, 1]`` in scaled units (0 where the target is NaN)."""
        e = self.encode(x, lengths)
        y = self.to_model(target / e["scale"])
        mean, spread, _ = self.walk(e, y, None)
        nll = 0.5 * ((y - mean) / spread) ** 2 + torch.log(spread)
        return torch.where(torch.isfinite(nll), nll, torch.zeros_like(nll)).unsqueeze(-1)


class Ensemble(nn.Module):
    """Members trained from different starts (``--ensemble K``); the answer is their quantiles averaged level by
    level (they still never cross), ``[B, H, Q]`` as one member's."""

    def __init__(self, members: list[Forecaster]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.quantiles = members[0].quantiles

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x, lengths) for m in self.members]).mean(0)


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


def predict(model: Forecaster, w: dict[str, np.ndarray], batch: int = 1024) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(w["x"][i : i + batch]), torch.from_numpy(w["lengths"][i : i + batch])).numpy()
                for i in range(0, len(w["x"]), batch)
            ]
        )


def build_model(cfg: dict) -> Forecaster:
    kind = DeepAR if cfg.get("head", "quantile") == "deepar" else Forecaster
    if cfg.get("ensemble", 1) > 1:
        return Ensemble([build_model({**cfg, "ensemble": 1}) for _ in range(cfg["ensemble"])])
    return kind(
        cfg["horizon"],
        TIME_FEATURES,
        len(cfg["covariates"]),
        cfg["window"],
        cfg.get("base_period", cfg["period"]),
        cfg["base_seasons"],
        cfg["hidden"],
        cfg["layers"],
        dropout=cfg["dropout"],
        head_dropout=None if cfg.get("head_dropout", -1.0) < 0 else cfg["head_dropout"],
        quantiles=tuple(cfg["quantiles"]),
        transform=cfg.get("transform", "none"),
        interval_scale=cfg.get("interval_scale", 1.0),
    )


def load_forecaster(path: Path) -> tuple[Forecaster, dict, dict]:
    """(the model in eval mode, its config, its metrics) from a run's ``checkpoint.pt``."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ck["config"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["config"], ck.get("metrics", {})


def new_model(arch: dict, panel: Panel, device: str) -> Forecaster | Ensemble:
    model = build_model(arch)
    if panel.covariate_names:
        flat = np.concatenate(panel.covariates)
        for m in model.members if isinstance(model, Ensemble) else [model]:
            m.cov_mean.copy_(torch.from_numpy(flat.mean(0)))
            m.cov_std.copy_(torch.from_numpy(np.maximum(flat.std(0), 1e-6)))
    return model.to(device)


def set_interval_scale(model: Forecaster | Ensemble, scale: float) -> None:
    for m in model.members if isinstance(model, Ensemble) else [model]:
        m.interval_scale = scale
