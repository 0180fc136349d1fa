"""Admin routes of the API service (issue 10), on only when ``SEQSERVE_ADMIN_TOKEN`` is set.

* ``POST /admin/retrain``: queue a retraining job (``service.core.store.jobs``); 202 with the job, or the job already
  queued or running (one at a time).
* ``GET /admin/retrain``: the current or last job (``state``: queued, running, promoted, rejected, skipped,
  failed; the retrain report), read from the database, so every worker and pod answers the same. A job queued
  longer than ``SEQSERVE_WORKER_CLAIM_S`` (60 s) comes with a ``warning``: no worker has claimed it.
* ``POST /admin/alert``: the Alertmanager webhook. A firing ``SeqserveInputDrift`` queues a job (trigger
  ``alert``, which respects the trainer's minimum of new items and cooldown). Other alerts are acknowledged and
  ignored.
* ``POST /admin/reload``: the model service looks at the champion pointer now instead of at its next poll
  (only the model worker that receives it).

Every route needs ``Authorization: Bearer <token>``: 401 when it is missing or wrong (constant-time
comparison; the token is never logged). Without the variable the routes answer 404, as if absent.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.store.jobs import Job, JobQueue

log = logging.getLogger("seqserve")
DRIFT_ALERT = "SeqserveInputDrift"
Handler = Callable[[Request], Awaitable[Response]]


def bearer(token: str) -> Callable[[Handler], Handler]:
    """Wrap an admin handler: 404 without a token configured, 401 unless ``Authorization: Bearer <token>``."""

    def guarded(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if not token:
                return JSONResponse({"error": "not found"}, status_code=404)
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                log.info("seqserve: admin request to %s refused (missing or wrong token)", request.url.path)
                return JSONResponse(
                    {"error": "admin routes need 'Authorization: Bearer <SEQSERVE_ADMIN_TOKEN>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)

        return check

    return guarded


def reload_route(token: str) -> Route:
    """``POST /admin/reload`` for any task whose model service has a ``reload`` API (the champion pointer now)."""

    async def reload(request: Request) -> Response:
        return JSONResponse(await bentoml.get_current_service().model.to_async.reload())

    return Route("/admin/reload", bearer(token)(reload), methods=["POST"])


def unclaimed(job: Job | None, claim_s: float, now: float | None = None) -> str | None:
    """Why a job has not started, when it has waited longer than ``claim_s`` for a worker (else None)."""
    if job is None or job.state != "queued":
        return None
    waited = (time.time() if now is None else now) - job.created_at
    if waited < claim_s:
        return None
    return (
        f"no worker has claimed this job in {waited:.0f} s (SEQSERVE_WORKER_CLAIM_S={claim_s:g}): is a trainer "
        "running against this database? (make worker, python -m training worker, or the seqserve-retrain-worker "
        "Deployment on Kubernetes)"
    )


def admin_routes(token: str, database: str, claim_s: float = 60.0) -> list[Route]:
    queue = functools.cache(lambda: JobQueue(database))  # one connection per API worker, opened on first use
    guarded = bearer(token)

    def answer(body: dict, job: Job | None, status: int = 200) -> JSONResponse:
        warning = unclaimed(job, claim_s)
        return JSONResponse({**body, **({"warning": warning} if warning else {})}, status_code=status)

    def queued(trigger: str) -> JSONResponse:
        job, new = queue().enqueue(trigger)
        return answer({"queued": new, "job": job.to_dict()}, job, 202)

    async def retrain(request: Request) -> Response:
        if request.method == "GET":
            job = queue().latest()
            return answer({"job": job.to_dict() if job else None}, job)
        return queued("api")

    async def alert(request: Request) -> Response:
        try:
            body = await request.json()
            alerts = body.get("alerts", [])
            drifting = any(
                a.get("status") == "firing" and a.get("labels", {}).get("alertname") == DRIFT_ALERT for a in alerts
            )
        except (ValueError, AttributeError, TypeError):
            return JSONResponse({"error": "body: expected an Alertmanager webhook payload"}, status_code=400)
        if not drifting:
            return JSONResponse({"queued": False, "reason": f"no firing {DRIFT_ALERT} alert"})
        return queued("alert")

    return [
        Route("/admin/retrain", guarded(retrain), methods=["GET", "POST"]),
        Route("/admin/alert", guarded(alert), methods=["POST"]),
        reload_route(token),
    ]
