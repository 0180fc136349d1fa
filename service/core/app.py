"""What every task's two BentoML services do alike, once: boot, service configs, /metadata's model info, the
model-call retry, refusals, GC tuning, log filters, the guard.

A task's ``app.py`` (``service/tasks/<task>/app.py``) reads as its routes and its model service; the rest is here:

* ``boot(task)``: the settings (read once) and the artifact to serve (``SEQSERVE_MODEL``, else the task's
  champion), at import, because request types and OpenAPI limits come from the artifact. A model of another
  task is refused, naming the entry that serves it. ``boot_repository(task)``: the same for every entry of
  ``SEQSERVE_MODELS`` (service/core/repository.py), or the one model when it is unset.
* ``model_service_config`` / ``api_service_config``: the ``@bentoml.service`` arguments both tasks share.
* ``model_info()``: the model service's ``info()``, or ``Rejected`` (503) while it is starting or gone.
* ``call_again``: a call to the model service, made again when the kept-alive connection broke (calls are
  idempotent: inference has no side effects; ``submit`` is keyed by request id).
* ``refuse``: a ``Rejected`` as the JSON answer, counted by the task's counter.
* ``tune_gc``, ``ClientErrorFilter``, ``install_guard``: start-up of each worker.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse

from service.core import stages
from service.core.artifact import ENTRIES, Artifact, ModelNotFound, find_artifact
from service.core.bentoml_patches import cache_mime_types
from service.core.docs import DocsSite, inventory
from service.core.guard import Rejected, RequestGuard, request_id
from service.core.repository import TASK_CHAMPION, Entry, Repository
from service.core.settings import Settings
from service.core.store.champion import served_ref

log = logging.getLogger("seqserve")


@dataclass(frozen=True)
class Boot:
    settings: Settings
    artifact: Artifact
    source: str  # why this model is served: SEQSERVE_MODEL or champion


def boot(task: str) -> Boot:
    """The settings and the artifact a task's services serve (see the module doc)."""
    log.setLevel(logging.INFO)  # start-up facts (model, provider in use) go to BentoML's log handler
    settings = Settings()
    try:
        ref, source = served_ref(settings.model, settings.database, task=task)
    except ModelNotFound as e:  # one clear line, not a traceback; the launcher waits for a champion instead
        launch = f"python -m service.launch {ENTRIES[task]} ..."
        raise SystemExit(f"seqserve: {e}. `{launch}` (the images' entry point) serves /readyz 503 with the reason "
                         "until a champion is promoted") from None  # fmt: skip
    artifact = find_artifact(ref)
    if artifact.meta.task != task:
        other = artifact.meta.task  # a known task: the contract refused any other
        raise SystemExit(f"seqserve: {ref} is a {other} model; serve it with {ENTRIES[other]}")
    return Boot(settings, artifact, source)


def boot_repository(task: str) -> tuple[Settings, Repository]:
    """The settings and the models a task's services serve: each entry of ``SEQSERVE_MODELS`` with its
    artifact, or (unset) the one model of ``boot`` under the artifact's ``model_name``."""
    settings = Settings()
    if not settings.models:
        one = boot(task)
        pointer = None if settings.model else task
        return settings, Repository([Entry(0, one.artifact.meta.model_name, one.artifact, one.source, pointer, True)])
    log.setLevel(logging.INFO)
    entries: list[Entry] = []
    for i, spec in enumerate(settings.models):
        pointer = spec.follows(task)
        if pointer is None:
            ref, source = spec.ref, "SEQSERVE_MODELS"
        else:
            try:
                ref, source = served_ref("", settings.database, task=pointer)
            except ModelNotFound:
                named = "" if pointer == task else f" --name {spec.name}"
                raise SystemExit(f"seqserve: SEQSERVE_MODELS: no champion for {spec.name!r} yet (pointer {pointer!r}); "
                                 f"promote one: python -m export.promote REF{named}") from None  # fmt: skip
        artifact = find_artifact(ref)
        if artifact.meta.task != task:
            raise SystemExit(f"seqserve: SEQSERVE_MODELS: {spec.name}={ref} is a {artifact.meta.task} model; this "
                             f"server serves {task} models")  # fmt: skip
        entries.append(Entry(i, spec.name, artifact, source, pointer, spec.ref == TASK_CHAMPION))
    return settings, Repository(entries)


def model_service_config(name: str, settings: Settings, workers: int, timeout_s: int) -> dict[str, Any]:
    """``@bentoml.service`` arguments of a model service (the one that holds the session)."""
    return {
        "name": name,
        "workers": workers,
        "traffic": {"timeout": timeout_s},
        "logging": {"access": {"enabled": settings.access_log}},
        # BentoML's client replaces its connection pool every 100 requests by default and closes the old one
        # with calls still running on it (~1% of requests failed with "Server disconnected" under load).
        "runner_connection": {"max_requests": 2**31 - 1, "max_age": 1e9},
    }


def api_service_config(name: str, settings: Settings, timeout_s: int) -> dict[str, Any]:
    """``@bentoml.service`` arguments of an API service (HTTP, validation, JSON; no model)."""
    config: dict[str, Any] = {
        "name": name,
        "workers": settings.workers,
        "traffic": {"timeout": timeout_s},
        "logging": {"access": {"enabled": settings.access_log}},
    }
    if not settings.tracing:  # no spans at all (every URL holds "/"), unless SEQSERVE_TRACING=1
        config["tracing"] = {"excluded_urls": ["/"]}
    return config


async def model_info(**kwargs: Any) -> dict[str, Any]:
    """The model service's ``info()``; ``Rejected`` (503) if it is not there."""
    try:
        return await bentoml.get_current_service().model.to_async.info(**kwargs)
    except Exception as e:  # noqa: BLE001 - the model service is starting or gone
        raise Rejected(f"model service not available: {e}", reason="unavailable", status=503) from None


async def call_again(call: Callable[[], Awaitable[Any]], attempts: int = 2) -> Any:
    """``await call()``, again (up to ``attempts`` in all) when the connection broke: a keep-alive connection
    the model service closed as it was reused."""
    for attempt in range(attempts):
        try:
            return await call()
        except aiohttp.ClientConnectionError as e:
            if attempt == attempts - 1:
                raise
            log.info("seqserve: model service connection lost (%s); calling again", type(e).__name__)
    raise AssertionError("unreachable")


def refuse(e: Rejected, count: Callable[[str], None] | None = None) -> JSONResponse:
    """``{"error": message}`` with the refusal's status, its reason in ``x-seqserve-reason``; counted."""
    if count is not None:
        count(e.reason)
    headers = {"x-seqserve-reason": e.reason}
    if e.status in (429, 503):
        headers["retry-after"] = "1" if e.status == 429 else "30"
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)


LOW_NICE = 10  # SEQSERVE_CPU_PRIORITY=low


def start_process(settings: Settings) -> None:
    """What every service process does first, before it opens a session or starts a thread: BentoML's
    per-response media type cached (``service.core.bentoml_patches.cache_mime_types``), the CPUs of
    ``SEQSERVE_CPUS`` and the priority of ``SEQSERVE_CPU_PRIORITY`` taken (Linux applies both to the calling
    thread; the threads made afterwards, ONNX Runtime's and the scheduler's included, inherit them, and ONNX
    Runtime's thread count follows the CPUs left: ``service.core.runtime.available_cpus``)."""
    cache_mime_types()
    if settings.cpus:
        usable = settings.cpus & os.sched_getaffinity(0)
        if not usable:
            raise ValueError(f"SEQSERVE_CPUS: none of {sorted(settings.cpus)} is available here")
        os.sched_setaffinity(0, usable)
    if settings.cpu_priority == "low" and os.nice(0) < LOW_NICE:
        os.nice(LOW_NICE - os.nice(0))
    elif settings.cpu_priority == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def tune_gc() -> None:
    """Fewer, cheaper garbage collections in every worker: the tail latency was mostly GC pauses.

    Each request allocates many short-lived objects (parsed JSON numbers), so CPython's default thresholds
    (700 allocations) ran collections constantly, and full collections walked every long-lived object of
    BentoML, pydantic and ONNX Runtime. Freezing what exists after start-up moves it out of the collector's
    sight; a larger young-generation threshold makes collections rarer. Measured on 2 cores (jv, c=64):
    p99 259 -> 64 ms, 1,574 -> 1,711 seq/s (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    stages.watch_gc()  # seqserve_gc_pause_seconds: the pauses that remain, measured


class ClientErrorFilter(logging.Filter):
    """BentoML logs every 400 (pydantic ValidationError) as an ERROR traceback: make it one DEBUG line, shown
    only when the ``seqserve`` logger is at DEBUG (a client's mistake is counted in the rejection metrics, not
    logged on every request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = "rejected request on %s: %s", (record.args[0], exc.errors()[0]["msg"])
            record.msg += f" [request_id={request_id()}]"
            record._seqserve_rid = True
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return log.isEnabledFor(logging.DEBUG)
        return True


def quiet_client_errors() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorFilter())


def forbid_unknown_fields(service: Any) -> None:
    """Every JSON route of ``service`` (its ``@bentoml.api`` methods) refuses a field it does not take, as the
    routes that parse their own bodies do: one policy (issue 29). BentoML builds each route's pydantic input
    model from the method's signature with pydantic's default (extra fields ignored); this makes it ``forbid``,
    so ``{"sequences": ..., "foo": 1}`` is a 400 ``unknown_field`` naming ``foo``."""
    for api in service.apis.values():
        spec = api.input_spec
        if getattr(spec, "__root_input__", False):
            continue
        spec.model_config = {**spec.model_config, "extra": "forbid"}
        spec.model_rebuild(force=True)


def install_guard(
    service: Any, settings: Settings, json_paths: Iterable[str], on_reject: Callable[[str, str], None]
) -> None:
    """``RequestGuard`` (service/core/guard.py) on an API service, with the shared limits."""
    service.add_asgi_middleware(DocsSite, routes=inventory(service), title=service.name)  # /docs on every service
    service.add_asgi_middleware(
        RequestGuard,
        json_paths=tuple(json_paths),
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        deadline_ms=settings.deadline_ms,
        on_reject=on_reject,
    )


def session_info(slot: Any, settings: Settings) -> dict[str, Any]:
    """What /metadata reports about a model service's slot and session (both tasks' ``info()`` start here)."""
    e = slot.engine
    return {
        "model_version": e.model_version,
        "provider": e.info.provider,
        "provider_options": e.info.provider_options,
        "provider_fallback": e.info.fallback_reason,
        "load_check": e.info.check or None,
        "device_requested": settings.device,
        "ort_threads": e.ort_threads,
        "source": e.artifact.source,
        "served_because": slot.source,
    }
