"""Step-level continuous batching of text generation: every decoding step of every active request in one call.

One ``Scheduler`` per served language model, in the model service (one thread running ONNX Runtime). It keeps
the state of every stream (``h``, and ``c`` for an LSTM: ``[layers, hidden]`` each, a few KB whatever the
length) in preallocated arrays of ``capacity`` slots. Each turn of its loop:

1. admits waiting requests into free slots (a request takes one slot, a beam search ``num_beams``);
2. drops cancelled requests (the client went away): their slots are free for the next turn;
3. reads prompts: one call advances up to ``prefill_streams`` prompts by up to ``chunk`` tokens each (prompts
   of different lengths share the call: the graph takes each stream's own length), so a long prompt is read
   over several turns and never stalls the streams that are decoding; a prompt read to its end yields that
   request's first token;
4. decodes: one call advances every decoding stream by the token it chose last (K = 1), then each stream
   chooses its next token (``service.core.decoding.sampling``, ``service.core.decoding.beam``; a request's
   constraint, e.g. ``service.tasks.generate.forms``, masks the log-probabilities first), emits text, and
   finishes on ``<eos>`` (``end``), a stop string (``stop``) or ``max_new_tokens`` (``length``).

The scheduler is task-free: it runs any ``StepRunner`` (a step graph and its state shape) over
``StepRequest``s; the language model's are ``service.tasks.generate.engine.StepModel`` and
``service.tasks.generate.params.GenerateRequest``.

Results leave as events through each request's ``emit`` callback (called on the scheduler thread; the model
service hands them to its event loop once per step). A swapped-out model's scheduler finishes the streams it
has (``drain``) while the new model's takes new requests.

Determinism: a request's samples come from its own generator (seed), its rows of the step are computed
independently of the other rows (the export's batch-invariance gate, and ``sample_row`` on 1-D slices), so
the same request and seed give the same text alone or among hundreds of others on CPU.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from service.core.decoding.beam import Beams
from service.core.decoding.sampling import choose
from service.core.decoding.streams import Emit, StepRequest, StepRunner, Stream
from service.core.vocab import Vocabulary

log = logging.getLogger("seqserve")
PREFILL_GATHER = 4  # prompts read in one call while others decode (measured: 1 prompt 2.9 ms, 4 prompts 3.6 ms)
PREFILL_WAIT_S = 0.015  # ...or as soon as the oldest waiting prompt has waited this long


class Scheduler:
    def __init__(
        self,
        model: StepRunner,
        version: str,
        capacity: int,
        chunk: int,
        prefill_streams: int,
        metrics: object | None = None,
        request_batching: bool = False,
        interval: float = 0.0,
        vocab: Vocabulary | None = None,
    ) -> None:
        gen = model.gen
        self.model, self.version, self.capacity = model, version, capacity
        self.chunk, self.prefill_streams = min(chunk, gen.chunk), prefill_streams
        self.vocab = vocab or Vocabulary(gen)  # made once per model (a per-request loop passes it in)
        self._blocked = np.flatnonzero(~self.vocab.writable)  # never written: <unk>, <bos>
        shape = (gen.layers, capacity, gen.hidden)
        self.states = [np.zeros(shape, np.float32) for _ in gen.state_names]
        self.free = list(range(capacity - 1, -1, -1))
        self.waiting: queue.SimpleQueue[Stream] = queue.SimpleQueue()
        self.pending: list[Stream] = []  # admitted in order; waiting for slots
        self.active: list[Stream] = []
        self.metrics = metrics
        # Request-level batching (a comparison for the benchmark, SEQSERVE_GENERATE_MODE=request-batching): a batch
        # is formed only when the previous one has finished, and its answers leave together at its end, as a
        # batched call of a general server returns them.
        self.request_batching = request_batching
        self.interval = interval  # a stream's text leaves at most this often (its first text at once)
        self._held: list = []
        self.deliver: Callable[[list], None] | None = None  # hands a step's emits to the caller's event loop
        self._out: list = []
        self._wake = threading.Event()
        self._draining = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # --- the API of the model service --------------------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name=f"scheduler-{self.version}", daemon=True)
        self._thread.start()
        return self

    def submit(self, req: StepRequest, emit: Emit, deadline: float = float("inf")) -> Stream:
        stream = Stream(req, emit, time.perf_counter(), deadline=deadline)
        self.waiting.put(stream)
        self._wake.set()
        return stream

    def drain(self) -> None:
        """Finish the streams in flight, then stop (a newer model takes new requests)."""
        self._draining = True
        self._wake.set()

    @property
    def load(self) -> int:
        return len(self.active) + len(self.pending) + self.waiting.qsize()

    # --- the loop --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._admit()
            if not self.active:
                self._flush()  # what _admit finished (cancelled streams) leaves now, not at the next busy turn
                if self._draining and not self.pending and self.waiting.empty():
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                reading = [s for s in self.active if not s.decoding]
                decoding = [s for s in self.active if s.decoding and not s.finished]
                if reading and self._prefill_now(reading, decoding):
                    self._prefill(reading[: self.prefill_streams])
                    decoding = [s for s in self.active if s.decoding and not s.finished]
                if decoding:
                    self._decode(decoding)
            except Exception as e:  # noqa: BLE001 - a failed step fails its streams, never the scheduler
                log.exception("seqserve: generation step failed")
                for s in self.active:
                    self._finish(s, error=f"generation failed: {e}")
            self.active = [s for s in self.active if not s.finished]
            self._flush()
            if self.metrics is not None:
                self.metrics.active(len(self.active))

    def _emit(self, s: Stream, event: dict) -> None:
        self._out.append((s.emit, event))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.request_batching:
            self._held += out
            if self.active:
                return
            out, self._held = self._held, []
        if out and self.deliver is not None:
            self.deliver(out)
        else:
            for emit, event in out:
                emit(event)

    def _prefill_now(self, reading: list[Stream], decoding: list[Stream]) -> bool:
        """Read prompts now, or let a few more gather first? A prompt call costs about the same for 1 and for
        4 prompts (it runs as many sequential steps as its longest chunk), and as much as several decoding steps
        of every stream: so while streams are decoding, prompts are read when PREFILL_GATHER of them wait or
        the oldest has waited PREFILL_WAIT_S (a bounded cost to time to first token)."""
        if not decoding or len(reading) >= min(PREFILL_GATHER, self.prefill_streams):
            return True
        return time.perf_counter() - min(s.arrived for s in reading) >= PREFILL_WAIT_S

    def _admit(self) -> None:
        if self.request_batching and self.active:
            return
        while True:
            try:
                self.pending.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        still, now = [], time.perf_counter()
        for s in self.pending:
            need = s.req.num_beams
            if s.cancelled:  # gone before it got a slot: it ends like any cancelled stream
                self._finish(s, reason="cancelled")
                continue
            if s.deadline <= now:  # waited past its deadline: dropped, never computed
                if self.metrics is not None:
                    self.metrics.deadline_dropped()
                self._finish(s, error="deadline: passed while waiting for a generation slot", status=504)
                continue
            if len(self.free) < need or still:  # first come, first served
                still.append(s)
                continue
            s.slots = [self.free.pop() for _ in range(need)]
            for st in self.states:
                st[:, s.slots] = 0.0
            s.rng = np.random.default_rng(s.req.seed)
            if s.req.beam_search:
                s.beams = self._beams(s)
            self.active.append(s)
        self.pending = still
        for s in self.active:
            if s.cancelled and not s.finished:
                self._finish(s, reason="cancelled")
        self.active = [s for s in self.active if not s.finished]

    def _beams(self, s: Stream) -> Beams:
        return Beams(s.req.num_beams, s.req.max_new_tokens, self.vocab.eos)

    def _call(self, tokens: np.ndarray, lengths: np.ndarray, rows: list[int]) -> np.ndarray:
        t0 = time.perf_counter()
        logp, new = self.model.run(tokens, lengths, [st[:, rows] for st in self.states])
        for st, n in zip(self.states, new):
            st[:, rows] = n
        self.steps += 1
        if self.metrics is not None:
            self.metrics.step(len(rows), time.perf_counter() - t0)
        return logp

    def _prefill(self, streams: list[Stream]) -> None:
        chunks = [s.req.prompt[s.read : s.read + self.chunk] for s in streams]
        width = max(len(c) for c in chunks)
        tokens = np.zeros((len(streams), width), np.int64)
        for i, c in enumerate(chunks):
            tokens[i, : len(c)] = c
        lengths = np.array([len(c) for c in chunks], np.int64)
        logp = self._call(tokens, lengths, [s.slots[0] for s in streams])
        done = []
        for i, s in enumerate(streams):
            s.read += len(chunks[i])
            if s.decoding:
                done.append(i)
        if done:
            self._choose([streams[i] for i in done], logp[done])

    def _decode(self, streams: list[Stream]) -> None:
        rows, last = [], []
        for s in streams:
            n = len(s.beams.live) if s.beams else 1
            rows += s.slots[:n]
            last += [h.tokens[-1] for h in s.beams.live] if s.beams else [s.tokens[-1]]
        logp = self._call(np.array(last, np.int64)[:, None], np.ones(len(rows), np.int64), rows)
        self._choose(streams, logp)

    def _choose(self, streams: list[Stream], logp: np.ndarray) -> None:
        """Each stream's next token(s) from its rows of the step (``logp``, in order: a beam search has one
        row per live beam): mask, choose, emit, finish."""
        logp[:, self._blocked] = -np.inf  # never written: <unk>, <bos>
        plain, plain_rows, at = [], [], 0
        for s in streams:
            n = len(s.beams.live) if s.beams else 1
            rows = logp[at : at + n]
            at += n
            if s.cancelled:
                self._finish(s, reason="cancelled")
                continue
            c = s.req.constraint
            if c is not None:
                position = s.req.position + len(s.beams.live[0].tokens if s.beams else s.tokens)
                for row in rows:
                    c.mask(row, position, self.vocab)
            if s.beams is not None:
                self._beam_step(s, rows)
            else:
                plain.append(s)
                plain_rows.append(at - 1)
        if not plain:
            return
        mine = logp[plain_rows]
        tokens = choose(mine, [s.req.sampling for s in plain], [s.rng for s in plain])
        now = time.perf_counter()
        for s, token, row in zip(plain, tokens.tolist(), mine):
            self._take(s, token, row, now)

    def _take(self, s: Stream, token: int, row: np.ndarray, now: float) -> None:
        """``token`` is ``s``'s next: record it, emit the text it adds, finish if it ends the stream."""
        if self.metrics is not None:
            self.metrics.token(now - (s.last_token_at or s.arrived), first=not s.tokens)
        s.last_token_at = now
        s.tokens.append(token)
        if s.req.logprobs:
            s.logprobs.append(float(row[token]))
        if token == self.vocab.eos:
            self._finish(s, reason="end")
            return
        s.text = self._grow(s, token)
        reason, visible = self._stop_or_hold(s) if s.req.stop else ("", len(s.text))
        if reason:
            self._finish(s, reason=reason, text_end=visible)
        elif len(s.tokens) >= s.req.max_new_tokens:
            self._finish(s, reason="length")
        elif visible > s.sent and (not s.emitted_at or now - s.emitted_at >= self.interval):
            s.emitted_at = now
            self._emit_text(s, visible)

    def _grow(self, s: Stream, token: int) -> str:
        """``s``'s text with ``token`` (just appended to ``s.tokens``) added."""
        return s.text + self.vocab.gen.vocab[token]

    def _emit_text(self, s: Stream, end: int) -> None:
        """The text not yet sent up to ``end``, with the log-probabilities of the tokens since the last text."""
        event = {"text": s.text[s.sent : end], "tokens": len(s.tokens)}
        if s.req.logprobs:
            event["logprobs"] = s.logprobs[s.sent_logprobs :]
            s.sent_logprobs = len(s.logprobs)
        s.sent = end
        self._emit(s, event)

    def _stop_or_hold(self, s: Stream) -> tuple[str, int]:
        """("stop", where the text ends) if a stop string just appeared; else ("", how much text may be sent:
        all but a tail that could still become a stop string)."""
        hold = 0
        for stop in s.req.stop:
            i = s.text.find(stop, max(0, len(s.text) - len(stop) - 1))
            if i >= 0:
                return "stop", i
            for k in range(min(len(stop) - 1, len(s.text)), hold, -1):
                if s.text.endswith(stop[:k]):
                    hold = k
                    break
        return "", len(s.text) - hold

    def _beam_step(self, s: Stream, logp: np.ndarray) -> None:
        b = s.beams
        assert b is not None
        parents, _ = b.step(logp, self._attention(s, len(b.live)))
        src = [s.slots[p] for p in parents]
        for st in self.states:
            st[:, s.slots[: len(src)]] = st[:, src]
        if s.req.stop:  # a live beam whose text shows a stop string ends there
            j = 0
            while j < len(b.live):
                text = self._text(b.live[j].tokens)
                hit = min((i for i in (text.find(x) for x in s.req.stop) if i >= 0), default=-1)
                if hit < 0:
                    j += 1
                    continue
                b.finish_live(j, "stop", keep=hit)
                rest = s.slots[j : len(b.live) + 1]
                for st in self.states:
                    st[:, rest[:-1]] = st[:, rest[1:]]
        if self.metrics is not None:
            self.metrics.token(time.perf_counter() - (s.last_token_at or s.arrived), first=s.last_token_at == 0)
        s.last_token_at = time.perf_counter()
        if b.done:
            best = b.best()
            top = best[0]
            s.tokens, s.logprobs = top.tokens, top.logprobs
            s.text = self._text(top.tokens)
            self._finish(s, reason=top.reason, beams=best[: s.req.n_best])

    def _attention(self, s: Stream, rows: int) -> np.ndarray | None:
        """The last step's attention of ``s``'s first ``rows`` slots (a decoder without attention: None)."""
        return None

    def _summarise(self, s: Stream, summary: dict, beams: list | None) -> None:
        """A task's additions to a finished stream's summary (none here)."""

    def _text(self, tokens: list[int]) -> str:
        return self.vocab.text(tokens)

    def _finish(
        self,
        s: Stream,
        reason: str = "",
        text_end: int | None = None,
        error: str = "",
        beams: list | None = None,
        status: int = 500,
    ) -> None:
        if s.finished:
            return
        s.finished = True
        self.free.extend(s.slots)
        if error:
            self._emit(s, {"event": "error", "error": error, "status": status})
            return
        if reason == "cancelled":  # nobody reads this; it tells the channel the stream is over
            if self.metrics is not None:
                self.metrics.finished("cancelled", len(s.tokens))
            self._emit(s, {"event": "done", "finish_reason": "cancelled", "tokens": len(s.tokens)})
            return
        text = s.text[:text_end] if text_end is not None else s.text
        if s.beams is None and len(text) > s.sent:
            self._emit_text(s, len(text))
        summary = {
            "event": "done",
            "text": text,
            "tokens": len(s.tokens),
            "finish_reason": reason,
            "prompt_tokens": len(s.req.prompt),
            "model_version": self.version,
            "seed": s.req.seed,
        }
        if s.req.logprobs:
            summary["logprobs"] = s.logprobs
        if beams is not None:
            summary["score"] = beams[0].normalised(s.beams.alpha) if s.beams else None
            if s.req.n_best > 1:
                summary["beams"] = [
                    {"text": self._text(h.tokens), "score": h.normalised(s.beams.alpha), "tokens": len(h.tokens)}
                    for h in beams
                ]
        self._summarise(s, summary, beams)
        if self.metrics is not None:
            self.metrics.finished(reason, len(s.tokens))
        self._emit(s, summary)
