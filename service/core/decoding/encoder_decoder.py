"""Step-level batching of an encoder-decoder with attention (translation): the step scheduler of
``service.core.decoding.scheduler`` with an encoder in front.

The model is two graphs (``Seq2SeqRunner``): the encoder reads a batch of source sentences once
(``encode(src [B, S], lengths [B]) -> memory [B, S, H], keys [B, S, H], mask [B, S], state [layers, B, H]...``)
and the decoder step advances any set of target rows by one token (``step(token [R], feed [R, H], memory [R, S, H],
keys, mask, state) -> log_probs [R, V], feed, attention [R, S], state``). What differs from a language model:

* "reading the prompt" is one encoder call for up to ``encode_streams`` waiting sentences of any lengths (padded to
  the longest; the mask keeps padding out of the attention), followed by the first decoding step from ``<s>``;
* each request keeps its encoder output (``Stream.context``: its own source length, no padding); a decoding step
  gathers the memory of its rows, padded to the longest source among them. A beam search's rows share their
  request's memory, so reordering beams moves only the recurrent state and the input feed (a state of one layer);
* the step's attention rows feed the beams' coverage (a coverage penalty) and, on request, the alignment.

Everything else (admission into slots, deadlines, cancellation, sampling, beam search, constraints such as a
target prefix, metrics, draining at a swap) is the base scheduler's.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from service.core.decoding.beam import Beams, Hypothesis
from service.core.decoding.scheduler import Scheduler
from service.core.decoding.streams import StepRequest, StepShape, Stream
from service.core.vocab import Vocabulary


class Seq2SeqRunner(Protocol):
    gen: StepShape

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]: ...

    def step(
        self, token: np.ndarray, feed: np.ndarray, memory: np.ndarray, keys: np.ndarray, mask: np.ndarray, states: list
    ) -> list[np.ndarray]: ...


class Seq2SeqRequest(StepRequest, Protocol):
    """A step request whose ``prompt`` is the source sentence's token ids (``</s>`` last)."""

    length_penalty: float  # hypotheses ranked by score / length ** length_penalty
    coverage_penalty: float  # beta of the coverage penalty (beam search)
    keep_attention: bool  # return the alignment
    early_stopping: str  # when a beam search stops (service.core.decoding.beam.STOPPING)


class EncoderDecoderScheduler(Scheduler):
    def __init__(
        self,
        model: Seq2SeqRunner,
        version: str,
        capacity: int,
        encode_streams: int,
        detokenize: object,
        metrics: object | None = None,
        request_batching: bool = False,
        interval: float = 0.0,
        vocab: Vocabulary | None = None,
    ) -> None:
        super().__init__(
            model,  # type: ignore[arg-type]
            version,
            capacity,
            model.gen.chunk,
            encode_streams,
            metrics,
            request_batching=request_batching,
            interval=interval,
            vocab=vocab,
        )
        self.seq2seq = model
        self.states.append(np.zeros((1, capacity, model.gen.hidden), np.float32))  # the input feed
        specials = model.gen.special_ids
        self.bos = specials["bos"]
        self._blocked = np.union1d(self._blocked, [specials["pad"]]).astype(np.int64)
        self.detokenize = detokenize  # token ids -> text (the tokenizer's decode)
        self._context: dict[int, tuple[np.ndarray, ...]] = {}  # slot -> its request's (memory, keys, mask)
        self._attn = np.zeros((0, 0), np.float32)  # the last step's attention
        self._row_of: dict[int, int] = {}  # slot -> its row in the last step
        self._buffers: dict[str, np.ndarray] = {}  # the step's memory, keys and mask (see _gather)

    # --- reading the source: one encoder call, then the first step from <s> -------------------------------
    def _prefill(self, streams: list[Stream]) -> None:
        t0 = time.perf_counter()
        lengths = np.array([len(s.req.prompt) for s in streams], np.int64)
        src = np.zeros((len(streams), int(lengths.max())), np.int64)
        for i, s in enumerate(streams):
            src[i, : lengths[i]] = s.req.prompt
        memory, keys, mask, *state = self.seq2seq.encode(src, lengths)
        if self.metrics is not None:
            self.metrics.encoded(len(streams), int(lengths.sum()), time.perf_counter() - t0)
        for i, s in enumerate(streams):
            n = lengths[i]
            s.context = (memory[i, :n], keys[i, :n], mask[i, :n])
            for slot in s.slots:
                self._context[slot] = s.context
            for st, v in zip(self.states, state):
                st[:, s.slots[0]] = v[:, i]
            self.states[-1][:, s.slots[0]] = 0.0
            s.read = n
        first = np.full((len(streams), 1), self.bos, np.int64)
        self._choose(streams, self._call(first, lengths, [s.slots[0] for s in streams]))

    def _call(self, tokens: np.ndarray, lengths: np.ndarray, rows: list[int]) -> np.ndarray:
        t0 = time.perf_counter()
        memory, keys, mask = self._gather(rows)
        feed = self.states[-1][0, rows]
        logp, feed, attn, *new = self.seq2seq.step(
            tokens[:, 0], feed, memory, keys, mask, [st[:, rows] for st in self.states[:-1]]
        )
        for st, n in zip(self.states, new):
            st[:, rows] = n
        self.states[-1][0, rows] = feed
        self._attn, self._row_of = attn, {slot: i for i, slot in enumerate(rows)}
        self.steps += 1
        if self.metrics is not None:
            self.metrics.step(len(rows), time.perf_counter() - t0)
        return logp

    def _gather(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows' encoder outputs, padded to the longest source among them (runs of one request's rows are
        written at once), in buffers kept between steps: a step writes every element it hands over, and never
        allocates (a fresh array of this size per step cost more in page faults than the copy)."""
        contexts = [self._context[r] for r in rows]
        width = max(c[2].shape[0] for c in contexts)
        hidden = contexts[0][0].shape[1]
        memory = self._buffer("memory", (len(rows), width, hidden))
        keys = self._buffer("keys", (len(rows), width, hidden))
        mask = self._buffer("mask", (len(rows), width))
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and contexts[end] is contexts[start]:
                end += 1
            m, k, a = contexts[start]
            n = a.shape[0]
            memory[start:end, :n], keys[start:end, :n], mask[start:end, :n] = m, k, a
            memory[start:end, n:], keys[start:end, n:], mask[start:end, n:] = 0.0, 0.0, 0.0
            start = end
        return memory, keys, mask

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        if self._buffers.get(name, np.empty(0)).size < size:
            self._buffers[name] = np.empty(size, np.float32)
        return self._buffers[name][:size].reshape(shape)

    # --- attention, scores, text -------------------------------------------------------------------------
    def _attention(self, s: Stream, rows: int) -> np.ndarray:
        n = len(s.req.prompt)
        return self._attn[[self._row_of[slot] for slot in s.slots[:rows]], :n]

    def _beams(self, s: Stream) -> Beams:
        r: Seq2SeqRequest = s.req  # type: ignore[assignment]
        return Beams(
            r.num_beams,
            r.max_new_tokens,
            self.vocab.eos,
            r.length_penalty,
            r.coverage_penalty,
            r.keep_attention,
            r.early_stopping,
        )

    def _take(self, s: Stream, token: int, row: np.ndarray, now: float) -> None:
        if s.req.keep_attention:  # type: ignore[attr-defined]
            s.attention.append(self._attention(s, 1)[0])
        super()._take(s, token, row, now)

    def _grow(self, s: Stream, token: int) -> str:
        return self.detokenize(s.tokens)  # type: ignore[operator]

    def _text(self, tokens: list[int]) -> str:
        return self.detokenize(tokens)  # type: ignore[operator]

    def _summarise(self, s: Stream, summary: dict, beams: list | None) -> None:
        """Every stream answers ``hypotheses`` (``n_best`` of them, best first): text, score (the length-normalised
        log-probability, with the coverage penalty), tokens (``</s>`` counted) and, on request, ``attention``
        ``[source tokens][target tokens]``."""
        r: Seq2SeqRequest = s.req  # type: ignore[assignment]
        if beams is None:  # greedy or sampled: one hypothesis
            beams = [Hypothesis(s.tokens, s.logprobs, float(sum(s.logprobs)), summary["finish_reason"])]
            beams[0].attention = s.attention
        out = []
        for h in beams[: r.n_best]:
            one = {"text": self._text(h.tokens), "score": h.normalised(r.length_penalty), "tokens": len(h.tokens)}
            one["finish_reason"] = h.reason
            if r.keep_attention and h.attention:
                one["attention"] = np.round(np.stack(h.attention).T.astype(np.float64), 4).tolist()
                one["target_ids"] = h.tokens
            out.append(one)
        summary["hypotheses"] = out
        summary["score"] = out[0]["score"]
        summary.pop("beams", None)
        summary.pop("logprobs", None)

    def _finish(self, s: Stream, *args: object, **kwargs: object) -> None:
        if not s.finished:
            for slot in s.slots:
                self._context.pop(slot, None)
        super()._finish(s, *args, **kwargs)  # type: ignore[arg-type]
