"""The translator's BentoML services; the entry ``bentoml serve service.translate_service:SeqTranslate``
(``make serve-translate``; ``service/translate_service.py`` re-exports them).

The topology is the language model's (``service.tasks.generate.app``):

* ``SeqTranslate`` (API service, ``SEQSERVE_WORKERS`` processes): ``POST /translate`` (validation and
  tokenization in ``service.tasks.translate.params``; JSON or server-sent events), ``GET /metadata``
  (``task: translate``), BentoML's health and ``/metrics``.
* ``TranslatorModel`` (model service, one process): the encoder and decoder step sessions, checked at load, and
  the scheduler (``service.core.decoding.encoder_decoder``) that encodes arriving sentences together and batches
  every decoding step of every beam of every sentence. Each text of a request is one stream (its beams are its
  rows); an API worker submits a request's texts in one call and reads their events from its token channel
  (``service.core.decoding.channel``), one id per text.

A swap (a new champion) starts a new scheduler for new requests; the old one finishes the sentences it has.
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
from service.core.tokens import EOS
from service.tasks.translate.engine import TranslateEngine, tokenizer
from service.tasks.translate.metrics import TR_REJECTED
from service.tasks.translate.openapi import TranslateOpenAPIPatch
from service.tasks.translate.params import Limits, Options, TranslateRequest, parse
from service.tasks.translate.settings import TranslateSettings
from service.tasks.translate.spec import swap_problem

log = logging.getLogger("seqserve")

BOOT = boot("translate")  # settings and the artifact to serve (service/core/app.py)
SETTINGS, ARTIFACT = BOOT.settings, BOOT.artifact
KNOBS = TranslateSettings()
TR = ARTIFACT.meta.translation
assert TR is not None  # boot refused any other task
TOKENIZER = tokenizer(ARTIFACT)
LIMITS = Limits(KNOBS.max_texts, TR.max_source_tokens, TR.max_target_tokens, KNOBS.max_beams, KNOBS.max_rows)
BUSY = "busy"
SUBMIT_ATTEMPTS = 3  # submit is idempotent by request id


@bentoml.service(**model_service_config("seqserve-translate-model", SETTINGS, workers=1, timeout_s=600))
class TranslatorModel(FollowsChampion):
    """The scheduler of the served translator (``service.core.decoding.encoder_decoder``)."""

    task = "translate"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        self._streams: dict[str, list] = {}  # request id -> its texts' streams, for cancel()
        self._outbox = Outboxes(KNOBS.stream_interval_ms / 1000)  # API worker -> its channel's outbox
        self._start_slot(ARTIFACT, BOOT.source, SETTINGS)

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        engine = TranslateEngine(artifact, SETTINGS, KNOBS)
        engine.scheduler.deliver = self._deliver
        return ModelSlot(engine, Retiring(engine), source)

    def _check_compatible(self, artifact: Artifact) -> None:
        problem = swap_problem(ARTIFACT.meta, artifact.meta)
        if problem:
            raise ValueError(problem)

    def _deliver(self, batch: list) -> None:
        self._loop.call_soon_threadsafe(dispatch, batch)

    @bentoml.api
    async def submit(self, request: dict, request_id: str, worker: str, deadline: float | None = None) -> dict:
        """Start a request's texts; text i's events go out on ``worker``'s channel as ``{request_id}.{i}``.
        ``{"error": "busy"}`` when the slots and the waiting room are full."""
        self._loop = asyncio.get_running_loop()
        if request_id in self._streams:  # the API worker's retry of a call that did arrive
            return {"ok": True}
        engine = self.slot.engine  # read once: this request stays on this model
        scheduler = engine.scheduler
        reqs, _ = parse(request, TOKENIZER, LIMITS)  # validated by the API worker; this cannot fail
        if scheduler.load + len(reqs) > KNOBS.streams + KNOBS.max_waiting:
            return {"error": BUSY}
        outbox = self._outbox(worker)
        left = [len(reqs)]

        def emitter(key: str) -> Any:
            def emit(event: dict) -> None:  # on the event loop
                outbox.put(key, event)
                if "event" in event:
                    left[0] -= 1
                    if not left[0]:
                        self._streams.pop(request_id, None)

            return emit

        due = float("inf") if deadline is None else deadline
        streams = []
        for i, r in enumerate(reqs):
            engine.metrics.admitted(r.num_beams)
            streams.append(scheduler.submit(r, emitter(f"{request_id}.{i}"), due))
        self._streams[request_id] = streams
        return {"ok": True}

    @bentoml.api
    async def channel(self, worker: str) -> AsyncGenerator[str, None]:
        """The events of ``worker``'s texts, newline-delimited ASCII JSON (``service.core.decoding.channel``)."""
        self._loop = asyncio.get_running_loop()
        async for chunk in self._outbox(worker).chunks():
            yield chunk

    @bentoml.api
    def cancel(self, request_id: str) -> bool:
        """The client went away: its texts' slots are freed at the next step."""
        streams = self._streams.get(request_id, [])
        for s in streams:
            s.cancel()
        return bool(streams)

    @bentoml.api
    def info(self) -> dict:
        slot = self.slot
        sched = slot.engine.scheduler
        return {
            **session_info(slot, SETTINGS),
            "active_sentences": len(sched.active),
            "waiting": sched.load - len(sched.active),
            "capacity_rows": sched.capacity,
            "mode": KNOBS.mode,
        }

    @bentoml.api
    def reload(self) -> dict:
        return {"outcome": self.check_champion(), "model_version": self.slot.version}


def _count(reason: str) -> None:
    TR_REJECTED.labels(reason).inc()


def hypothesis(h: dict, req: TranslateRequest, opts: Options) -> dict:
    """One hypothesis as the answer shows it: scores if asked, the alignment with its pieces if asked."""
    out = {k: h[k] for k in ("text", "score", "tokens", "finish_reason") if k in h}
    if not opts.return_scores:
        out.pop("score", None)
    if opts.return_attention and "attention" in h:
        out["attention"] = h["attention"]
        out["source_pieces"] = [TOKENIZER.piece(t) for t in req.prompt[:-1]] + ["</s>"]
        out["target_pieces"] = [TOKENIZER.piece(t) if t != EOS else "</s>" for t in h["target_ids"]]
    return out


def translation(summary: dict, req: TranslateRequest, opts: Options) -> dict:
    hyps = [hypothesis(h, req, opts) for h in summary["hypotheses"]]
    best = {k: v for k, v in hyps[0].items() if k in ("text", "score", "tokens", "finish_reason")}
    if req.n_best > 1 or opts.return_attention:
        best["hypotheses"] = hyps
    return best


def answer(summaries: list[dict], reqs: list[TranslateRequest], opts: Options, seed: int | None) -> dict:
    out: dict[str, Any] = {
        "translations": [translation(s, r, opts) for s, r in zip(summaries, reqs)],
        "model_version": summaries[0].get("model_version"),
        "source_tokens": [len(r.prompt) for r in reqs],
    }
    if seed is not None:
        out["seed"] = seed
    return out


async def translate(request: Request) -> Response:
    try:
        body = await json_body(request)
        reqs, opts = parse(body, TOKENIZER, LIMITS)
    except Rejected as e:  # not JSON, or a TranslateError
        return refuse(e, _count)
    seed = None
    if isinstance(body.get("sampling"), dict):  # the model service samples with the seed chosen here
        seed = reqs[0].seed
        body = {**body, "sampling": {**body["sampling"], "seed": seed}}
    model = bentoml.get_current_service().model
    rid, chan = uuid.uuid4().hex, worker_channel()
    due = deadline()
    if due <= time.perf_counter():
        return refuse(DeadlinePassed(), _count)
    due = None if due == float("inf") else due
    keys = [f"{rid}.{i}" for i in range(len(reqs))]
    for k in keys:
        chan.register(k)
    try:
        submit = model.to_async.submit
        reply = await call_again(
            lambda: submit(request=body, request_id=rid, worker=chan.worker, deadline=due), SUBMIT_ATTEMPTS
        )
    except BaseException:
        for k in keys:
            chan.unregister(k)
        raise
    if reply.get("error"):
        for k in keys:
            chan.unregister(k)
        if reply["error"] == BUSY:
            return refuse(Rejected("translation capacity is full: try again shortly", BUSY, 429), _count)
        return JSONResponse({"error": reply["error"]}, status_code=500)
    events: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, key: str) -> None:
        async for event in chan.events(key):
            await events.put((i, event))

    pumps = [asyncio.create_task(pump(i, k)) for i, k in enumerate(keys)]
    watch = asyncio.create_task(cancel_on_disconnect(request, model, rid))
    summaries: list[dict | None] = [None] * len(reqs)

    async def next_events() -> AsyncGenerator[tuple[int, dict], None]:
        """Every text's events until each is done; the first error ends the request (its other texts cancelled)."""
        left = len(reqs)
        while left:
            i, event = await events.get()
            if event.get("event") == "error":
                raise _Failed(event)
            if event.get("event") == "done":
                summaries[i] = event
                left -= 1
            yield i, event

    def cleanup() -> None:
        watch.cancel()
        for p in pumps:
            p.cancel()
        for k in keys:
            chan.unregister(k)

    if not opts.stream:
        try:
            async for _ in next_events():
                pass
        except _Failed as e:
            await model.to_async.cancel(request_id=rid)
            return JSONResponse({"error": e.event["error"]}, status_code=e.event.get("status", 500))
        finally:
            cleanup()
        return JSONResponse(answer(summaries, reqs, opts, seed))  # type: ignore[arg-type]

    async def relay() -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            async for i, event in next_events():
                if event.get("event") == "done":
                    sentence = {"event": "sentence", "index": i, **translation(event, reqs[i], opts)}
                    yield sse(sentence)
                elif event.get("text"):
                    yield sse({"index": i, "text": event["text"], "tokens": event["tokens"]})
            ended = True
            yield sse({"event": "done", **answer(summaries, reqs, opts, seed)})  # type: ignore[arg-type]
        except _Failed as e:
            yield sse({"event": "error", "error": e.event["error"]})
        finally:
            cleanup()
            if not ended:
                await model.to_async.cancel(request_id=rid)

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


class _Failed(Exception):
    def __init__(self, event: dict) -> None:
        super().__init__(event.get("error"))
        self.event = event


async def metadata(request: Request) -> JSONResponse:
    try:
        info = await model_info()
    except Rejected as e:
        return refuse(e)
    meta = ARTIFACT.meta
    m = meta.training_metrics
    return JSONResponse(
        {
            "task": "translate",
            "model_name": meta.model_name,
            **info,
            "tokenizer": TR.tokenizer,
            "vocab_size": len(TR.vocab),
            "attention": TR.attention,
            "limits": {
                "max_texts": LIMITS.max_texts,
                "max_source_tokens": LIMITS.max_source_tokens,
                "max_target_tokens": LIMITS.max_target_tokens,
                "max_beams": LIMITS.max_beams,
                "max_rows": LIMITS.max_rows,
            },
            "rnn": meta.rnn,
            "training_metrics": {k: m.get(k) for k in ("chrf", "bleu", "ter", "test_pairs", "copy_source_chrf")},
        }
    )


routes = Starlette(
    routes=[Route("/translate", translate, methods=["POST"]), Route("/metadata", metadata, methods=["GET"])]
)


@bentoml.asgi_app(routes, path="/")
@bentoml.service(**api_service_config("seqserve-translate", SETTINGS, timeout_s=600))
class SeqTranslate:
    """Translation: validation and answers here, the scheduler in ``TranslatorModel``."""

    model = bentoml.depends(TranslatorModel)

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        bound_metric_paths(("/translate", "/metadata"))


SeqTranslate.add_asgi_middleware(
    TranslateOpenAPIPatch,
    limits={
        "max_texts": LIMITS.max_texts,
        "max_source_tokens": LIMITS.max_source_tokens,
        "max_target_tokens": LIMITS.max_target_tokens,
        "max_beams": LIMITS.max_beams,
        "max_rows": LIMITS.max_rows,
    },
    vocab_size=len(TR.vocab),
)
install_guard(SeqTranslate, SETTINGS, ("/translate",), on_reject=lambda reason, path: _count(reason))


__all__ = ["SeqTranslate", "TranslatorModel"]
