"""The language model's BentoML services; the entry ``bentoml serve service.generate_service:SeqGenerate``
(``make serve-generate``; ``service/generate_service.py`` re-exports them).

A classifier and a language model are served side by side as two servers (``make serve`` on :3000,
``make serve-generate PORT=3001``), each with its own model slot, following its own champion
(``python -m export.promote`` sets the pointer of the artifact's task), sharing the settings, the model store,
the service database and the metrics registry. The topology is the classifier's:

* ``SeqGenerate`` (API service, ``SEQSERVE_WORKERS`` processes): ``POST /generate`` (validation in
  ``service.tasks.generate.params``; JSON or server-sent events), ``GET /metadata`` (``task: generate``),
  BentoML's health and ``/metrics``.
* ``LMModel`` (model service, one process): the step graph's session, checked at load, and the step scheduler
  (``service.core.decoding.scheduler``) that batches every decoding step of every active request. An API worker submits
  each request (``submit``) and reads the events of all its requests from one streaming call (``channel``:
  the token channel, ``service.core.decoding.channel``).

A swap (a new champion) starts a new scheduler for new requests; the old one finishes the streams it has on
the model they started with, then stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
)
from service.core.artifact import Artifact
from service.core.bentoml_patches import bound_metric_paths
from service.core.decoding.channel import sse
from service.core.decoding.serving import Outboxes, Retiring, cancel_on_disconnect, dispatch, worker_channel
from service.core.guard import DeadlinePassed, Rejected, deadline, json_body
from service.core.lifecycle import FollowsChampion, ModelSlot
from service.core.vocab import Vocabulary
from service.tasks.generate.engine import LMEngine
from service.tasks.generate.metrics import GEN_REJECTED
from service.tasks.generate.openapi import GenerateOpenAPIPatch
from service.tasks.generate.params import Limits, parse
from service.tasks.generate.settings import GenerateSettings
from service.tasks.generate.spec import swap_problem

log = logging.getLogger("seqserve")

BOOT = boot("generate")  # settings and the artifact to serve (service/core/app.py)
SETTINGS, ARTIFACT = BOOT.settings, BOOT.artifact
KNOBS = GenerateSettings()
GEN = ARTIFACT.meta.generation
assert GEN is not None  # boot refused any other task
VOCAB = Vocabulary(GEN)
LIMITS = Limits(GEN.max_prompt_tokens, KNOBS.max_new_tokens or GEN.max_new_tokens, KNOBS.max_beams)
BUSY = "busy"  # the 429's Retry-After is 1 s (service/core/app.py): streams finish and free slots every few steps
SUBMIT_ATTEMPTS = 3  # submit is idempotent by request id, so a call on a stale connection is simply made again


@bentoml.service(**model_service_config("seqserve-lm-model", SETTINGS, workers=1, timeout_s=600))
class LMModel(FollowsChampion):
    """The step scheduler of the served language model (``service.core.decoding.scheduler``)."""

    task = "generate"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        self._streams: dict[str, Any] = {}  # request id -> stream, for cancel()
        self._outbox = Outboxes(KNOBS.stream_interval_ms / 1000)  # API worker -> its channel's outbox
        self._start_slot(ARTIFACT, BOOT.source, SETTINGS)

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        engine = LMEngine(artifact, SETTINGS, KNOBS)
        engine.scheduler.deliver = self._deliver
        return ModelSlot(engine, Retiring(engine), source)

    def _check_compatible(self, artifact: Artifact) -> None:
        problem = swap_problem(ARTIFACT.meta, artifact.meta)  # against what the API workers validate with
        if problem:
            raise ValueError(problem)

    def _deliver(self, batch: list) -> None:
        """From the scheduler thread, once per step: run the step's emits on the event loop."""
        self._loop.call_soon_threadsafe(dispatch, batch)

    @bentoml.api
    async def submit(self, request: dict, request_id: str, worker: str, deadline: float | None = None) -> dict:
        """Start a generation; its events go out on ``worker``'s channel. ``{"error": "busy"}`` when full.
        ``deadline`` (``time.perf_counter``): if the request still waits for a slot then, it is dropped."""
        self._loop = asyncio.get_running_loop()
        if request_id in self._streams:  # the API worker's retry of a call that did arrive
            return {"ok": True}
        scheduler = self.slot.engine.scheduler  # read once: this request stays on this model
        if scheduler.load >= KNOBS.streams + KNOBS.max_waiting:
            return {"error": BUSY}
        req, _ = parse(request, VOCAB, LIMITS)  # validated by the API worker; this cannot fail
        outbox = self._outbox(worker)

        def emit(event: dict) -> None:  # on the event loop
            outbox.put(request_id, event)
            if "event" in event:
                self._streams.pop(request_id, None)

        self._streams[request_id] = scheduler.submit(req, emit, float("inf") if deadline is None else deadline)
        return {"ok": True}

    @bentoml.api
    async def channel(self, worker: str) -> AsyncGenerator[str, None]:
        """The events of ``worker``'s generations, newline-delimited ASCII JSON (``service.core.decoding.channel``)."""
        self._loop = asyncio.get_running_loop()
        async for chunk in self._outbox(worker).chunks():
            yield chunk

    @bentoml.api
    def cancel(self, request_id: str) -> bool:
        """The API worker's client went away: free the stream's slot at the next step (its last event, finish
        reason ``cancelled``, goes out on the channel and ends its bookkeeping here)."""
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.cancel()
        return stream is not None

    @bentoml.api
    def info(self) -> dict:
        slot = self.slot
        e = slot.engine
        return {
            **session_info(slot, SETTINGS),
            "active_streams": len(e.scheduler.active),
            "waiting": e.scheduler.load - len(e.scheduler.active),
            "capacity_streams": e.scheduler.capacity,
            "mode": KNOBS.mode,
        }

    @bentoml.api
    def reload(self) -> dict:
        return {"outcome": self.check_champion(), "model_version": self.slot.version}


def _count(reason: str) -> None:
    GEN_REJECTED.labels(reason).inc()


async def generate(request: Request) -> Response:
    try:
        body = await json_body(request)
        req, stream = parse(body, VOCAB, LIMITS)
    except Rejected as e:  # not JSON, or a GenerateError
        return refuse(e, _count)
    body = {**body, "seed": req.seed}  # the model service samples with the seed chosen here
    model = bentoml.get_current_service().model
    rid, chan = uuid.uuid4().hex, worker_channel()
    due = deadline()
    if due <= time.perf_counter():
        return refuse(DeadlinePassed(), _count)
    due = None if due == float("inf") else due
    chan.register(rid)
    try:
        submit = model.to_async.submit
        answer = await call_again(
            lambda: submit(request=body, request_id=rid, worker=chan.worker, deadline=due), SUBMIT_ATTEMPTS
        )
    except BaseException:
        chan.unregister(rid)
        raise
    if answer.get("error"):
        chan.unregister(rid)
        if answer["error"] == BUSY:  # never an unbounded queue: the client comes back later
            return refuse(Rejected("generation capacity is full: try again shortly", BUSY, 429), _count)
        return JSONResponse({"error": answer["error"]}, status_code=500)
    upstream = chan.events(rid)
    watch = asyncio.create_task(cancel_on_disconnect(request, model, rid))
    try:
        first = await anext(upstream)
    except BaseException:
        watch.cancel()
        raise
    if first.get("event") == "error":
        watch.cancel()
        await upstream.aclose()
        return JSONResponse({"error": first["error"]}, status_code=first.get("status", 500))
    if not stream:
        event = first
        try:
            async for event in upstream:  # noqa: B007 - the last event is the answer
                pass
        finally:
            watch.cancel()
        if event.get("event") != "done":
            return JSONResponse({"error": event.get("error", "generation failed")}, status_code=500)
        event.pop("event")
        return JSONResponse(event)

    async def relay() -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            yield sse(first)
            async for event in upstream:
                ended = event.get("event") in ("done", "error")
                yield sse(event)
        finally:  # the last event sent, or the client gone (a send failed): then drop the stream now
            watch.cancel()
            if not ended:
                await model.to_async.cancel(request_id=rid)
            await upstream.aclose()

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def metadata(request: Request) -> JSONResponse:
    try:
        info = await model_info()
    except Rejected as e:  # the model service is starting or gone: 503
        return refuse(e)
    meta = ARTIFACT.meta
    return JSONResponse(
        {
            "task": "generate",
            "model_name": meta.model_name,
            **info,
            "vocab_size": len(GEN.vocab),
            "special_ids": GEN.special_ids,
            "max_prompt_tokens": LIMITS.max_prompt_tokens,
            "max_new_tokens": LIMITS.max_new_tokens,
            "max_beams": LIMITS.max_beams,
            "forms": {k: {"lines": v["lines"], "length": len(v["template"])} for k, v in GEN.forms.items()},
            "rnn": meta.rnn,
            "training_metrics": {k: meta.training_metrics.get(k) for k in ("val_loss_nats", "val_bits_per_char")},
        }
    )


routes = Starlette(
    routes=[Route("/generate", generate, methods=["POST"]), Route("/metadata", metadata, methods=["GET"])]
)


@bentoml.asgi_app(routes, path="/")
@bentoml.service(**api_service_config("seqserve-generate", SETTINGS, timeout_s=600))
class SeqGenerate:
    """Text generation: validation and answers here, the step scheduler in ``LMModel``."""

    model = bentoml.depends(LMModel)

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        bound_metric_paths(("/generate", "/metadata"))  # bounded metric labels (service/core/guard.py)


SeqGenerate.add_asgi_middleware(
    GenerateOpenAPIPatch,
    limits={
        "max_prompt_tokens": LIMITS.max_prompt_tokens,
        "max_new_tokens": LIMITS.max_new_tokens,
        "max_beams": LIMITS.max_beams,
    },
    vocab_size=len(GEN.vocab),
    forms=sorted(GEN.forms),
    alphabet="".join(c for c in GEN.vocab if len(c) == 1 and VOCAB.index[c] not in GEN.special_ids.values()),
    empty_prompt="bos" in GEN.special_ids,
)
install_guard(SeqGenerate, SETTINGS, ("/generate",), on_reject=lambda reason, path: _count(reason))


__all__ = ["SeqGenerate", "LMModel"]
