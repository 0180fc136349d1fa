"""``SEQSERVE_GENERATE_MODE=per-request``: the benchmark's baseline for generation (``make bench-generate``).

What a user of a general server writes: each request runs its own decoding loop of batch-1 steps in its own
thread. Built from a ``Scheduler`` of one request each, on the same session, workers and ORT options as the
step scheduler, so the comparison measures the batching and nothing else.
"""

from __future__ import annotations

from typing import Any

from service.core.decoding.scheduler import Scheduler, StepRunner
from service.tasks.generate.metrics import GenerateMetrics


class PerRequestLoops:
    """``SEQSERVE_GENERATE_MODE=per-request``, the benchmark's baseline: what a user of a general server writes.
    Each request runs its own decoding loop of batch-1 steps in its own thread (a ``Scheduler`` of one request),
    on the same session, workers and ORT options as the step scheduler."""

    def __init__(self, model: StepRunner, version: str, metrics: GenerateMetrics) -> None:
        self.model, self.version, self.metrics = model, version, metrics
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
        sched = Scheduler(self.model, self.version, req.num_beams, self.model.gen.chunk, 1, self.metrics)
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
