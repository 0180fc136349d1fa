"""The classifier's BentoML services; the entry ``bentoml serve service.service:SeqServe --host 127.0.0.1 --port 3000``
(``service/service.py`` re-exports them).

Two services, one topology on CPU and GPU:

* ``SeqServe`` (the API service, ``SEQSERVE_WORKERS`` processes, no model): HTTP, per-request validation
  (``service.tasks.classify.schema``), the response JSON. Routes:

  - ``POST /predict``: ``{"sequences": [[[f x F] x T1], ...]}`` -> one object per sequence (adaptive batching);
    ``"model"`` (and ``"model_version"``) pick a model of the server's repository (below);
  - ``POST /predict_nobatch``: the same, one request per model call (for comparison);
  - ``POST /feedback``: ``{"items": [{"sequence": [[f x F] x T], "label": "..."}, ...]}`` -> stored durably for
    retraining (``service.tasks.classify.feedback``) before the 2xx;
  - ``GET /metadata[?model=NAME&model_version=V]``: model name, version, classes, limits, provider in use (and
    why, if not CUDA); ``GET /models``: every model and version served;
  - ``GET /docs``: every route, self-hosted (``service.core.docs``; ``/docs.json`` the document); BentoML's
    ``/healthz /livez /readyz /metrics``.

* ``SeqModel`` (the model service, ``SEQSERVE_MODEL_WORKERS`` processes, one per GPU): owns the ONNX Runtime
  session (checked against the artifact's reference outputs at load) and BentoML's adaptive batcher. Every API
  worker calls it over a local socket (``bentoml.depends``; pickled float32 arrays), so one batcher sees the
  sequences of all API workers: on a GPU, batches of the whole load instead of load / workers. An API worker
  sends concurrent requests in one call (``service.core.batching.coalesce``).

Several models per server (``SEQSERVE_MODELS``, ``service.core.repository``): each entry has its own slot and
champion following (``service.core.lifecycle.Follower``) and its own adaptive batcher (model service APIs
``infer``, ``infer_1``, ...), and its metric series carry its name (``model``); a request's ``model`` field (the
V2 path's name) picks it and its limits validate the request. Unset, the server serves one model, as always.

Settings: ``service.core.settings`` (read once, here). The artifacts' metadata is read when this module is imported
because the request types declare their limits (feature_dim, max_length) in the OpenAPI document; the model
sessions are opened by the model service's workers only.
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
from starlette.responses import Response

from service.core import stages
from service.core.admin import admin_routes
from service.core.app import (
    api_service_config,
    boot_repository,
    call_again,
    forbid_unknown_fields,
    install_guard,
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
from service.core.catalogue import VersionField, model_field, models_route, resolve
from service.core.guard import DeadlinePassed, Rejected
from service.core.lifecycle import Follower, ModelSlot
from service.core.metrics import DEADLINE_DROPPED
from service.core.protocol.v2 import route_template, v2_routes
from service.core.repository import Entry, no_version
from service.core.validate import first_non_finite, non_finite_message
from service.tasks.classify.catalogue import metadata_route, request_limits
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

SETTINGS, REPO = boot_repository("classify")  # settings and the models to serve (service/core/app.py)
ARTIFACT = REPO.entries[0].artifact  # the default model's: the schema and /docs.json show its limits
MAX_STEPS = SETTINGS.max_request_steps


LIMITS = request_limits(REPO, SETTINGS)  # per served name: feature_dim, max_length, classes
MAX_LENGTH = LIMITS[REPO.default_name][1]
ModelName = model_field(REPO)
Sequences = sequences_type(ARTIFACT.meta.feature_dim, MAX_LENGTH, MAX_SEQUENCES, MAX_STEPS, LIMITS.__getitem__)
FeedbackItems = feedback_type(
    ARTIFACT.meta.feature_dim, MAX_LENGTH, ARTIFACT.meta.classes, MAX_SEQUENCES, MAX_STEPS, LIMITS.__getitem__
)
JSON_PATHS = ("/predict", "/predict_nobatch", "/feedback", "/admin/retrain", "/admin/alert", "/admin/reload")


class SeqModel:
    """Owns the sessions and the adaptive batchers, a slot and a batcher per served model (one unless
    ``SEQSERVE_MODELS``). Items: one ``Pack`` (``service.core.batching.hop``) per API worker call (its sequences
    as one array), answered by one ``Answer``; a sequence whose deadline has passed is not computed. The model
    slots and the champion following: ``service.core.lifecycle``."""

    task = "classify"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        cap_learned_wait(SETTINGS.batch_wait_ms / 1000)  # see service/core/bentoml_patches.py
        self.models: list[Follower] = []
        for e in REPO.entries:
            load = functools.partial(_load, e.name)
            follower = Follower(self.task, e.pointer, load, _compatible, SETTINGS, e.name if len(REPO) > 1 else "")
            follower.start(e.artifact, e.source)
            self.models.append(follower)

    @bentoml.api
    def reload(self) -> dict:
        """Look at the champion pointers now (``POST /admin/reload``)."""
        outcomes = [m.check_champion() for m in self.models]
        models = [
            {"name": e.name, "outcome": o, "model_version": m.slot.version}
            for e, m, o in zip(REPO.entries, self.models, outcomes, strict=True)
        ]
        return {"outcome": outcomes[0], "model_version": self.models[0].slot.version, "models": models}

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, packs: list[Any]) -> list[Any]:
        return self._run(0, packs)

    @bentoml.api
    def infer_nobatch(self, packs: list[Any], entry: int = 0) -> list[Any]:
        return self._run(entry, packs)

    @bentoml.api
    def info(self, entry: int = 0) -> dict:
        """What /metadata reports about a served model and its session."""
        slot = self.models[entry].slot  # read once, like a batch
        return {
            **session_info(slot, SETTINGS),
            "classes": slot.engine.classes,
            "model_workers": SETTINGS.model_workers,
        }

    def _run(self, entry: int, packs: list[Pack]) -> list[Answer]:
        started = time.perf_counter()
        slot = self.models[entry].slot  # read once: a swap during this batch does not mix two models in it
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


def _load(name: str, artifact: Artifact, source: str) -> ModelSlot:
    engine = Engine(artifact, SETTINGS)  # opens the session and runs the load-time check
    return ModelSlot(engine, ServiceMetrics(engine, name, SETTINGS.device, SETTINGS.drift_window_steps), source)


def _compatible(serving: ModelSlot, artifact: Artifact) -> None:
    problem = swap_problem(serving.engine.artifact.meta, artifact.meta)
    if problem:
        raise ValueError(problem)


def _batched_infer(index: int) -> Any:
    """The model service API of entry ``index``'s own adaptive batcher (entry 0's is ``infer``)."""

    def infer(self: SeqModel, packs: list[Any]) -> list[Any]:
        return self._run(index, packs)

    infer.__name__ = infer.__qualname__ = REPO.entries[index].api()
    api = bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    return api(infer)


for _entry in REPO.entries[1:]:
    setattr(SeqModel, _entry.api(), _batched_infer(_entry.index))
SeqModel = bentoml.service(  # type: ignore[misc]
    **model_service_config("seqserve-model", SETTINGS, SETTINGS.model_workers, timeout_s=60),
    tracing={"excluded_urls": ["/"]},  # no OpenTelemetry spans on the internal hop (every URL holds "/")
)(SeqModel)


def v2_adapters() -> list[ClassifyV2]:
    """One V2 adapter per served entry, each name's default version first."""
    return [ClassifyV2(e, LIMITS[e.name][1], MAX_SEQUENCES) for name in REPO.names for e in REPO.by_name[name]]


routes = Starlette(
    routes=[
        metadata_route(REPO, LIMITS, MAX_SEQUENCES),
        models_route(REPO),
        *admin_routes(SETTINGS.admin_token, SETTINGS.database, SETTINGS.worker_claim_s),
        *v2_routes(v2_adapters()),
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
        self.coalescers: dict[int, Coalescer] = {}  # per served model, made on its first request (in the loop)
        # The store opens here so that a data directory without the durability guarantees fails the start.
        self.feedback_store: FeedbackStore = open_store(
            SETTINGS.database, SETTINGS.feedback_holdout, SETTINGS.feedback_max_items
        )
        self._store_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="feedback")
        tune_gc()
        quiet_client_errors()
        bound_metric_paths(ROUTE_PATHS, route_template)  # bounded metric labels (service/core/guard.py)

    @bentoml.api
    async def predict(
        self, *, model: ModelName = REPO.default_name, model_version: VersionField = None, sequences: Sequences
    ) -> PredictionsDoc:
        """Classify 1..64 sequences, each [T][F] numbers (T <= max_length, F = feature_dim); batched with
        other requests' sequences on the model service. ``model``: which served model (default: the server's
        default, GET /models), ``model_version``: which of its versions."""
        try:
            entry = await resolve(REPO, model, model_version)
            return self._respond(entry, await self.infer_items(request_items(sequences), entry), model_version)
        except Rejected as e:  # DeadlinePassed too
            return refuse(e)

    async def infer_items(self, items: list[Any], entry: Entry | None = None) -> list[Any]:
        """Sequences (as ``request_items``) through the batcher of ``entry`` (default: the default model) on the
        model service: ``(probabilities, attention, version)`` each, in order. ``/predict`` and the V2 route
        (``service.tasks.classify.v2``) both come here, so they share batches.
        ``DeadlinePassed`` if the request's deadline passed before the model ran it."""
        entry = entry or REPO.entries[0]
        stages.handled()
        if items and items[0][3] <= time.perf_counter():
            DEADLINE_DROPPED.labels("classify").inc(len(items))
            raise DeadlinePassed()
        if SETTINGS.api_in_flight == 0:
            results = await self._call(entry.api(), items)
        else:
            coalescer = self.coalescers.get(entry.index)
            if coalescer is None:
                infer = functools.partial(self._call, entry.api())
                coalescer = self.coalescers[entry.index] = Coalescer(
                    infer, SETTINGS.api_in_flight, SETTINGS.max_batch_size
                )
            results = await coalescer.submit(items)
        results = _answered(results)
        entry.version = results[0][2]  # the model that answered (after a swap, the new champion)
        stages.called(results[0][3])
        return results

    @bentoml.api(route="/predict_nobatch")
    async def predict_nobatch(
        self, *, model: ModelName = REPO.default_name, model_version: VersionField = None, sequences: Sequences
    ) -> PredictionsDoc:
        """The same answers without adaptive batching: one request per model call (for comparison)."""
        try:
            entry = await resolve(REPO, model, model_version)
            stages.handled()
            results = _answered(await self._call("infer_nobatch", request_items(sequences), entry=entry.index))
            stages.called(results[0][3])
            return self._respond(entry, results, model_version)
        except Rejected as e:
            return refuse(e)

    @bentoml.api(route="/feedback")
    async def feedback(self, *, model: ModelName = REPO.default_name, items: FeedbackItems) -> FeedbackAck:
        """Store 1..64 labelled sequences for retraining (each sequence as in /predict, each label one of the
        model's classes). The answer comes after the items are committed to disk. ``model``: the served model
        that follows the task's champion (the one retraining improves; ``NAME=@champion`` in SEQSERVE_MODELS)."""
        entry = REPO.first(model)
        if not entry.feedback:
            takes = [e.name for e in REPO.entries if e.feedback]
            return refuse(Rejected(
                f"model: {model!r} does not follow the task's champion, which retraining improves, so its feedback "
                f"would not be used; " + (f"send it for {takes[0]!r}" if takes else "no model here takes feedback "
                "(SEQSERVE_MODELS: NAME=@champion marks the one that does)"), "feedback_model"))  # fmt: skip
        add = functools.partial(self.feedback_store.add, items, entry.version)
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
            model_version=entry.version,
        )

    async def _call(self, api: str, items: list[Any], **kwargs: Any) -> list[Any]:
        """Call the model service; once more if the connection broke (a keep-alive connection the model
        service closed as it was reused). Inference has no side effects, so a repeat is safe."""
        method = getattr(self.model.to_async, api)
        call = hop.pack(items)  # one array for the whole call (service/core/batching/hop.py)
        wire = [tuple(call)]  # plain tuples of arrays cross BentoML's pickle, never a project class
        sent = time.perf_counter()
        answer = (await call_again(lambda: method(wire, **kwargs)))[0]
        return hop.unpack(answer, call.lengths, sent, time.perf_counter())

    def _respond(self, entry: Entry, results: list[Any], asked: str | None) -> Response:
        version = entry.version = results[0][2]  # the model that answered (after a swap, the new champion)
        if asked is not None and version != asked:  # the version asked for was swapped out meanwhile
            raise Rejected("model_version: " + no_version(entry.name, asked, [version]), "unknown_version", 404)
        bad = first_non_finite([r[0] for r in results])
        if bad is not None:  # never a null probability: the request is refused, naming the sequence
            refusal = Rejected(non_finite_message(f"sequences[{bad}]"), "non_finite_output", 422)
            return refuse(refusal, lambda reason: REJECTED.labels(reason, "json").inc())
        probs = np.stack([r[0] for r in results])
        body = predictions_json(LIMITS[entry.name][2], version, probs, [r[1] for r in results])
        return Response(body, media_type="application/json")


def _answered(results: list[Any]) -> list[Any]:
    """The model service's answers for one request; ``DeadlinePassed`` if it dropped any of them."""
    if any(r is None for r in results):
        raise DeadlinePassed()
    return results


ROUTE_PATHS = (*JSON_PATHS, "/metadata", "/models", "/docs")
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
    model_name=REPO.default_name,
)


__all__ = ["SeqServe", "SeqModel"]
