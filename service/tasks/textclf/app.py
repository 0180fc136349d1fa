"""The text classifier's BentoML services; the entry ``bentoml serve service.textclf_service:SeqTextClf``.

* ``SeqTextClf`` (the API service): HTTP, request checks (``service.tasks.textclf.schema``), tokenizing (the
  artifact's ``tokenizer.model``), answers. Routes:

  - ``POST /classify-text``: ``{"texts": [...], "return_attention": true}`` -> per text ``label``,
    ``probabilities`` (by class) and, on request, ``tokens`` with their ``attention`` weights;
  - the Open Inference Protocol: ``/v2/models/<name>/infer`` with ``text`` BYTES ``[N]`` -> ``probabilities``
    FP32 ``[N, C]``, ``label`` BYTES ``[N]``, ``attention`` FP32 ``[N, T]`` (``service.tasks.textclf.v2``);
  - ``POST /feedback``: ``{"items": [{"text", "label"}, ...]}`` stored for retraining
    (``service.tasks.textclf.feedback``);
  - ``GET /metadata``; ``POST /admin/reload``; BentoML's ``/healthz /livez /readyz /metrics``.

* ``TextClfModel`` (the model service): the ONNX Runtime session (checked at load against the artifact's
  reference texts), BentoML's adaptive batcher over the texts of all requests and API workers, the champion
  following and hot swap (``service.core.lifecycle``). Token rows travel as one ``hop.Pack`` per call.

Settings: ``service.core.settings``, ``SEQSERVE_TEXTCLF_MAX_TEXTS`` (256 texts per request) and
``SEQSERVE_TEXTCLF_MAX_CHARS`` (10000 characters per text).
"""

from __future__ import annotations

import asyncio
import functools
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
from service.core.tokens import Tokenizer
from service.tasks.textclf.engine import TextClfEngine, as_row, load_tokenizer, tokens
from service.tasks.textclf.feedback import FeedbackFile, StoreFull, parse_feedback
from service.tasks.textclf.metrics import FEEDBACK, REJECTED, TextClfMetrics, observe_request
from service.tasks.textclf.openapi import TextClfOpenAPIPatch
from service.tasks.textclf.schema import check_tokens, parse_request
from service.tasks.textclf.spec import swap_problem
from service.tasks.textclf.v2 import TextClfV2

BOOT = boot("textclf")
SETTINGS, ARTIFACT = BOOT.settings, BOOT.artifact
TC = ARTIFACT.meta.text_classification
CLASSES = ARTIFACT.meta.classes
MAX_TOKENS = min(SETTINGS.accepted_max_length(TC.max_tokens), TC.max_tokens)
MAX_TEXTS = env_int("SEQSERVE_TEXTCLF_MAX_TEXTS", 256, minimum=1)
MAX_CHARS = env_int("SEQSERVE_TEXTCLF_MAX_CHARS", 10_000, minimum=1)
JSON_PATHS = ("/classify-text", "/feedback", "/admin/reload")
FEEDBACK_FILE = FeedbackFile(SETTINGS.data_dir, SETTINGS.feedback_max_items)


@functools.cache
def tokenizer() -> Tokenizer:
    """The artifact's tokenizer (read once per API worker, its file checked against the metadata)."""
    return load_tokenizer(ARTIFACT)


@bentoml.service(
    **model_service_config("seqserve-textclf-model", SETTINGS, SETTINGS.model_workers, timeout_s=60),
    tracing={"excluded_urls": ["/"]},
)
class TextClfModel(FollowsChampion):
    """Owns the session and the adaptive batcher. Items: one ``Pack`` of token rows per API worker call, answered
    by ``(probabilities [n, C], attention [n, T], computed [n], version)``; rows past their deadline are not run."""

    task = "textclf"

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        cap_learned_wait(SETTINGS.batch_wait_ms / 1000)
        self._start_slot(ARTIFACT, BOOT.source, SETTINGS)

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        engine = TextClfEngine(artifact, SETTINGS)
        metrics = TextClfMetrics(
            engine.model_version, engine.tc.rnn, engine.provider, SETTINGS.device, artifact.meta.model_name
        )
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
            DEADLINE_DROPPED.labels("textclf").inc(int((~computed).sum()))
        rows = batch.sequences()
        probs = np.zeros((batch.count, len(slot.engine.classes)), np.float32)
        att: list[np.ndarray] = [np.zeros(len(r), np.float32) for r in rows]
        live = np.flatnonzero(computed)
        if len(live):
            p, a, stats = slot.engine.infer([rows[i] for i in live])
            probs[live] = p
            for k, i in enumerate(live):
                att[i] = a[k]
            slot.metrics.batch(stats, batch.received[live].tolist())
        out, row = [], 0
        for pk in packs:
            out.append((probs[row : row + pk.count], att[row : row + pk.count], computed[row : row + pk.count],
                        slot.version))  # fmt: skip
            row += pk.count
        return out


async def run_texts(ids: list[list[int]]) -> tuple[np.ndarray, list[np.ndarray], str]:
    """Token rows through the model service's batcher: probabilities, attention per text, the model version."""
    items = request_items([as_row(t) for t in ids])
    if items and items[0][3] <= time.perf_counter():
        DEADLINE_DROPPED.labels("textclf").inc(len(items))
        raise DeadlinePassed()
    infer = bentoml.get_current_service().model.to_async.infer
    wire = [tuple(hop.pack(items))]
    probs, att, computed, version = (await call_again(lambda: infer(wire)))[0]
    if not np.asarray(computed).all():
        raise DeadlinePassed()
    return np.asarray(probs), [np.asarray(a) for a in att], version


def encode_texts(texts: list[str]) -> list[list[int]]:
    """Each text's tokens, within ``MAX_TOKENS`` (``Rejected`` naming the text otherwise)."""
    tok = tokenizer()
    ids = [tokens(tok, t) for t in texts]
    check_tokens([len(t) for t in ids], MAX_TOKENS)
    return ids


def _count(reason: str) -> None:
    REJECTED.labels(reason).inc()


async def classify_text(request: Request) -> Response:
    try:
        req = parse_request(await json_body(request), MAX_TEXTS, MAX_CHARS)
        ids = encode_texts(req.texts)
        probs, att, version = await run_texts(ids)
    except Rejected as e:
        return refuse(e, _count)
    labels = [CLASSES[int(i)] for i in probs.argmax(1)]
    observe_request("classify", ids, labels)
    tok = tokenizer()
    results = []
    for k, label in enumerate(labels):
        r: dict[str, Any] = {
            "label": label,
            "probabilities": {c: round(float(p), 6) for c, p in zip(CLASSES, probs[k], strict=True)},
        }
        if req.return_attention:
            r["tokens"] = [tok.piece(i) for i in ids[k][1:]]  # <s> is not shown; its weight is in "start"
            r["attention"] = [round(float(a), 6) for a in att[k][1:]]
            r["start_attention"] = round(float(att[k][0]), 6)
        results.append(r)
    return JSONResponse({"results": results, "model_version": version})


async def feedback(request: Request) -> Response:
    """Store labelled texts for retraining (``service.tasks.textclf.feedback``); 2xx once they are on disk."""
    try:
        items = parse_feedback(await json_body(request), list(CLASSES), MAX_TEXTS, MAX_CHARS)
        try:
            stored = await asyncio.to_thread(FEEDBACK_FILE.add, items)
        except StoreFull as e:
            raise Rejected(f"items: {e}; nothing was stored", "store_full", 507) from None
        except OSError as e:
            raise Rejected(f"items: not stored ({e}); nothing was stored", "store_unavailable", 503) from None
    except Rejected as e:
        return refuse(e, _count)
    for item in items:
        FEEDBACK.labels(item.label).inc()
    return JSONResponse({"accepted": stored})


async def metadata(request: Request) -> JSONResponse:
    try:
        info = await model_info()
    except Rejected as e:
        return refuse(e)
    meta = ARTIFACT.meta
    tm = meta.training_metrics
    return JSONResponse(
        {
            "task": "textclf",
            "model_name": meta.model_name,
            **info,
            "classes": CLASSES,
            "tokenizer": TC.tokenizer,
            "vocab_size": len(TC.vocab),
            "max_tokens": MAX_TOKENS,
            "max_texts": MAX_TEXTS,
            "max_chars": MAX_CHARS,
            "feedback_file": str(FEEDBACK_FILE.path),
            "base_lm": TC.base_lm,
            "rnn": meta.rnn,
            "training_data": meta.extra.get("training_data", {}),
            "training_metrics": {k: tm.get(k) for k in ("accuracy", "macro_f1", "pretrained", "few_labels")},
        }
    )


routes = Starlette(
    routes=[
        Route("/classify-text", classify_text, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
        *v2_routes(TextClfV2(ARTIFACT.meta, MAX_TEXTS, MAX_CHARS, encode_texts, run_texts)),
        reload_route(SETTINGS.admin_token),
    ]
)


@bentoml.asgi_app(routes, path="/")
@bentoml.service(**api_service_config("seqserve-textclf", SETTINGS, timeout_s=60))
class SeqTextClf:
    """Sentiment (or any labels) for raw texts: checks and tokens here, the model in ``TextClfModel``."""

    model = bentoml.depends(TextClfModel)

    def __init__(self) -> None:
        start_process(SETTINGS)  # service/core/app.py
        tune_gc()
        bound_metric_paths((*JSON_PATHS, "/metadata"), route_template)


SeqTextClf.add_asgi_middleware(
    TextClfOpenAPIPatch,
    limits={"max_texts": MAX_TEXTS, "max_chars": MAX_CHARS, "max_tokens": MAX_TOKENS},
    classes=list(CLASSES),
    model_name=ARTIFACT.meta.model_name,
)
install_guard(SeqTextClf, SETTINGS, JSON_PATHS, on_reject=lambda reason, path: _count(reason))

__all__ = ["SeqTextClf", "TextClfModel"]
