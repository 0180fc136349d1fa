"""What the two decoding rooms' services (generation, translation) do alike around their schedulers, once.

* ``Outboxes`` (model service): one ``Outbox`` per API worker, the far end of that worker's token channel;
* ``dispatch``: a scheduler step's emits, run on the model service's event loop;
* ``worker_channel`` (API worker): this process's token channel to the model service, opened on first use;
* ``cancel_on_disconnect`` (API worker): while a request decodes, drop its streams if its client goes away;
* ``Retiring``: a swapped-out model's scheduler drains (finishes what it has), then its metric series go.
"""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
from starlette.requests import Request

from service.core.decoding.channel import Channel, Outbox


class Outboxes:
    """The model service's outbox per API worker (``worker`` names its channel)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._by_worker: dict[str, Outbox] = {}

    def __call__(self, worker: str) -> Outbox:
        if worker not in self._by_worker:
            self._by_worker[worker] = Outbox(self.interval)
        return self._by_worker[worker]


def dispatch(batch: list) -> None:
    for emit, event in batch:
        emit(event)


_CHANNEL: Channel | None = None


def worker_channel() -> Channel:
    """This API worker's token channel (one per process, opened on first use)."""
    global _CHANNEL
    if _CHANNEL is None:
        model = bentoml.get_current_service().model
        _CHANNEL = Channel(lambda worker: model.to_async.channel(worker=worker))
    return _CHANNEL


async def cancel_on_disconnect(request: Request, model: Any, request_id: str) -> None:
    """Until cancelled (the request ended): if its client disconnects, tell the model service to drop it."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    await model.to_async.cancel(request_id=request_id)


class Retiring:
    """An old model at a swap: its scheduler drains, then its series go (``engine``: ``scheduler``, ``metrics``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def retire(self) -> None:
        self.engine.scheduler.drain()
        self.engine.metrics.retire()
