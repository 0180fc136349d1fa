"""Locust load test for a running forecaster: ``make loadtest-forecast`` (headless, 127.0.0.1 only, bounded in time).

Each request is ``/forecast`` for real series: a series' history without its last ``horizon`` points, the known
covariates (``dynamic_feat``) over history + horizon when the model has any, asking for the mean and the
0.1/0.5/0.9 quantiles. The series come from the data the served model was trained on (its ``/metadata``) or from
``LOADTEST_DATA``.

Environment:
  LOADTEST_DATA          an fpp3 set name (tourism, aus_retail, vic_elec) or a long CSV file (the training's format)
  LOADTEST_SERIES_PER_REQUEST  series per request (default 1)
  LOADTEST_STEPS, LOADTEST_STEP_USERS, LOADTEST_STEP_SECONDS: the bounded ramp (loadtest/locust_common.py)
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest.locust_common import StepRamp, served_metadata  # noqa: F401  (Locust finds the shape here)

PER_REQUEST = int(os.environ.get("LOADTEST_SERIES_PER_REQUEST", 1))
BODIES: list[bytes] = []  # built at test start, once the served model's /metadata is known
QUANTILES = ["0.1", "0.5", "0.9"]


def instances(meta: dict, data: str) -> list[dict]:
    """One ``/forecast`` instance per series of ``data`` longer than the model's horizon."""
    from training.tasks.forecast.data import load_panel  # locust runs in the project's venv

    h, covariates = meta["horizon"], meta["covariates"]
    panel = load_panel(data, covariates=covariates or None)
    if covariates and not panel.covariates:
        raise ValueError(f"the model needs covariates {covariates}; {data} has none")
    out = []
    for i, y in enumerate(panel.values):
        n = min(len(y) - h, meta["max_length"])  # the history sent: from the series' start (its stamp holds)
        if n < 1:
            continue
        inst: dict = {"start": panel.starts[i], "target": [float(v) if np.isfinite(v) else None for v in y[:n]]}
        if covariates:
            inst["dynamic_feat"] = [panel.covariates[i][: n + h, j].tolist() for j in range(len(covariates))]
        out.append(inst)
    if not out:
        raise ValueError(f"{data}: no series longer than the horizon ({h})")
    return out


@events.test_start.add_listener
def check_target(environment, **_: object) -> None:  # noqa: ANN001
    meta = served_metadata(environment.host)
    if meta.get("task") != "forecast":
        raise SystemExit(f"{environment.host} serves task {meta.get('task')!r}, not forecast")
    data = os.environ.get("LOADTEST_DATA") or (meta.get("training_data") or {}).get("data")
    if not data:
        raise SystemExit("set LOADTEST_DATA: the served model does not say what it was trained on")
    try:
        insts = instances(meta, data)
    except (ValueError, OSError) as e:
        raise SystemExit(str(e)) from None
    config = {"quantiles": QUANTILES, "output_types": ["mean", "quantiles"]}
    BODIES[:] = [
        json.dumps({"instances": insts[i : i + PER_REQUEST], "configuration": config}).encode()
        for i in range(0, len(insts) - PER_REQUEST + 1, PER_REQUEST)
    ]
    print(f"loadtest-forecast: {data}, {len(insts)} series, {len(BODIES)} request bodies of {PER_REQUEST}")


class ForecastUser(FastHttpUser):
    """Closed loop: each user sends its next request when the previous answer arrives."""

    @task
    def forecast(self) -> None:
        with self.client.post(
            "/forecast",
            data=random.choice(BODIES),
            headers={"content-type": "application/json"},
            catch_response=True,
            name="/forecast",
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.json()["predictions"]) != PER_REQUEST:
                r.failure("wrong number of predictions")
