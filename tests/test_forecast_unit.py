"""Forecasting without a server: the calendar, the model rows, exactness under padding and missing values (torch),
the quantile helpers, the anomaly scores and the request checks (issue 24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.artifact import ArtifactMeta, ContractError, Forecasting
from service.core.guard import Rejected
from service.tasks.forecast import anomalies
from service.tasks.forecast.calendar import TIME_FEATURES, Calendar, TimeError, infer_frequency
from service.tasks.forecast.engine import build_row, draw, interpolate, mean_of
from service.tasks.forecast.schema import parse_configuration, parse_instances, parse_level
from training.tasks.forecast.data import load_panel, split
from training.tasks.forecast.model import QUANTILES, DeepAR, Ensemble, Forecaster

FC = Forecasting(horizon=4, frequency="Q", period=4, context=12, quantiles=list(QUANTILES))


def test_calendar_reads_the_stamps_users_write() -> None:
    q, m = Calendar("Q"), Calendar("M")
    assert q.step_index("1998 Q2") - q.step_index("1998 Q1") == 1
    assert q.step_index("1999 Q1") - q.step_index("1998 Q4") == 1
    assert m.step_index("1982 Apr") == m.step_index("1982-04") == m.step_index("1982-04-01")
    half = Calendar("30min")
    assert half.step_index("2012-01-01T00:30:00Z") - half.step_index("2012-01-01T00:00:00Z") == 1
    assert infer_frequency(["1998 Q1", "1998 Q2"]) == "Q"
    assert infer_frequency(["1982 Apr", "1982 May"]) == "M"
    assert infer_frequency(["2011-12-31T13:00:00Z", "2011-12-31T13:30:00Z"]) == "30min"
    assert infer_frequency(["0", "1", "2"]) == "step"
    with pytest.raises(TimeError, match="month 13"):
        m.step_index("1982-13")
    with pytest.raises(TimeError, match="not on the 30min grid"):
        half.step_index("2012-01-01T00:10:00Z")
    f = q.features(q.step_index("1998 Q1"), 8)
    assert f.shape == (8, TIME_FEATURES) and np.allclose(f[:4], f[4:])  # one period repeats


def test_fpp3_sets_load_by_package_path() -> None:
    panel = load_panel("tourism")
    assert len(panel) == 304 and {len(v) for v in panel.values} == {80} and panel.calendar.freq == "Q"
    train, actual = split(panel, 8)
    assert all(len(a) == 8 for a in actual) and len(train.values[0]) == 72


def test_row_layout_and_context_cut() -> None:
    y = np.arange(20, dtype=np.float32)
    row = build_row(FC, Calendar("Q"), y, 100, None)
    assert row.shape == (FC.context + FC.horizon, 1 + TIME_FEATURES)
    assert np.array_equal(row[: FC.context, 0], y[-FC.context :]) and np.isnan(row[FC.context :, 0]).all()
    assert np.allclose(row[:, 1:], Calendar("Q").features(108, FC.context + FC.horizon))


def _model(seed: int = 0, kind: str = "quantile") -> torch.nn.Module:
    torch.manual_seed(seed)
    make = {"quantile": Forecaster, "deepar": DeepAR, "ensemble": Forecaster, "log1p": Forecaster}[kind]
    transform = "log1p" if kind == "log1p" else "none"
    members = [
        make(FC.horizon, TIME_FEATURES, 0, window=8, period=4, base_seasons=2, hidden=16, layers=2, transform=transform)
        for _ in range(2 if kind == "ensemble" else 1)
    ]
    return (Ensemble(members) if kind == "ensemble" else members[0]).eval()


@pytest.mark.parametrize("kind", ["quantile", "deepar", "ensemble", "log1p"])
def test_a_series_forecast_does_not_change_when_batched_with_longer_ones(kind: str) -> None:
    model = _model(0, kind)
    rng = np.random.default_rng(0)
    cal = Calendar("Q")
    series = [rng.uniform(50, 150, n).astype(np.float32) for n in (3, 12, 7, 30)]
    series[2][1] = np.nan  # a missing value, masked
    rows = [build_row(FC, cal, y, 0, None) for y in series]
    width = max(len(r) for r in rows)
    x = np.zeros((len(rows), width, rows[0].shape[1]), np.float32)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        batched = model(torch.from_numpy(x), lengths)
        for i, r in enumerate(rows):
            alone = model(torch.from_numpy(r[None]), lengths[i : i + 1])
            assert torch.allclose(alone[0], batched[i], rtol=1e-5, atol=1e-4), i
    assert torch.isfinite(batched).all()
    q = batched.numpy()
    assert (np.diff(q, axis=-1) >= 0).all()  # quantiles never cross


@pytest.mark.parametrize("kind", ["quantile", "deepar", "ensemble", "log1p"])
def test_padding_values_do_not_leak_into_the_forecast(kind: str) -> None:
    model = _model(1, kind)
    row = build_row(FC, Calendar("Q"), np.linspace(10, 20, 9, dtype=np.float32), 0, None)
    x = np.zeros((1, len(row) + 5, row.shape[1]), np.float32)
    x[0, : len(row)] = row
    garbage = x.copy()
    garbage[0, len(row) :] = 1e6
    lengths = torch.tensor([len(row)])
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(x), lengths), model(torch.from_numpy(garbage), lengths))


def test_quantile_helpers() -> None:
    grid = list(QUANTILES)
    q = np.array([[float(v) for v in range(len(grid))]])  # [H=1, Q]
    mid = interpolate(grid, q, [0.5, 0.45])
    assert mid[0, 0] == grid.index(0.5) and grid.index(0.4) < mid[0, 1] < grid.index(0.5)
    sym = np.array([[-3, -2, -1, -0.5, -0.3, -0.1, 0, 0.1, 0.3, 0.5, 1, 2, 3]], np.float64)
    assert abs(mean_of(grid, sym)[0]) < 1e-9
    samples = draw(grid, sym, 4000, np.random.default_rng(0))
    assert samples.shape == (4000, 1) and -3 <= samples.min() and samples.max() <= 3
    assert abs(np.quantile(samples, 0.9) - 1.0) < 0.1


def test_anomaly_scores_and_ranges() -> None:
    grid = list(QUANTILES)
    quants = np.tile(np.linspace(-2, 2, len(grid)), (6, 1))  # every point: median 0, 0.02..0.98 -> -2..2
    actual = np.array([0, 0, 0.5, 3, 5, -1, -4], np.float64)
    s = anomalies.scores(actual, quants, grid, 0.96, skip=1)
    assert np.isnan(s[0]) and s[1] == 0 and 0 < s[2] < 1 and s[3] > 1 and s[4] > s[3] and s[6] > 1
    assert anomalies.ranges(s) == [[3, 4], [6, 6]]


def test_request_checks_name_the_field_and_limit() -> None:
    cal = Calendar("Q")

    def instances(body: dict, h: int = 4) -> list:
        return parse_instances(body, FC, cal, max_series=3, max_length=50, max_points=100, horizon=h)

    got = instances({"instances": [{"start": "2000 Q1", "target": [1, None, "NaN", 2]}]})
    assert np.isnan(got[0].target[1:3]).all() and got[0].first_step == cal.step_index("2000 Q1")
    cases = [
        ({}, "instances: required"),
        ({"instances": [{"target": [1]}]}, "instances[0].start: required"),
        ({"instances": [{"start": "2000 Q1", "target": [1, "x"]}]}, "instances[0].target[1]: 'x' is not a number"),
        ({"instances": [{"start": "2000 Q1", "target": [None]}]}, "no observed value"),
        ({"instances": [{"start": "2000 Q1", "target": [1] * 51}]}, "at most 50"),
        ({"instances": [{"start": "2000 Q1", "target": [1]}] * 4}, "at most 3 per request"),
        ({"instances": [{"start": "2000 Q7", "target": [1]}]}, "instances[0].start"),
        ({"instances": [{"start": "2000 Q1", "target": [1], "dynamic_feat": [[1, 2]]}]}, "takes no covariates"),
        ({"instances": [{"start": "2000 Q1", "target": [1e31]}]}, "target[0]"),
    ]
    for body, message in cases:
        with pytest.raises(Rejected, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
            instances(body)
        assert 400 <= e.value.status < 500
    conf = parse_configuration({"configuration": {"prediction_length": 2, "quantiles": ["0.25", 0.5]}}, FC)
    assert conf.prediction_length == 2 and conf.levels == [0.25, 0.5] and conf.quantiles == ["0.25", "0.5"]
    for c, message in [
        ({"prediction_length": 5}, "prediction_length: 5; an integer 1..4"),
        ({"quantiles": ["0.999"]}, r"quantiles\[0\]: '0.999'; levels must lie in \[0.02, 0.98\]"),
        ({"output_types": ["median"]}, "output_types"),
        ({"num_samples": 0}, "num_samples"),
        ({"horizon": 3}, "configuration.horizon: unknown field"),
    ]:
        with pytest.raises(Rejected, match=message):
            parse_configuration({"configuration": c}, FC)
    assert parse_level({}, FC) == pytest.approx(0.96)
    with pytest.raises(Rejected, match="configuration.level"):
        parse_level({"configuration": {"level": 0.99}}, FC)


def test_covariates_cover_the_horizon() -> None:
    fc = Forecasting(horizon=2, frequency="D", period=7, context=5, quantiles=list(QUANTILES), covariates=["temp"])
    cal = Calendar("D")
    body = {"instances": [{"start": "2020-01-01", "target": [1, 2, 3], "dynamic_feat": [[5, 6, 7, 8]]}]}
    with pytest.raises(Rejected, match=r"dynamic_feat\[0\]: 4 values, needs 5"):
        parse_instances(body, fc, cal, 3, 50, 100, 2)
    body["instances"][0]["dynamic_feat"] = [[5, 6, 7, 8, 9]]
    (s,) = parse_instances(body, fc, cal, 3, 50, 100, 2)
    row = build_row(fc, cal, s.target, s.first_step, s.covariates)
    assert row.shape == (5, 1 + TIME_FEATURES + 1) and row[:, -1].tolist() == [5, 6, 7, 8, 9]


def test_forecasting_contract_is_checked() -> None:
    base = {
        "schema_version": 1,
        "task": "forecast",
        "model_name": "f",
        "model_version": "v",
        "max_length": 100,
        "rnn": {"rnn": "lstm"},
        "forecasting": {"horizon": 4, "frequency": "Q", "period": 4, "context": 12, "quantiles": [0.1, 0.5, 0.9]},
    }
    meta = ArtifactMeta.from_dict(base)
    assert meta.forecasting.horizon == 4 and meta.feature_dim == 1 + TIME_FEATURES
    assert ArtifactMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ContractError, match="forecasting.quantiles"):
        ArtifactMeta.from_dict({**base, "forecasting": {**base["forecasting"], "quantiles": [0.9, 0.1]}})
    with pytest.raises(ContractError, match="forecasting.horizon"):
        ArtifactMeta.from_dict(
            {**base, "forecasting": {k: v for k, v in base["forecasting"].items() if k != "horizon"}}
        )


def test_the_base_is_picked_on_the_data() -> None:
    """The median's base: the mean of seasons on noisy seasonal data (tourism), none on trending monthly data
    (aus_retail: seasonal naive wins, the head reads it), the last value on a smooth series forecast one step
    ahead (the UCR series' normal part); and the naive base map puts all weight on the last value."""
    from training.tasks.forecast.model import base_map
    from training.tasks.forecast.windows import parse_base, pick_base

    tourism, _ = split(load_panel("tourism"), 8)
    assert pick_base(tourism, 8, 4) == (4, 3)
    retail, _ = split(load_panel("aus_retail"), 24)
    assert pick_base(retail, 24, 4) == (12, 0)
    ucr = Path(__file__).resolve().parents[1] / "data/anomaly/135_UCR_Anomaly_InternalBleeding16_TRAIN.csv"
    smooth = load_panel(str(ucr), "timestamp", "value", [], [])
    smooth.calendar = Calendar("step", 183)
    assert pick_base(smooth, 1, 1) == (1, 1)
    naive = base_map(6, 3, 1, 1)
    assert naive[-1].tolist() == [1.0, 1.0, 1.0] and float(naive.sum()) == 3.0
    assert parse_base("naive", 12) == (1, 1) and parse_base("none", 12) == (12, 0) and parse_base("2", 4) == (4, 2)
    assert parse_base("auto", 4) is None
    with pytest.raises(SystemExit, match="--base"):
        parse_base("weekly", 4)


def test_deepar_learns_a_step_distribution_and_its_paths_give_the_quantiles() -> None:
    """The autoregressive head: teacher-forced Gaussian likelihood in training; served quantiles are the sampled
    paths' empirical quantiles (deterministic: a fixed table of draws). Trained briefly on one noisy seasonal
    series, the median follows the season and the 80% interval widens with the noise."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cal = Calendar("Q")
    season = np.array([10.0, 14.0, 8.0, 12.0])
    model = DeepAR(
        FC.horizon, TIME_FEATURES, 0, window=8, period=4, base_seasons=0, hidden=16, layers=1, dropout=0.0, samples=64
    )
    rows, targets = [], []
    for _ in range(256):
        y = (np.tile(season, 6) + rng.normal(0, 1.0, 24)).astype(np.float32)
        rows.append(build_row(FC, cal, y[:20], 0, None))
        targets.append(y[20:])
    x, t = torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(targets))
    lengths = torch.full((len(rows),), x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = model.loss(x, lengths, t).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0
    model.eval()
    with torch.no_grad():
        q = model(x[:4], lengths[:4])
        again = model(x[:4], lengths[:4])
    assert torch.equal(q, again) and q.shape == (4, FC.horizon, len(QUANTILES))
    assert (torch.diff(q, dim=-1) >= 0).all()
    median = q[..., QUANTILES.index(0.5)].mean(0).numpy()
    assert np.abs(median - season).max() < 1.5, median
    width = (q[..., QUANTILES.index(0.9)] - q[..., QUANTILES.index(0.1)]).mean().item()
    assert 1.0 < width < 5.0, width  # the noise's 80% interval is 2.56 wide


def test_histories_are_cut_short_as_the_service_would_send_them() -> None:
    """``--truncate``: a row keeps the last k steps of its history with its future right behind, zeros after."""
    from training.tasks.forecast.windows import truncate_histories

    x = torch.arange(2 * 10 * 2, dtype=torch.float32).view(2, 10, 2)
    lengths = torch.tensor([10, 7])
    x[1, 7:] = 0.0  # right padding
    cut, new = truncate_histories(x, lengths, 3, 1.0, np.random.default_rng(1))
    for i in range(2):
        hist, keep = int(lengths[i]) - 3, int(new[i]) - 3
        assert 1 <= keep <= hist
        assert torch.equal(cut[i, : keep + 3], x[i, hist - keep : hist + 3])
        assert (cut[i, keep + 3 :] == 0).all()
    same, same_len = truncate_histories(x, lengths, 3, 0.0, np.random.default_rng(1))
    assert torch.equal(same, x) and torch.equal(same_len, lengths)


def test_batches_are_drawn_in_proportion_to_the_windows_weights() -> None:
    """``--sampling weighted``: a window's share of the draws is its share of the weight (never drawn at 0);
    ``uniform`` draws every window alike."""
    from training.tasks.forecast.train import draw_rows

    weights = np.array([0.0, 1.0, 3.0, 0.0, 6.0], np.float32)
    rows = draw_rows(weights, 200_000, np.random.default_rng(0))
    share = np.bincount(rows, minlength=5) / len(rows)
    assert np.abs(share - weights / weights.sum()).max() < 0.01, share
    assert share[0] == 0 and share[3] == 0
    flat = np.bincount(draw_rows(weights, 100_000, np.random.default_rng(0), weighted=False), minlength=5)
    assert np.abs(flat / flat.sum() - 0.2).max() < 0.01, flat


def test_interval_weights_weigh_the_interval_not_the_median() -> None:
    """``--width-recency``: the interval's quantiles weigh ``widths`` in each row, the median 1; ``widths`` of 1
    change nothing; the weights keep the batches' mean weight and fall with a window's age."""
    from training.tasks.forecast.train import interval_weights

    model = _model(2, "quantile").train()
    cal = Calendar("Q")
    rng = np.random.default_rng(2)
    rows = [build_row(FC, cal, rng.uniform(50, 150, 12).astype(np.float32), 0, None) for _ in range(4)]
    x = torch.from_numpy(np.stack(rows))
    lengths = torch.full((4,), rows[0].shape[0])
    target = torch.from_numpy(rng.uniform(50, 150, (4, FC.horizon)).astype(np.float32))

    def loss(**kw: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout in each call
        with torch.no_grad():
            return model.loss(x, lengths, target, **kw)

    plain = loss()
    assert plain.shape == (4, FC.horizon, len(QUANTILES))
    assert torch.equal(plain, loss(widths=torch.ones(4)))
    weighted = loss(widths=torch.tensor([0.0, 0.5, 2.0, 3.0]))
    mid = QUANTILES.index(0.5)
    assert torch.equal(weighted[..., mid], plain[..., mid])
    assert torch.allclose(weighted[1, :, :mid], 0.5 * plain[1, :, :mid])
    assert torch.allclose(weighted[3, :, mid + 1 :], 3.0 * plain[3, :, mid + 1 :])
    assert float(weighted[0, :, :mid].abs().max()) == 0.0
    age = np.array([0, 10, 20, 40], np.float32)
    weight = np.array([1.0, 0.5, 0.25, 0.0625], np.float32)
    iw = interval_weights(age, weight, 10.0, 0.5)
    assert np.isclose((iw * weight).sum(), weight.sum()) and iw[0] > iw[1] > iw[2] > iw[3]
    assert (interval_weights(age, weight, 10.0, 0.0) == 1).all()


def test_the_interval_scale_moves_every_quantile_but_the_median() -> None:
    """``--calibrate``'s factor: the steps away from the median scaled, the median kept, the grid never crossing."""
    torch.manual_seed(0)
    model = _model(2, "quantile")
    x = torch.from_numpy(build_row(FC, Calendar("Q"), np.linspace(10, 20, 9, dtype=np.float32), 0, None)[None])
    lengths = torch.tensor([x.shape[1]])
    with torch.no_grad():
        plain = model(x, lengths)
        model.interval_scale = 0.7
        narrow = model(x, lengths)
    mid = QUANTILES.index(0.5)
    assert torch.allclose(narrow[..., mid], plain[..., mid])
    spread = plain - plain[..., mid : mid + 1]
    assert torch.allclose(narrow - narrow[..., mid : mid + 1], 0.7 * spread, atol=1e-5)
    assert (np.diff(narrow.numpy(), axis=-1) >= 0).all()
