"""Coalescing in the API worker: concurrent requests' sequences go to the model service in one call.

Every call from an API worker to the model service costs a local HTTP round trip, pickling and a place in
the model service's batch queue. Under load many requests wait in one API worker at the same time, so
``Coalescer`` sends them together: a request starts a call at once while fewer than ``max_in_flight`` calls of
this worker are running (no added latency when idle); otherwise it joins the next call, which leaves as
soon as one finishes. Two calls in flight keep a batch queued at the model service while one runs.
Each request gets back exactly its own results, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[list[Any]], Awaitable[list[Any]]]


class Coalescer:
    def __init__(self, send: Send, max_in_flight: int = 2, max_items: int = 256) -> None:
        self.send, self.max_in_flight, self.max_items = send, max_in_flight, max_items
        self.pending: list[tuple[list[Any], asyncio.Future]] = []
        self.in_flight = 0
        self.calls = 0  # model service calls made (requests / calls = coalescing factor)

    async def submit(self, items: list[Any]) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((items, future))
        if self.in_flight < self.max_in_flight:
            self._launch()
        return await future

    def _launch(self) -> None:
        group, n = [], 0
        while self.pending and (not group or n + len(self.pending[0][0]) <= self.max_items):
            items, future = self.pending.pop(0)
            group.append((items, future))
            n += len(items)
        self.in_flight += 1
        self.calls += 1
        asyncio.get_running_loop().create_task(self._run(group))

    async def _run(self, group: list[tuple[list[Any], asyncio.Future]]) -> None:
        try:
            results = await self.send([item for items, _ in group for item in items])
        except Exception as e:  # noqa: BLE001 - every request of the call gets the error
            for _, future in group:
                if not future.done():
                    future.set_exception(e)
        else:
            start = 0
            for items, future in group:
                if not future.done():
                    future.set_result(results[start : start + len(items)])
                start += len(items)
        finally:
            self.in_flight -= 1
            if self.pending and self.in_flight < self.max_in_flight:
                self._launch()
