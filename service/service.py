"""The BentoML service: ``bentoml serve service.service:SeqServe --host 127.0.0.1 --port 3000``.

* ``POST /predict`` (adaptive batching): ``{"sequences": [[[f x F] x T1], ...]}`` -> one object per sequence.
* ``GET /metadata``: model name, version, classes, feature_dim, max_length, provider in use.
* BentoML's own ``/healthz /livez /readyz /metrics`` and OpenAPI docs at ``/docs``.

The artifact is resolved when this module is imported (``SEQSERVE_MODEL``, default ``seqclassifier:latest``)
because the request type carries its limits (feature_dim, max_length); each worker then opens its own
ONNX Runtime session in ``__init__``.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.batcher import cap_learned_wait
from service.engine import DEFAULT_WORKERS, Engine, Settings, env_float, env_int
from service.metrics import RejectionCounter, ServiceMetrics
from service.runtime import find_artifact
from service.schema import MAX_SEQUENCES, sequences_type

log = logging.getLogger("seqserve")
log.setLevel(logging.INFO)  # start-up facts (model, provider in use) go to BentoML's log handler

ARTIFACT = find_artifact()
SETTINGS = Settings()
MAX_LENGTH = SETTINGS.accepted_max_length(ARTIFACT.meta)
Sequences = sequences_type(int(ARTIFACT.meta["feature_dim"]), MAX_LENGTH, MAX_SEQUENCES)
WORKERS = env_int("SEQSERVE_WORKERS", DEFAULT_WORKERS)
MAX_BATCH_SIZE = env_int("SEQSERVE_MAX_BATCH_SIZE", 256)  # sequences per adaptive batch (BentoML counts items)
MAX_LATENCY_MS = env_int("SEQSERVE_MAX_LATENCY_MS", 2000)
ACCESS_LOG = env_int("SEQSERVE_ACCESS_LOG", 0) == 1  # one INFO line per request: ~8% of peak throughput
cap_learned_wait(env_float("SEQSERVE_BATCH_WAIT_MS", 2.0) / 1000)  # see service/batcher.py


class ClientErrorFilter(logging.Filter):
    """BentoML logs every 400 (pydantic ValidationError) as an ERROR traceback: make it one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = "rejected request on %s: %s", (record.args[0], exc.errors()[0]["msg"])
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorFilter())

# Declaring the media type spares BentoML from building the output's JSON schema on every response.
Predictions = Annotated[list[dict], ContentType("application/json")]

_current: dict[str, Engine] = {}  # this worker's engine, for the plain ASGI routes


async def metadata(request: Request) -> JSONResponse:
    engine = _current.get("engine")
    if engine is None:
        return JSONResponse({"error": "model not loaded"}, status_code=503)
    meta = engine.artifact.meta
    return JSONResponse(
        {
            "model_name": meta["model_name"],
            "model_version": engine.model_version,
            "classes": engine.classes,
            "feature_dim": engine.feature_dim,
            "max_length": engine.max_length,
            "max_sequences": MAX_SEQUENCES,
            "training_length_range": meta.get("training_length_range"),
            "normalisation": meta["normalisation"].get("mode", "global"),
            "provider": engine.provider,
            "ort_threads": engine.ort_threads,
            "rnn": meta["rnn"],
            "source": engine.artifact.source,
            "training_metrics": {
                k: meta["training_metrics"].get(k) for k in ("test_accuracy", "test_macro_f1", "val_accuracy")
            },
        }
    )


routes = Starlette(routes=[Route("/metadata", metadata, methods=["GET"])])


@bentoml.asgi_app(routes, path="/")
@bentoml.service(name="seqserve", workers=WORKERS, traffic={"timeout": 60}, logging={"access": {"enabled": ACCESS_LOG}})
class SeqServe:
    def __init__(self) -> None:
        self.engine = Engine(ARTIFACT, SETTINGS)
        self.metrics = ServiceMetrics(
            self.engine, self.engine.settings.device, env_int("SEQSERVE_DRIFT_WINDOW_STEPS", 4096)
        )
        _current["engine"] = self.engine
        log.info(
            "seqserve: model %s (%s) on %s, %d ORT threads",
            self.engine.model_version,
            ARTIFACT.source,
            self.engine.provider,
            self.engine.ort_threads,
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, sequences: Sequences) -> Predictions:
        return self._run(sequences)

    @bentoml.api(route="/predict_nobatch")
    def predict_nobatch(self, sequences: Sequences) -> Predictions:
        """The same engine without adaptive batching: one request per engine call (for comparison)."""
        return self._run(sequences)

    def _run(self, sequences: list) -> list[dict]:
        started = time.perf_counter()
        try:
            probs, attention, stats = self.engine.infer(sequences)
        except Exception:
            self.metrics.failed(len(sequences))
            raise
        self.metrics.observe(sequences, stats, probs, started)
        return self.engine.format(probs, attention)


SeqServe.add_asgi_middleware(RejectionCounter)


__all__ = ["SeqServe"]
