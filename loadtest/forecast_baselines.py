"""Statistical baselines for ``make eval-forecast``, run in their own venv (bench/venvs/statsforecast: statsforecast
2.1.1 needs pandas, scipy and numba, which the project's venv does not carry; ``loadtest.eval_forecast`` makes it).

``python loadtest/forecast_baselines.py tourism OUT.json``: the same panel and the same held-out split as the
model (``training.tasks.forecast.data``: numpy and the csv module only, so it imports here), each baseline's mean
and 80% interval for every series, written as JSON; ``loadtest.eval_forecast`` scores them with the model's own
scoring code (``training.tasks.forecast.evaluate``), so both sides are measured one way.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from statsforecast import StatsForecast  # noqa: E402
from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, SeasonalNaive  # noqa: E402

from training.tasks.forecast.data import PRESETS, load_panel, split  # noqa: E402


def main(name: str, out: str, arima: bool) -> None:
    panel = load_panel(name)
    h, m = PRESETS[name]["h"], panel.calendar.period
    train, _ = split(panel, h)
    frames = []
    for i, y in enumerate(train.values):
        frames.append(pd.DataFrame({"unique_id": i, "ds": np.arange(len(y)), "y": y.astype(np.float64)}))
    df = pd.concat(frames, ignore_index=True)
    models = [SeasonalNaive(season_length=m), AutoETS(season_length=m), AutoTheta(season_length=m)]
    if arima:
        models.append(AutoARIMA(season_length=m))
    result = {}
    for model in models:
        t0 = time.perf_counter()
        fc = StatsForecast(models=[model], freq=1, n_jobs=2).forecast(df=df, h=h, level=[80])
        col = str(model)
        fc = fc.sort_values(["unique_id", "ds"])
        shape = (len(train.values), h)
        result[col] = {
            "mean": fc[col].to_numpy().reshape(shape).tolist(),
            "lo80": fc[f"{col}-lo-80"].to_numpy().reshape(shape).tolist(),
            "hi80": fc[f"{col}-hi-80"].to_numpy().reshape(shape).tolist(),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name} {col}: {result[col]['seconds']} s", file=sys.stderr, flush=True)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], arima="--arima" in sys.argv)
