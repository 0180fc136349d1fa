"""The classifier's BentoML services; the entry ``bentoml serve service.service:SeqServe --host 127.0.0.1 --port 3000``
(``service/service.py`` re-exports them).

Two services, one topology on CPU and GPU:

* ``SeqServe`` (the API service, ``SEQSERVE_WORKERS`` processes, no model): HTTP, per-request validation
  (``service.tasks.classify.schema``), the response JSON. Routes:

  - ``POST /predict``: ``{"sequences": [[[f x F] x T1], ...]}`` -> one object per sequence (adaptive batching);
  - ``POST /predict_nobatch``: the same, one request per model call (for comparison);
  - ``POST /feedback``: ``{"items": [{"sequence": [[f x F] x T], "label": "..."}, ...]}`` -> stored durably for
    retraining (``service.tasks.classify.feedback``) before the 2xx;
  - ``GET /metadata``: model name, version, classes, limits, provider in use (and why, if not CUDA);
  - ``GET /docs``: every route, self-hosted (``service.core.docs``; ``/docs.json`` the document); BentoML's
    ``/healthz /livez /readyz /metrics``.

* ``SeqModel`` (the model service, ``SEQSERVE_MODEL_WORKERS`` processes, one per GPU): owns the ONNX Runtime
  session (checked against the artifact's reference outputs at load) and BentoML's adaptive batcher. Every API
  worker calls it over a local socket (``bentoml.depends``; pickled float32 arrays), so one batcher sees the
  sequences of all API workers: on a GPU, batches of the whole load instead of load / workers. An API worker
  sends concurrent requests in one call (``service.core.batching.coalesce``).

Settings: ``service.core.settings`` (read once, here). The artifact's metadata is read when this module is imported
because the request type declares its limits (feature_dim, max_length) in the OpenAPI document; the model
session is opened by the model service's workers only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core import stages
from service.core.admin import admin_routes
from service.core.app import (
    api_service_config,
    boot,
    call_again,
    forbid_unknown_fields,
    install_guard,
    model_info,
    model_service_config,
    quiet_client_errors,
    refuse,
    session_info,
    start_process,
    tune_gc,
)
from service.core.artifact import Artifact
from service.core.batching import hop
from service.core.batching.coalesce import Coalescer
from service.core.batching.hop import Answer, Pack, request_items
from service.core.bentoml_patches import bound_metric_paths, cap_learned_wait
from service.core.guard import DeadlinePassed, Rejected
from service.core.lifecycle import FollowsChampion, ModelSlot
from service.core.metrics import DEADLINE_DROPPED
from service.core.protocol.v2 import route_template, v2_routes
from service.core.validate import first_non_finite, non_finite_message
from service.tasks.classify.engine import Engine
from service.tasks.classify.feedback import FeedbackStore, StoreFull, StoreUnavailable, open_store
from service.tasks.classify.metrics import (
    FEEDBACK_FULL,
    FEEDBACK_ITEMS,
    FEEDBACK_UNAVAILABLE,
    REJECTED,
    RejectionCounter,
    ServiceMetrics,
)
from service.tasks.classify.openapi import OpenAPIPatch
from service.tasks.classify.schema import (
    MAX_SEQUENCES,
    FeedbackAck,
    Prediction,
    feedback_type,
    predictions_json,
    sequences_type,
)
from service.tasks.classify.spec import swap_problem
from service.tasks.classify.v2 import ClassifyV2

log = logging.getLogger("seqserve")

BOOT = boot("classify")  # settings and the artifact to serve (service/core/app.py)
SETTINGS, ARTIFACT = BOOT.settings, BOOT.artifact
MAX_LENGTH = SETTINGS.accepted_max_length(ARTIFACT.meta.max_length)
MAX_STEPS = SETTINGS.max_request_steps
Sequences = sequences_type(ARTIFACT.meta.feature_dim, MAX_LENGTH, MAX_SEQUENCES, MAX_STEPS)
FeedbackItems = feedback_type(ARTIFACT.meta.feature_dim, MAX_LENGTH, ARTIFACT.meta.classes, MAX_SEQUENCES, MAX_STEPS)
JSON_PATHS = ("/predict", "/predict_nobatch", "/feedback", "/admin/retrain", "/admin/alert", "/admin/reload")


@bentoml.service(
    **model_service_config("seqserve-model", SETTINGS, SETTINGS.model_workers, timeout_s=60),
    tracing={"excluded_urls": ["/"]},  # no OpenTelemetry spans on the internal hop (every URL holds "/")
)
class SeqModel(FollowsChampion):
    """Owns the session and the adaptive batcher. Items: one ``Pack`` (``service.core.batching.hop``) per API
    worker call (its sequences as one array), answered by one ``Answer``; a sequence whose deadline has passed is
    not computed. The model slot and the champion following: ``service.core.lifecycle``."""

    task = "classify"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        cap_learned_wait(SETTINGS.batch_wait_ms / 1000)  # see service/core/bentoml_patches.py
        self._start_slot(ARTIFACT, BOOT.source, SETTINGS)

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        engine = Engine(artifact, SETTINGS)  # opens the session and runs the load-time check
        return ModelSlot(engine, ServiceMetrics(engine, SETTINGS.device, SETTINGS.drift_window_steps), source)

    def _check_compatible(self, artifact: Artifact) -> None:
        problem = swap_problem(self.slot.engine.artifact.meta, artifact.meta)
        if problem:
            raise ValueError(problem)

    @bentoml.api
    def reload(self) -> dict:
        """Look at the champion pointer now (``POST /admin/reload``)."""
        outcome = self.check_champion()
        return {"outcome": outcome, "model_version": self.slot.version}

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, packs: list[Any]) -> list[Any]:
        return self._run(packs)

    @bentoml.api
    def infer_nobatch(self, packs: list[Any]) -> list[Any]:
        return self._run(packs)

    @bentoml.api
    def info(self) -> dict:
        """What /metadata reports about the loaded model and its session."""
        slot = self.slot  # read once, like a batch
        return {
            **session_info(slot, SETTINGS),
            "classes": slot.engine.classes,
            "model_workers": SETTINGS.model_workers,
        }

    def _run(self, packs: list[Pack]) -> list[Answer]:
        started = time.perf_counter()
        slot = self.slot  # read once: a swap during this batch does not mix two models in it
        packs = [Pack(*p) for p in packs]  # they arrive as plain tuples
        batch = hop.merge(packs)
        computed = batch.deadline > started  # past their deadline while queued: dropped, not computed
        n_live = int(computed.sum())
        if n_live < batch.count:
            DEADLINE_DROPPED.labels("classify").inc(batch.count - n_live)
        probs = np.zeros((batch.count, len(slot.engine.classes)), np.float32)
        attention = np.zeros(len(batch.x), np.float32)
        if n_live:
            seqs = batch.sequences()
            live = np.flatnonzero(computed)
            live_seqs = seqs if n_live == batch.count else [seqs[i] for i in live]
            try:
                p, att, stats = slot.engine.infer(live_seqs)
            except Exception:
                slot.metrics.failed(n_live)
                raise
            probs[live] = p
            ends = np.cumsum(batch.lengths)
            for i, a in zip(live.tolist(), att):
                attention[ends[i] - len(a) : ends[i]] = a
            slot.metrics.observe(live_seqs, stats, p, started, batch.received[live].tolist())
            slot.metrics.batch_sources(hop.sources(packs))
        answer = Answer(probs, attention, computed, slot.version, started, time.perf_counter())
        return [tuple(a) for a in hop.split(answer, packs)]


async def metadata(request: Request) -> JSONResponse:
    """``GET /metadata``: the artifact's contract and what the model service reports about its session."""
    meta = ARTIFACT.meta
    try:
        info = await model_info()
    except Rejected as e:  # the model service is starting or gone: 503
        return refuse(e)
    return JSONResponse(
        {
            "task": meta.task,
            "model_name": meta.model_name,
            "model_version": info["model_version"],
            "classes": info["classes"],
            "feature_dim": meta.feature_dim,
            "max_length": MAX_LENGTH,
            "max_sequences": MAX_SEQUENCES,
            "training_length_range": meta.training_length_range,
            "normalisation": meta.normalisation.mode,
            **{k: v for k, v in info.items() if k not in ("model_version", "classes")},
            "rnn": meta.rnn,
            "training_metrics": {
                k: meta.training_metrics.get(k) for k in ("test_accuracy", "test_macro_f1", "val_accuracy")
            },
        }
    )


routes = Starlette(
    routes=[
        Route("/metadata", metadata, methods=["GET"]),
        *admin_routes(SETTINGS.admin_token, SETTINGS.database, SETTINGS.worker_claim_s),
        *v2_routes(ClassifyV2(ARTIFACT.meta, MAX_LENGTH, MAX_SEQUENCES)),
    ]
)
# The response is written by predictions_json; the annotation documents its schema in /docs.json.
PredictionsDoc = Annotated[list[Prediction], ContentType("application/json")]


@bentoml.asgi_app(routes, path="/")
@bentoml.service(**api_service_config("seqserve", SETTINGS, timeout_s=60))
class SeqServe:
    """Variable-length sequence classification: validation and JSON here, the model in ``SeqModel``."""

    model = bentoml.depends(SeqModel)

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        self.classes: list[str] = ARTIFACT.meta.classes
        self.version: str = ARTIFACT.meta.model_version
        self.coalescer: Coalescer | None = None  # made on the first request (it needs the running loop)
        # The store opens here so that a data directory without the durability guarantees fails the start.
        self.feedback_store: FeedbackStore = open_store(
            SETTINGS.database, SETTINGS.feedback_holdout, SETTINGS.feedback_max_items
        )
        self._store_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="feedback")
        tune_gc()
        quiet_client_errors()
        bound_metric_paths(ROUTE_PATHS, route_template)  # bounded metric labels (service/core/guard.py)

    @bentoml.api
    async def predict(self, sequences: Sequences) -> PredictionsDoc:
        """Classify 1..64 sequences, each [T][F] numbers (T <= max_length, F = feature_dim); batched with
        other requests' sequences on the model service."""
        try:
            return self._respond(await self.infer_items(request_items(sequences)))
        except DeadlinePassed as e:
            return refuse(e)

    async def infer_items(self, items: list[Any]) -> list[Any]:
        """Sequences (as ``request_items``) through the model service's batcher: ``(probabilities, attention,
        version)`` each, in order. ``/predict`` and the V2 route (``service.tasks.classify.v2``) both come here,
        so they share batches.
        ``DeadlinePassed`` if the request's deadline passed before the model ran it."""
        stages.handled()
        if items and items[0][3] <= time.perf_counter():
            DEADLINE_DROPPED.labels("classify").inc(len(items))
            raise DeadlinePassed()
        if SETTINGS.api_in_flight == 0:
            results = await self._call("infer", items)
        else:
            if self.coalescer is None:
                infer = functools.partial(self._call, "infer")
                self.coalescer = Coalescer(infer, SETTINGS.api_in_flight, SETTINGS.max_batch_size)
            results = await self.coalescer.submit(items)
        results = _answered(results)
        self.version = results[0][2]  # the model that answered (after a swap, the new champion)
        stages.called(results[0][3])
        return results

    @bentoml.api(route="/predict_nobatch")
    async def predict_nobatch(self, sequences: Sequences) -> PredictionsDoc:
        """The same answers without adaptive batching: one request per model call (for comparison)."""
        try:
            stages.handled()
            results = _answered(await self._call("infer_nobatch", request_items(sequences)))
            stages.called(results[0][3])
            return self._respond(results)
        except DeadlinePassed as e:
            return refuse(e)

    @bentoml.api(route="/feedback")
    async def feedback(self, items: FeedbackItems) -> FeedbackAck:
        """Store 1..64 labelled sequences for retraining (each sequence as in /predict, each label one of the
        model's classes). The answer comes after the items are committed to disk."""
        add = functools.partial(self.feedback_store.add, items, self.version)
        try:
            stored = await asyncio.get_running_loop().run_in_executor(self._store_thread, add)
        except StoreFull as e:
            FEEDBACK_FULL.inc()
            return refuse(Rejected(str(e), "store_full", 507))
        except StoreUnavailable as e:  # nothing stored, nothing acknowledged
            FEEDBACK_UNAVAILABLE.inc()
            log.warning("seqserve: feedback not stored: %s", e)
            return refuse(Rejected(f"{e}; nothing was stored", "store_unavailable", 503))
        for item in stored:
            FEEDBACK_ITEMS.labels(item.split).inc()
        return FeedbackAck(
            accepted=len(stored),
            ids=[i.id for i in stored],
            splits=[i.split for i in stored],
            model_version=self.version,
        )

    async def _call(self, api: str, items: list[Any]) -> list[Any]:
        """Call the model service; once more if the connection broke (a keep-alive connection the model
        service closed as it was reused). Inference has no side effects, so a repeat is safe."""
        method = getattr(self.model.to_async, api)
        call = hop.pack(items)  # one array for the whole call (service/core/batching/hop.py)
        wire = [tuple(call)]  # plain tuples of arrays cross BentoML's pickle, never a project class
        sent = time.perf_counter()
        answer = (await call_again(lambda: method(wire)))[0]
        return hop.unpack(answer, call.lengths, sent, time.perf_counter())

    def _respond(self, results: list[Any]) -> Response:
        version = results[0][2]  # the model that answered (after a swap, the new champion)
        self.version = version
        bad = first_non_finite([r[0] for r in results])
        if bad is not None:  # never a null probability: the request is refused, naming the sequence
            refusal = Rejected(non_finite_message(f"sequences[{bad}]"), "non_finite_output", 422)
            return refuse(refusal, lambda reason: REJECTED.labels(reason, "json").inc())
        probs = np.stack([r[0] for r in results])
        body = predictions_json(self.classes, version, probs, [r[1] for r in results])
        return Response(body, media_type="application/json")


def _answered(results: list[Any]) -> list[Any]:
    """The model service's answers for one request; ``DeadlinePassed`` if it dropped any of them."""
    if any(r is None for r in results):
        raise DeadlinePassed()
    return results


ROUTE_PATHS = (*JSON_PATHS, "/metadata", "/docs")
forbid_unknown_fields(SeqServe)
SeqServe.add_asgi_middleware(RejectionCounter)
install_guard(
    SeqServe,
    SETTINGS,
    JSON_PATHS,
    on_reject=lambda reason, path: REJECTED.labels(reason, "v2" if path.startswith("/v2/") else "json").inc(),
)
SeqServe.add_asgi_middleware(
    OpenAPIPatch,
    limits={"max_length": MAX_LENGTH, "max_sequences": MAX_SEQUENCES, "max_request_steps": MAX_STEPS},
    model_name=ARTIFACT.meta.model_name,
)


__all__ = ["SeqServe", "SeqModel"]
