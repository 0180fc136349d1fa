"""The patches of BentoML internals (pinned bentoml 1.4): the batcher's learned idle wait is capped, its
request metrics are labelled by known route (``bound_metric_paths``, see service/core/guard.py), and the media
type of an API's answers is worked out once per type (``cache_mime_types``).

**The adaptive batcher, with one fix: its learned idle wait is capped.**

BentoML's ``CorkDispatcher`` collects requests into batches (seqserve keeps it for that). Before it
dispatches, it idles while ``n * (age of newest + per-item cost) <= 0.95 * mean recent wait``. "Recent wait"
includes the time requests queued behind the batch then running. So after a burst, a lone request at
low load idles for the burst's queueing time (measured: c=1 latency 3.6 ms on a fresh server, 10-20 ms
after load, for minutes). The idle wait buys nothing while the model is free.

``cap_learned_wait`` caps the optimiser's ``wait`` at ``SEQSERVE_BATCH_WAIT_MS`` (default 2 ms) after each
refresh. While the model is busy, requests still pile up and leave together as one batch, so batching under
load is unchanged. The patch targets bentoml 1.4 (pinned <1.5). If the internals move, it logs and
does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from service.core.guard import INFRA_PATHS, UNKNOWN_PATH

log = logging.getLogger("seqserve")


def cap_learned_wait(max_wait_s: float) -> bool:
    """Patch ``Optimizer.trigger_refresh`` to cap ``wait``; True if applied (idempotent)."""
    try:
        from bentoml._internal.marshal.dispatcher import Optimizer
    except ImportError:
        log.warning("seqserve: BentoML dispatcher internals not found; batch wait not capped")
        return False
    original = getattr(Optimizer.trigger_refresh, "__wrapped__", Optimizer.trigger_refresh)

    def trigger_refresh(self) -> None:  # noqa: ANN001
        original(self)
        self.wait = min(self.wait, max_wait_s)

    trigger_refresh.__wrapped__ = original
    Optimizer.trigger_refresh = trigger_refresh
    return True


def cache_mime_types() -> bool:
    """BentoML works out the media type of every answer from its pydantic model's JSON schema, generating the
    schema again for each response (``IOMixin.mime_type``): measured with py-spy under an open loop of 200
    requests/s, 9.5% of the classifier's model service CPU (issue 26). The answer depends on the class alone
    (its ``media_type`` and schema), so it is kept per class. True if applied (idempotent)."""
    try:
        from _bentoml_sdk.io_models import IOMixin
    except ImportError:
        log.warning("seqserve: BentoML IO model internals not found; media types not cached")
        return False
    method = IOMixin.__dict__.get("mime_type")
    original = getattr(method, "__func__", None)
    if original is None:
        return False
    original = getattr(original, "__wrapped__", original)
    known: dict[type, str] = {}

    def mime_type(cls: type) -> str:
        if cls not in known:
            known[cls] = original(cls)
        return known[cls]

    mime_type.__wrapped__ = original  # type: ignore[attr-defined]
    IOMixin.mime_type = classmethod(mime_type)  # type: ignore[method-assign,assignment]
    return True


def bound_metric_paths(known: Iterable[str], template: Callable[[str], str | None] = lambda p: None) -> bool:
    """Label BentoML's request metrics by known route, V2 route template or ``/{unknown}`` (see the module doc;
    the request itself still sees its real path). True if applied; the patch targets bentoml 1.4."""
    import copy

    try:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as M
    except ImportError:
        return False
    known = frozenset((*INFRA_PATHS, *known))
    original = getattr(M.__call__, "__wrapped__", M.__call__)

    def label(path: str) -> str:
        if path in known:
            return path
        return template(path) or ("/static_content/{file}" if path.startswith("/static_content/") else UNKNOWN_PATH)

    async def call(self: Any, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path", "") in known:
            return await original(self, scope, receive, send)
        proxy = copy.copy(self)  # the same metrics, its own inner app: the real scope goes on
        proxy.app = lambda _scope, r, s: self.app(scope, r, s)
        return await original(proxy, {**scope, "path": label(scope.get("path", ""))}, receive, send)

    call.__wrapped__ = original
    M.__call__ = call
    return True
