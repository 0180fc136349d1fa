"""Forecasting: a global LSTM with a quantile head over many series (model.py, data.py, train.py, evaluate.py,
export.py). Served by ``service/tasks/forecast``."""

from __future__ import annotations

from service.core.artifact import ENTRIES
from training.task import Command, Task

TASK = Task(
    name="forecast",
    commands=(
        Command(
            "forecast",
            "train a global probabilistic forecaster (many series, quantiles)",
            f"{__name__}.train:add_forecast_args",
            f"{__name__}.train:train_forecast",
        ),
    ),
    export=f"{__name__}.export:export_cli",
    entry=ENTRIES["forecast"],
)
