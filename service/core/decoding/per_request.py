"""``SEQSERVE_GENERATE_MODE=per-request`` / ``SEQSERVE_TRANSLATE_MODE=per-request``: the benchmarks' baseline.

What a user of a general server writes: each request runs its own decoding loop of batch-1 steps in its own
thread. Built from a scheduler of one request each (``make(slots)``: the task's ``Scheduler`` or
``EncoderDecoderScheduler`` on the same session, workers and ORT options as the step scheduler), so the
comparison measures the batching and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.core.decoding.scheduler import Scheduler


class PerRequestLoops:
    """One decoding loop per request (see the module doc); the step scheduler's API."""

    def __init__(self, make: Callable[[int], Scheduler]) -> None:
        self.make = make
        self.deliver = None
        self.capacity = 0
        self._running: set[Scheduler] = set()

    @property
    def load(self) -> int:
        return len(self._running)

    @property
    def active(self) -> list:
        return [s for sched in list(self._running) for s in sched.active]

    def submit(self, req: Any, emit: Any, deadline: float = float("inf")) -> Any:
        sched = self.make(req.num_beams)
        sched.deliver = self.deliver
        self._running.add(sched)

        def done(event: dict) -> None:
            if event.get("event") in ("done", "error"):
                self._running.discard(sched)
            emit(event)

        stream = sched.submit(req, done, deadline)
        sched.start().drain()
        return stream

    def drain(self) -> None:
        pass
