"""The forecaster's ``/docs.json``: ``POST /forecast``, ``/anomalies`` and ``/actuals`` with their limits,
``GET /metadata`` and the V2 routes. Helpers: ``service.core.openapi``; the checks:
``service.tasks.forecast.schema``."""

from __future__ import annotations

from typing import Any

from service.core.artifact import Forecasting
from service.core.openapi import GUARD_RESPONSES, RoutesPatch, errors, ok, v2_paths
from service.tasks.forecast.schema import DEFAULT_QUANTILES, MAX_SAMPLES, OUTPUT_TYPES

V2_SUMMARY = "Forecast series: x FP32 [N, T], lengths INT64 [N, 1], start BYTES [N] -> quantiles FP32 [N, H, Q]"
V2_INPUTS = (
    "x FP32 [N, T] (each series padded to T; NaN marks a missing value), lengths INT64 [N, 1], start BYTES [N] "
    "(the time of each series' first value), dynamic_feat FP32 [N, T + H, C] when the model has covariates"
)


def instances(limits: dict[str, int], fc: Forecasting, with_id: bool) -> dict[str, Any]:
    """The ``instances`` list every route takes (``schema.parse_instances``)."""
    covariates = fc.covariates
    value = {"oneOf": [{"type": "number"}, {"type": "null"}, {"type": "string", "enum": ["NaN"]}]}
    series: dict[str, Any] = {
        "type": "object",
        "required": ["target", "id"] if with_id else ["target"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1, "description": "names the series (required by /actuals)"},
            "start": {
                "type": "string",
                "description": f"the time of target[0], like the training data's stamps (frequency {fc.frequency}); "
                "optional for a model without calendar",
            },
            "target": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits["max_length"],
                "items": value,
                "description": 'observed values, oldest first; null or "NaN" marks a missing value; |x| <= 1e30',
            },
        },
    }
    if covariates:
        series["properties"]["dynamic_feat"] = {
            "type": "array",
            "minItems": len(covariates),
            "maxItems": len(covariates),
            "items": {"type": "array", "items": {"type": "number"}},
            "description": f"one list per covariate ({', '.join(covariates)}), each len(target) + prediction_length "
            "long (known in the future)",
        }
        series["required"].append("dynamic_feat")
    return {"type": "array", "minItems": 1, "maxItems": limits["max_series"], "items": series}


def forecast_paths(limits: dict[str, int], fc: Forecasting) -> dict[str, Any]:
    """The forecaster's JSON routes (``service.tasks.forecast.app``)."""
    lo, hi = fc.quantiles[0], fc.quantiles[-1]
    widest = round(hi - lo, 6)
    configuration = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "prediction_length": {"type": "integer", "minimum": 1, "maximum": fc.horizon, "default": fc.horizon},
            "quantiles": {
                "type": "array",
                "minItems": 1,
                "maxItems": 32,
                "items": {"type": "string", "pattern": r"^[0-9.eE+-]+$"},
                "default": list(DEFAULT_QUANTILES),
                "description": f'levels like "0.1", each in [{lo}, {hi}] (the trained grid, interpolated between)',
            },
            "output_types": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(OUTPUT_TYPES)},
                "default": ["mean", "quantiles"],
            },
            "num_samples": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES, "default": 100},
        },
    }
    numbers = {"type": "array", "items": {"type": "number"}}
    prediction = {
        "type": "object",
        "properties": {
            "mean": numbers,
            "quantiles": {"type": "object", "additionalProperties": numbers},
            "samples": {"type": "array", "items": numbers},
        },
    }
    forecast_ok = {
        "type": "object",
        "required": ["predictions", "model_version"],
        "properties": {"predictions": {"type": "array", "items": prediction}, "model_version": {"type": "string"}},
    }
    scored = {
        "type": "object",
        "required": ["scores", "ranges", "top"],
        "properties": {
            "scores": {"type": "array", "items": {"type": "number", "nullable": True}},
            "ranges": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "top": {"type": "integer", "nullable": True},
        },
    }
    anomalies_ok = {
        "type": "object",
        "required": ["anomalies", "level", "threshold", "unscored_first", "model_version"],
        "properties": {
            "anomalies": {"type": "array", "items": scored},
            "level": {"type": "number"},
            "threshold": {"type": "number"},
            "unscored_first": {"type": "integer"},
            "model_version": {"type": "string"},
        },
    }
    model_errors = {
        "400": "a field outside its limit, or one the route does not take (named)",
        **GUARD_RESPONSES,
        "413": f"more than {limits['max_points']} target values in a request, or a body over SEQSERVE_MAX_BODY_BYTES",
        "422": "the model's output is not finite for a series (scale the series)",
        "503": "the model service is not ready",
        "504": "the deadline passed before the model ran the request",
    }

    def post(summary: str, schema: dict[str, Any], answer: dict[str, Any], codes: dict[str, str]) -> dict[str, Any]:
        body = {"application/json": {"schema": schema}}
        request = {"required": True, "content": body}
        answers = {"200": ok(answer), **errors(codes)}
        return {"post": {"summary": summary, "tags": ["Service APIs"], "requestBody": request, "responses": answers}}

    level = {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": widest, "default": widest}
    return {
        "/forecast": post(
            "Forecast each series prediction_length steps ahead: mean, quantiles, samples",
            {
                "type": "object",
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {"instances": instances(limits, fc, False), "configuration": configuration},
            },
            forecast_ok,
            model_errors,
        ),  # fmt: skip
        "/anomalies": post(
            "Score every observed point against its one-step-ahead interval (score > 1: outside)",
            {
                "type": "object",
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {
                    "instances": instances(limits, fc, False),
                    "configuration": {"type": "object", "additionalProperties": False, "properties": {"level": level}},
                },
            },
            anomalies_ok,
            {**model_errors, "413": f"more than {limits['max_anomaly_points']} target values in one request"},
        ),  # fmt: skip
        "/actuals": post(
            "Store observed series (each with its id) for retraining",
            {
                "type": "object",
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {"instances": instances(limits, fc, True)},
            },
            {"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer"}}},
            {k: v for k, v in model_errors.items() if k not in ("422", "504")}
            | {"503": "the store refused the write (disk full, read-only); nothing was stored"},
        ),  # fmt: skip
        "/metadata": {
            "get": {
                "summary": "The served forecaster: horizon, frequency, quantiles, covariates, limits, provider in use",
                "tags": ["Service APIs"],
                "responses": {"200": ok({"type": "object"}), **errors({"503": "the model service is not ready"})},
            }
        },
    }


class ForecastOpenAPIPatch(RoutesPatch):
    """``/docs.json`` of the forecaster: its routes, limits and the V2 routes."""

    def __init__(self, app, limits: dict[str, int], fc: Forecasting, model_name: str) -> None:  # noqa: ANN001
        paths = {**forecast_paths(limits, fc), **v2_paths(model_name, V2_SUMMARY, V2_INPUTS)}
        super().__init__(app, limits, "seqserve (forecasting)", DESCRIPTION, paths)


DESCRIPTION = (
    "Probabilistic forecasting with an RNN (ONNX Runtime): many series per request, each its own length, batched "
    "across requests; quantiles, mean and samples, anomaly scores against the forecast intervals. Limits: see "
    "x-seqserve-limits and GET /metadata; a request outside them is a 400 naming the field."
)
