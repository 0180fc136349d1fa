"""The forecaster's BentoML services; the entry ``bentoml serve service.forecast_service:SeqForecast``.

* ``SeqForecast`` (the API service): HTTP, request checks (``service.tasks.forecast.schema``), model rows
  (``engine.build_row``), answers. Routes:

  - ``POST /forecast``: SageMaker DeepAR / GluonTS shape, many series per request, each its own history length ->
    ``{"predictions": [{"mean", "quantiles", "samples"}], "model_version"}``;
  - ``POST /actuals``: observed series (with an ``id``) kept durably for retraining
    (``service.tasks.forecast.actuals``);
  - ``POST /anomalies``: each observed point scored against its one-step predictive interval -> scores, flagged
    ranges, the level used (``service.tasks.forecast.anomalies``);
  - the Open Inference Protocol: ``/v2/models/<name>/infer`` with ``x`` FP32 ``[N, T]`` (NaN = missing) and
    ``lengths`` -> ``quantiles`` FP32 ``[N, H, Q]`` (``service.tasks.forecast.v2``);
  - ``GET /metadata``; BentoML's ``/healthz /livez /readyz /metrics``.

* ``ForecastModel`` (the model service): the ONNX Runtime session (checked at load against the artifact's
  reference rows), BentoML's adaptive batcher over the rows of all requests and API workers, the champion
  following and hot swap (``service.core.lifecycle``). Rows travel as one ``hop.Pack`` per call.

Settings: ``service.core.settings`` and ``SEQSERVE_FORECAST_MAX_SERIES`` (256 series per request),
``SEQSERVE_FORECAST_MAX_ANOMALY_POINTS`` (10000 points per /anomalies request).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.admin import reload_route
from service.core.app import (
    api_service_config,
    boot,
    call_again,
    install_guard,
    model_info,
    model_service_config,
    refuse,
    session_info,
    start_process,
    tune_gc,
)
from service.core.artifact import Artifact
from service.core.batching import hop
from service.core.batching.hop import Pack, request_items
from service.core.bentoml_patches import bound_metric_paths, cap_learned_wait
from service.core.guard import DeadlinePassed, Rejected, json_body
from service.core.lifecycle import FollowsChampion, ModelSlot
from service.core.metrics import DEADLINE_DROPPED
from service.core.protocol.v2 import route_template, v2_routes
from service.core.settings import env_int
from service.tasks.forecast import anomalies as anomaly
from service.tasks.forecast.actuals import ActualsStore
from service.tasks.forecast.calendar import Calendar
from service.tasks.forecast.engine import ForecastEngine, build_row, draw, interpolate, mean_of
from service.tasks.forecast.metrics import ACTUALS, REJECTED, ForecastMetrics, observe_anomalies, observe_request
from service.tasks.forecast.openapi import ForecastOpenAPIPatch
from service.tasks.forecast.schema import parse_configuration, parse_instances, parse_level
from service.tasks.forecast.spec import swap_problem
from service.tasks.forecast.v2 import ForecastV2

BOOT = boot("forecast")
SETTINGS, ARTIFACT = BOOT.settings, BOOT.artifact
FC = ARTIFACT.meta.forecasting
CALENDAR = Calendar(FC.frequency, FC.period)
MAX_LENGTH = SETTINGS.accepted_max_length(ARTIFACT.meta.max_length)
MAX_SERIES = env_int("SEQSERVE_FORECAST_MAX_SERIES", 256, minimum=1)
MAX_ANOMALY_POINTS = env_int("SEQSERVE_FORECAST_MAX_ANOMALY_POINTS", 10_000, minimum=1)
MAX_POINTS = SETTINGS.max_request_steps
JSON_PATHS = ("/forecast", "/anomalies", "/actuals", "/admin/reload")
STORE = ActualsStore(SETTINGS.data_dir)


@bentoml.service(
    **model_service_config("seqserve-forecast-model", SETTINGS, SETTINGS.model_workers, timeout_s=120),
    tracing={"excluded_urls": ["/"]},
)
class ForecastModel(FollowsChampion):
    """Owns the session and the adaptive batcher. Items: one ``Pack`` of model rows per API worker call,
    answered by ``(quantiles [n, H, Q], computed [n], version)``; rows past their deadline are not computed."""

    task = "forecast"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        cap_learned_wait(SETTINGS.batch_wait_ms / 1000)
        self._start_slot(ARTIFACT, BOOT.source, SETTINGS)

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        engine = ForecastEngine(artifact, SETTINGS)
        metrics = ForecastMetrics(engine.model_version, engine.provider, SETTINGS.device, artifact.meta.model_name)
        return ModelSlot(engine, metrics, source)

    def _check_compatible(self, artifact: Artifact) -> None:
        problem = swap_problem(self.slot.engine.artifact.meta, artifact.meta)
        if problem:
            raise ValueError(problem)

    @bentoml.api
    def reload(self) -> dict:
        return {"outcome": self.check_champion(), "model_version": self.slot.version}

    @bentoml.api
    def info(self) -> dict:
        return {**session_info(self.slot, SETTINGS), "model_workers": SETTINGS.model_workers}

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, packs: list[Any]) -> list[Any]:
        started = time.perf_counter()
        slot = self.slot  # read once: one model for the whole batch
        packs = [Pack(*p) for p in packs]
        batch = hop.merge(packs)
        computed = batch.deadline > started
        if not computed.all():
            DEADLINE_DROPPED.labels("forecast").inc(int((~computed).sum()))
        fc = slot.engine.fc
        q = np.zeros((batch.count, fc.horizon, len(fc.quantiles)), np.float32)
        live = np.flatnonzero(computed)
        if len(live):
            rows = batch.sequences()
            q[live], stats = slot.engine.infer([rows[i] for i in live])
            slot.metrics.batch(stats, batch.received[live].tolist())
        out, row = [], 0
        for p in packs:
            out.append((q[row : row + p.count], computed[row : row + p.count], slot.version))
            row += p.count
        return out


async def run_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """Model rows through the model service's batcher: quantiles ``[N, H, Q]`` and the model version."""
    items = request_items(rows)
    if items and items[0][3] <= time.perf_counter():
        DEADLINE_DROPPED.labels("forecast").inc(len(items))
        raise DeadlinePassed()
    infer = bentoml.get_current_service().model.to_async.infer
    wire = [tuple(hop.pack(items))]
    q, computed, version = (await call_again(lambda: infer(wire)))[0]
    if not np.asarray(computed).all():
        raise DeadlinePassed()
    return np.asarray(q), version


def _count(reason: str) -> None:
    REJECTED.labels(reason).inc()


async def _body(request: Request, fields: tuple[str, ...]) -> Any:
    """The JSON body; a field the route does not take is refused, naming it (one policy on every route)."""
    body = await json_body(request)
    unknown = sorted(set(body) - set(fields)) if isinstance(body, dict) else []
    if unknown:
        raise Rejected(f"{unknown[0]}: unknown field (the fields: {', '.join(fields)})", "unknown_field")
    return body


def _rounded(a: np.ndarray) -> list:
    return np.round(a.astype(np.float64), 6).tolist()


async def forecast(request: Request) -> Response:
    try:
        body = await _body(request, ("instances", "configuration"))
        conf = parse_configuration(body, FC)
        series = parse_instances(body, FC, CALENDAR, MAX_SERIES, MAX_LENGTH, MAX_POINTS, conf.prediction_length)
        q, version = await run_rows([build_row(FC, CALENDAR, s.target, s.first_step, s.covariates) for s in series])
    except Rejected as e:
        return refuse(e, _count)
    h = conf.prediction_length
    q = q[:, :h]
    if not np.isfinite(q).all():
        bad = int(np.flatnonzero(~np.isfinite(q).all(axis=(1, 2)))[0])
        return refuse(
            Rejected(
                f"instances[{bad}]: the model's output is not finite (scale the series)", "non_finite_output", 422
            ),
            _count,
        )
    observe_request("forecast", [s.target for s in series], h)
    rng = np.random.default_rng()
    predictions = []
    levels = interpolate(FC.quantiles, q, conf.levels) if "quantiles" in conf.output_types else None
    for i in range(len(series)):
        p: dict[str, Any] = {}
        if "mean" in conf.output_types:
            p["mean"] = _rounded(mean_of(FC.quantiles, q[i]))
        if levels is not None:
            p["quantiles"] = {name: _rounded(levels[i, :, k]) for k, name in enumerate(conf.quantiles)}
        if "samples" in conf.output_types:
            p["samples"] = _rounded(draw(FC.quantiles, q[i], conf.num_samples, rng))
        predictions.append(p)
    return JSONResponse({"predictions": predictions, "model_version": version})


async def anomalies(request: Request) -> Response:
    """Score every observed point of each series against its one-step interval (a row per point, batched)."""
    try:
        body = await _body(request, ("instances", "configuration"))
        level = parse_level(body, FC)
        series = parse_instances(body, FC, CALENDAR, MAX_SERIES, MAX_LENGTH, MAX_ANOMALY_POINTS, 1)
        skip = min(FC.period if FC.period > 1 else 2, 16)
        rows, spans = [], []
        for k, s in enumerate(series):
            if len(s.target) <= skip:
                raise Rejected(
                    f"instances[{k}].target: {len(s.target)} values; scoring needs more than {skip}", "too_short"
                )
            start = len(rows)
            for t in range(skip, len(s.target)):
                rows.append(build_row(FC, CALENDAR, s.target[:t], s.first_step, s.covariates))
            spans.append((start, len(rows)))
        q, version = await run_rows(rows)
    except Rejected as e:
        return refuse(e, _count)
    observe_request("anomalies", [s.target for s in series], 1)
    results = []
    for s, (a, b) in zip(series, spans, strict=True):
        score = anomaly.scores(s.target, q[a:b, 0], FC.quantiles, level, skip)
        observe_anomalies(score)
        finite = np.isfinite(score)
        results.append(
            {
                "scores": [round(float(v), 4) if ok else None for v, ok in zip(score, finite, strict=True)],
                "ranges": anomaly.ranges(score),
                "top": int(np.nanargmax(score)) if finite.any() else None,
            }
        )
    return JSONResponse(
        {"anomalies": results, "level": level, "threshold": 1.0, "unscored_first": skip, "model_version": version}
    )


async def actuals(request: Request) -> Response:
    """Store observed series for retraining (``service.tasks.forecast.actuals``), each with an ``id``."""
    try:
        body = await _body(request, ("instances",))
        series = parse_instances(body, FC, CALENDAR, MAX_SERIES, MAX_LENGTH, MAX_POINTS, 0)
        records = []
        for k, (inst, s) in enumerate(zip(body["instances"], series, strict=True)):
            if not isinstance(inst.get("id"), str) or not inst["id"]:
                raise Rejected(f"instances[{k}].id: required, a non-empty string naming the series", "bad_request")
            start = inst.get("start", 0)
            records.append(
                {"id": inst["id"], "start": start, "target": s.target, "dynamic_feat": inst.get("dynamic_feat")}
            )
        stored = await asyncio.to_thread(STORE.add, records, ARTIFACT.meta.model_version)
    except Rejected as e:
        return refuse(e, _count)
    except OSError as e:
        return refuse(Rejected(f"actuals not stored ({e}); nothing was stored", "store_unavailable", 503), _count)
    ACTUALS.inc(stored)
    return JSONResponse({"accepted": stored})


async def metadata(request: Request) -> JSONResponse:
    try:
        info = await model_info()
    except Rejected as e:
        return refuse(e)
    meta = ARTIFACT.meta
    return JSONResponse(
        {
            "task": "forecast",
            "model_name": meta.model_name,
            **info,
            "horizon": FC.horizon,
            "frequency": FC.frequency,
            "period": FC.period,
            "context": FC.context,
            "quantiles": FC.quantiles,
            "covariates": FC.covariates,
            "scaling": FC.scaling,
            "max_length": MAX_LENGTH,
            "max_series": MAX_SERIES,
            "max_anomaly_points": MAX_ANOMALY_POINTS,
            "training_length_range": meta.training_length_range,
            "rnn": meta.rnn,
            "training_data": {k: meta.extra.get("training_data", {}).get(k) for k in ("data", "series")},
            "training_metrics": {k: meta.training_metrics.get(k) for k in ("test", "steps", "train_seconds")},
        }
    )


routes = Starlette(
    routes=[
        Route("/forecast", forecast, methods=["POST"]),
        Route("/anomalies", anomalies, methods=["POST"]),
        Route("/actuals", actuals, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
        *v2_routes(ForecastV2(ARTIFACT.meta, CALENDAR, MAX_LENGTH, MAX_SERIES, run_rows)),
        reload_route(SETTINGS.admin_token),
    ]
)


@bentoml.asgi_app(routes, path="/")
@bentoml.service(**api_service_config("seqserve-forecast", SETTINGS, timeout_s=120))
class SeqForecast:
    """Forecasts and anomaly scores for many series: checks and answers here, the model in ``ForecastModel``."""

    model = bentoml.depends(ForecastModel)

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        bound_metric_paths((*JSON_PATHS, "/metadata"), route_template)


SeqForecast.add_asgi_middleware(
    ForecastOpenAPIPatch,
    limits={
        "max_series": MAX_SERIES,
        "max_length": MAX_LENGTH,
        "max_points": MAX_POINTS,
        "max_anomaly_points": MAX_ANOMALY_POINTS,
        "horizon": FC.horizon,
    },
    fc=FC,
    model_name=ARTIFACT.meta.model_name,
)
install_guard(
    SeqForecast,
    SETTINGS,
    JSON_PATHS,
    on_reject=lambda reason, path: _count(reason),
)

__all__ = ["SeqForecast", "ForecastModel"]
