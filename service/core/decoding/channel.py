"""The token channel between the language model's service and an API worker.

One streaming call per API worker (``LMModel.channel``) carries the events of all that worker's generations,
instead of one call per generation: the model service's event loop then writes one chunk per API worker per
flush, not one per stream per token, which was what bound its process (the scheduler thread and the event
loop share one interpreter lock).

* ``Outbox`` (model service, one per API worker): the events the scheduler emits, per request; a stream's first
  text and its last event leave at once, other text at most every ``interval`` per stream (what arrives in
  between goes out as one event, ``merge_text``); a flush takes along every stream that is nearly due, so
  flushes carry many streams. Lines: ``{"id": request id, ...event}``.
* ``Channel`` (API worker): keeps the call open (calling again when it ends: a call lasts at most
  ``CHANNEL_SECONDS``, within BentoML's request timeout; events wait in the outbox meanwhile) and hands each
  event to the request waiting for it. If the call fails, every request of that worker gets an error event.
* ``sse``: one event as a server-sent event, for a request that streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable

log = logging.getLogger("seqserve")
CHANNEL_SECONDS = 240.0
NEARLY_DUE = 0.75  # a flush takes along streams whose last text left at least this share of an interval ago


def merge_text(events: list[dict]) -> list[dict]:
    """Consecutive text events as one (their text joined, the last token count, the log-probabilities joined)."""
    out: list[dict] = []
    for e in events:
        if out and "event" not in e and "event" not in out[-1]:
            last = out[-1]
            last["text"] += e["text"]
            last["tokens"] = e["tokens"]
            if "logprobs" in e:
                last["logprobs"] = last.get("logprobs", []) + e["logprobs"]
        else:
            out.append(dict(e))
    return out


class Outbox:
    """The model service's side: events per request, sent in flushes (see the module doc)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pending: dict[str, list[dict]] = {}
        self.sent_at: dict[str, float] = {}  # streams that have sent text; absent: the first text is due now
        self.wake = asyncio.Event()

    def put(self, request_id: str, event: dict) -> None:
        """On the event loop (the scheduler's emits are handed over once per step)."""
        self.pending.setdefault(request_id, []).append(event)
        if request_id not in self.sent_at or "event" in event:
            self.wake.set()

    def _due(self, now: float, slack: float) -> list[str]:
        return [
            rid
            for rid, evs in self.pending.items()
            if rid not in self.sent_at or "event" in evs[-1] or now >= self.sent_at[rid] + self.interval * slack
        ]

    async def chunks(self) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        end = loop.time() + CHANNEL_SECONDS
        while loop.time() < end:
            now = loop.time()
            if self._due(now, 1.0):
                lines = []
                for rid in self._due(now, NEARLY_DUE):
                    events = self.pending.pop(rid)
                    lines += [json.dumps({"id": rid, **e}) for e in merge_text(events)]
                    if "event" in events[-1]:
                        self.sent_at.pop(rid, None)
                    else:
                        self.sent_at[rid] = now
                yield "\n".join(lines) + "\n"
                continue
            due = min((self.sent_at[r] + self.interval for r in self.pending if r in self.sent_at), default=None)
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.0, (due or now + 1.0) - now))
            except TimeoutError:
                pass


class Channel:
    """An API worker's side: one open channel call, events routed to the requests waiting for them."""

    def __init__(self, open_call: Callable[[str], AsyncIterator[str]]) -> None:
        self.worker = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._open_call = open_call
        self._queues: dict[str, asyncio.Queue] = {}
        self._task: asyncio.Task | None = None

    def register(self, request_id: str) -> None:
        """Before the request is submitted, so that none of its events can arrive unclaimed."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        self._queues[request_id] = asyncio.Queue()

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def events(self, request_id: str) -> AsyncGenerator[dict, None]:
        """The request's events, up to and including its ``done`` or ``error``."""
        queue = self._queues[request_id]
        try:
            while True:
                event = await queue.get()
                last = event.get("event") in ("done", "error")
                yield event
                if last:
                    return
        finally:
            self.unregister(request_id)

    async def _run(self) -> None:
        while True:
            buffer = ""
            try:
                async for chunk in self._open_call(self.worker):
                    buffer += chunk
                    *lines, buffer = buffer.split("\n")
                    for line in lines:
                        if line:
                            event = json.loads(line)
                            queue = self._queues.get(event.pop("id"))
                            if queue is not None:
                                queue.put_nowait(event)
            except Exception as e:  # noqa: BLE001 - the model service restarted or the call broke
                log.warning("seqserve: token channel to the model service failed (%s); calling again", e)
                for queue in self._queues.values():
                    queue.put_nowait({"event": "error", "error": f"model service connection lost: {e}"})
                self._queues.clear()
                await asyncio.sleep(0.5)


def sse(event: dict) -> bytes:
    """One server-sent event: text chunks as ``data:``; ``event: done`` / ``event: error`` with their data."""
    kind = event.get("event")
    data = json.dumps({k: v for k, v in event.items() if k != "event"}, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {kind}\n" if kind else "").encode() + f"data: {data}\n\n".encode()
