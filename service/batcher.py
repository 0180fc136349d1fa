"""BentoML's adaptive batcher, with one fix: its learned idle wait is capped.

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
