"""The forecaster's request and response shapes (SageMaker DeepAR / GluonTS style), and their checks.

Request: ``{"instances": [{"start": "1998 Q1", "target": [...], "dynamic_feat": [[...], ...]}], "configuration":
{"prediction_length": h, "quantiles": ["0.1", "0.5", "0.9"], "output_types": ["mean", "quantiles", "samples"],
"num_samples": 100}}``. ``target`` values may be ``null`` or ``"NaN"`` (missing: masked by the model);
``dynamic_feat`` holds one list per covariate the model was trained with, each ``len(target) +
prediction_length`` long (known in the future). Every problem is a ``Rejected`` (400 unless said) naming the
field and the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.artifact import Forecasting
from service.core.guard import Rejected
from service.tasks.forecast.calendar import Calendar, TimeError

OUTPUT_TYPES = ("mean", "quantiles", "samples")
DEFAULT_QUANTILES = ("0.1", "0.5", "0.9")
MAX_SAMPLES = 1000


@dataclass
class Series:
    target: np.ndarray  # float32 [T], NaN where missing
    first_step: int  # the step of target[0] on the model's grid
    covariates: np.ndarray | None  # float32 [T + H, C] (the model's horizon; zeros past what was sent)


@dataclass
class Configuration:
    prediction_length: int
    quantiles: list[str]  # as the request wrote them (the response's keys)
    levels: list[float]
    output_types: list[str]
    num_samples: int


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def values(field: str, raw: Any, max_length: int, allow_missing: bool = True) -> np.ndarray:
    if not isinstance(raw, list):
        raise Rejected(f"{field}: must be a list of numbers, got {type(raw).__name__}", "bad_type")
    if not raw:
        raise Rejected(f"{field}: empty; need at least 1 value", "empty")
    if len(raw) > max_length:
        raise Rejected(f"{field}: {len(raw)} values, at most {max_length} (max_length)", "too_long")
    out = np.empty(len(raw), np.float64)
    for t, v in enumerate(raw):
        if _is_number(v):
            out[t] = v
        elif allow_missing and (v is None or v == "NaN"):
            out[t] = np.nan
        else:
            raise Rejected(
                f"{field}[{t}]: {v!r} is not a number"
                + (' (null or "NaN" marks a missing value)' if allow_missing else ""),
                "not_a_number",
            )
    finite = np.isfinite(out)
    if (np.isinf(out) | (finite & (np.abs(out) > 1e30))).any():
        t = int(np.flatnonzero(np.isinf(out) | (finite & (np.abs(out) > 1e30)))[0])
        raise Rejected(f"{field}[{t}]: {raw[t]!r} is beyond the range the model reads (|x| <= 1e30)", "non_finite")
    return out.astype(np.float32)


def parse_instances(
    body: Any, fc: Forecasting, calendar: Calendar, max_series: int, max_length: int, max_points: int, horizon: int
) -> list[Series]:
    """The request's ``instances``; ``horizon``: the steps ahead the covariates must cover."""
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise Rejected("instances: required, a list of 1 or more series objects", "bad_request")
    if len(instances) > max_series:
        raise Rejected(f"instances: {len(instances)} series, at most {max_series} per request", "too_many_series")
    total = sum(
        len(i.get("target") or []) for i in instances if isinstance(i, dict) and isinstance(i.get("target"), list)
    )
    if total > max_points:
        raise Rejected(
            f"instances: {total} target values in all, at most {max_points} per request", "too_many_steps", 413
        )
    out = []
    for k, inst in enumerate(instances):
        where = f"instances[{k}]"
        if not isinstance(inst, dict):
            raise Rejected(f"{where}: must be an object with 'target' (and 'start')", "bad_type")
        unknown = sorted(set(inst) - {"id", "start", "target", "dynamic_feat", "cat"})
        if unknown:
            raise Rejected(f"{where}.{unknown[0]}: unknown field (start, target, dynamic_feat)", "bad_request")
        if "target" not in inst:
            raise Rejected(f"{where}.target: required", "bad_request")
        target = values(f"{where}.target", inst["target"], max_length)
        if not np.isfinite(target).any():
            raise Rejected(f"{where}.target: no observed value (all missing)", "empty")
        out.append(
            Series(
                target,
                _first_step(where, inst.get("start"), calendar),
                _covariates(where, inst, fc, len(target), horizon),
            )
        )
    return out


def _first_step(where: str, start: Any, calendar: Calendar) -> int:
    if start is None:
        if calendar.freq == "step":
            return 0
        raise Rejected(
            f"{where}.start: required (the time of target[0], like the training data's stamps)", "bad_request"
        )
    if not isinstance(start, (str, int)) or isinstance(start, bool):
        raise Rejected(f"{where}.start: must be a string time stamp, got {type(start).__name__}", "bad_type")
    try:
        return calendar.step_index(str(start))
    except TimeError as e:
        raise Rejected(f"{where}.start: {e} (the model's frequency is {calendar.freq})", "bad_time") from None


def _covariates(where: str, inst: dict, fc: Forecasting, n: int, horizon: int) -> np.ndarray | None:
    c = len(fc.covariates)
    feats = inst.get("dynamic_feat")
    if not c:
        if feats:
            raise Rejected(f"{where}.dynamic_feat: this model takes no covariates", "bad_request")
        return None
    if not isinstance(feats, list) or len(feats) != c:
        got = len(feats) if isinstance(feats, list) else "none"
        raise Rejected(
            f"{where}.dynamic_feat: {got} lists, the model needs {c} ({', '.join(fc.covariates)})", "feature_count"
        )
    need = n + horizon
    out = np.zeros((n + fc.horizon, c), np.float32)
    for j, f in enumerate(feats):
        arr = values(f"{where}.dynamic_feat[{j}]", f, need + fc.horizon, allow_missing=False)
        if len(arr) < need:
            raise Rejected(
                f"{where}.dynamic_feat[{j}]: {len(arr)} values, needs {need} "
                f"(len(target) {n} + prediction_length {horizon})",
                "feature_length",
            )
        out[: min(len(arr), len(out)), j] = arr[: len(out)]
    return out


def parse_configuration(body: Any, fc: Forecasting) -> Configuration:
    conf = body.get("configuration", {}) if isinstance(body, dict) else {}
    if not isinstance(conf, dict):
        raise Rejected("configuration: must be an object", "bad_type")
    unknown = sorted(set(conf) - {"prediction_length", "quantiles", "output_types", "num_samples"})
    if unknown:
        raise Rejected(
            f"configuration.{unknown[0]}: unknown field (prediction_length, quantiles, output_types, num_samples)",
            "bad_request",
        )
    h = conf.get("prediction_length", fc.horizon)
    if type(h) is not int or not 1 <= h <= fc.horizon:
        raise Rejected(
            f"configuration.prediction_length: {h!r}; an integer 1..{fc.horizon} (the trained horizon)", "bad_horizon"
        )
    quantiles = conf.get("quantiles", list(DEFAULT_QUANTILES))
    lo, hi = fc.quantiles[0], fc.quantiles[-1]
    if not isinstance(quantiles, list) or not quantiles or len(quantiles) > 32:
        raise Rejected('configuration.quantiles: a list of 1..32 levels like "0.1"', "bad_quantile")
    levels = []
    for k, q in enumerate(quantiles):
        try:
            level = float(q) if not isinstance(q, bool) else math.nan
        except (TypeError, ValueError):
            level = math.nan
        if not lo <= level <= hi:
            raise Rejected(
                f"configuration.quantiles[{k}]: {q!r}; levels must lie in [{lo}, {hi}] (the trained grid)",
                "bad_quantile",
            )
        levels.append(level)
    types = conf.get("output_types", ["mean", "quantiles"])
    if not isinstance(types, list) or not types or any(t not in OUTPUT_TYPES for t in types):
        raise Rejected(
            f"configuration.output_types: {types!r}; a non-empty list of {list(OUTPUT_TYPES)}", "bad_request"
        )
    num = conf.get("num_samples", 100)
    if type(num) is not int or not 1 <= num <= MAX_SAMPLES:
        raise Rejected(f"configuration.num_samples: {num!r}; an integer 1..{MAX_SAMPLES}", "bad_request")
    return Configuration(h, [str(q) for q in quantiles], levels, list(dict.fromkeys(types)), num)


def parse_level(body: Any, fc: Forecasting) -> float:
    """``/anomalies``' ``configuration.level``: the central interval's coverage (default the widest trained)."""
    conf = body.get("configuration", {}) if isinstance(body, dict) else {}
    if not isinstance(conf, dict):
        raise Rejected("configuration: must be an object", "bad_type")
    widest = round(fc.quantiles[-1] - fc.quantiles[0], 6)
    level = conf.get("level", widest)
    if type(level) not in (int, float) or not 0 < level <= widest:
        raise Rejected(
            f"configuration.level: {level!r}; a number in (0, {widest}] (the widest trained interval)", "bad_level"
        )
    unknown = sorted(set(conf) - {"level"})
    if unknown:
        raise Rejected(f"configuration.{unknown[0]}: unknown field (level)", "bad_request")
    return float(level)
