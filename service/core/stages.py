"""Where a request's time goes (issue 26): one timeline per request, its stages as histograms.

``seqserve_stage_seconds{stage}`` (buckets from 0.1 ms to 5 s), recorded by the API worker when the response
has been sent, for every request that reached the model service (a refused request has no model stages). The
classifier's ``/predict`` and V2 infer:

===============  ===============================================================================================
``parse``        request arrived at the guard (``service.core.guard``) -> the handler runs: the body read,
                 BentoML's and our validation, the arrays built
``queue``        -> the internal call that carries it leaves: waiting in this API worker's coalescer
                 (``service.core.batching.coalesce``) for a call in flight to finish
``to_batch``     -> its batch starts on the model service: pickling, the local HTTP hop, BentoML's batch queue
                 (the adaptive batcher's wait), unpickling
``compute``      -> the batch ends: merge, padding, ONNX Runtime, the model's metrics
``from_batch``   -> the answer is back in the API worker: the hop home and unpickling
``respond``      -> the response is sent: the JSON written and handed to the server
``total``        arrival at the guard -> response sent (the client also sees the server's read of the
                 request before the guard and the write after it)
===============  ===============================================================================================

``seqserve_gc_pause_seconds{generation}``: every garbage collection of every process that called
``watch_gc`` (all services, at start-up), by the generation collected: a pause stalls every request of that
process, so it shows in the stages above without a stage of its own.

Each is a perf_counter time; CLOCK_MONOTONIC is one clock for every process of the machine, so the model
service's two stamps (carried back in ``service.core.batching.hop.Answer``) fall between the API worker's.
Cost: one small object per request and seven histogram observations (prometheus_client's multiprocess files
are memory maps: no system call per observation). ``make profile-tail`` reads the histograms under load.
"""

from __future__ import annotations

import contextvars
import gc
import time
from dataclasses import dataclass

from prometheus_client import Histogram

STAGES = ("parse", "queue", "to_batch", "compute", "from_batch", "respond", "total")
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
STAGE_SECONDS = Histogram(
    "seqserve_stage_seconds",
    "Time a request spent in each stage of the serving path (service/core/stages.py)",
    ["stage"],
    buckets=STAGE_BUCKETS,
)


GC_PAUSE_SECONDS = Histogram(
    "seqserve_gc_pause_seconds",
    "Garbage collection pauses of the service's processes, by generation collected",
    ["generation"],
    buckets=STAGE_BUCKETS,
)


@dataclass
class Timeline:
    """One request's stamps (``time.perf_counter``); 0 where the request never got there."""

    arrived: float
    handled: float = 0.0
    sent: float = 0.0
    batch_started: float = 0.0
    batch_finished: float = 0.0
    back: float = 0.0

    def called(self, sent: float, batch_started: float, batch_finished: float, back: float) -> None:
        self.sent, self.batch_started, self.batch_finished, self.back = sent, batch_started, batch_finished, back

    def durations(self, responded: float) -> dict[str, float]:
        """Each stage's seconds; empty if the request never came back from the model service."""
        if not (self.handled and self.back):
            return {}
        return {
            "parse": self.handled - self.arrived,
            "queue": self.sent - self.handled,
            "to_batch": self.batch_started - self.sent,
            "compute": self.batch_finished - self.batch_started,
            "from_batch": self.back - self.batch_finished,
            "respond": responded - self.back,
            "total": responded - self.arrived,
        }


TIMELINE: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar("seqserve_timeline", default=None)
_CHILDREN: dict[str, object] = {}


def begin(arrived: float) -> Timeline:
    """A request arrived (the guard): its timeline, current for the code that serves it."""
    timeline = Timeline(arrived)
    TIMELINE.set(timeline)
    return timeline


def current() -> Timeline | None:
    return TIMELINE.get()


def handled() -> None:
    """The handler runs (parsing and validation are over)."""
    timeline = TIMELINE.get()
    if timeline is not None:
        timeline.handled = time.perf_counter()


def called(stamps: tuple[float, float, float, float]) -> None:
    """The model service answered: its call's ``(sent, batch started, batch finished, back)``."""
    timeline = TIMELINE.get()
    if timeline is not None:
        timeline.called(*stamps)


def finish(timeline: Timeline, responded: float) -> None:
    """The response was sent: observe the stages the request went through."""
    for stage, seconds in timeline.durations(responded).items():
        child = _CHILDREN.get(stage)
        if child is None:
            child = _CHILDREN[stage] = STAGE_SECONDS.labels(stage)
        child.observe(max(0.0, seconds))  # type: ignore[attr-defined]


_GC_STARTED = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _GC_STARTED[0] = time.perf_counter()
    elif _GC_STARTED[0]:
        GC_PAUSE_SECONDS.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - _GC_STARTED[0])
        _GC_STARTED[0] = 0.0


def watch_gc() -> None:
    """Time every garbage collection of this process into ``seqserve_gc_pause_seconds`` (idempotent)."""
    if _on_gc not in gc.callbacks:
        for generation in range(3):  # the series exist (at 0) before the first collection
            GC_PAUSE_SECONDS.labels(str(generation))
        gc.callbacks.append(_on_gc)
