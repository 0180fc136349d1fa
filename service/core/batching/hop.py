"""The internal hop between an API worker and the model service, as arrays.

One call carries a ``Pack``: every sequence of the call in one contiguous float32 array ``[sum T, F]`` with
int64 lengths, their arrival times and deadlines as float64 arrays, and the API worker's pid. The answer is an
``Answer``: probabilities ``[n, C]``, every attention weight in one float32 array ``[sum T]``, which sequences
were computed, the model version, and when the batch started and finished on the model service (for the
request's stage timings, ``service.core.stages``). Both are named tuples sent as plain tuples (no project class crosses
BentoML's pickle, and its argument model would turn other classes into dicts); ``Pack(*t)`` names the fields
again on arrival. BentoML pickles them with
protocol 5, so each array travels as one out-of-band buffer: a call costs the same few objects whether it holds
1 sequence or 256 (it was one pickled tuple with its own array per sequence, in both directions).

In the API worker, ``pack`` and ``unpack`` convert to and from the per-sequence items the request code uses
(``(received_at, pid, float32 [T, F], deadline)`` -> ``(probabilities, attention, version, stamps)`` or None,
``stamps``: the call's ``(sent, batch started, batch finished, back)``);
in the model service, ``merge`` joins the packs of one adaptive batch and ``split`` cuts its answer.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from service.core.guard import deadline


class Pack(NamedTuple):
    x: np.ndarray  # float32 [sum T, F]
    lengths: np.ndarray  # int64 [n]
    received: np.ndarray  # float64 [n] (time.perf_counter of the API worker's request start)
    deadline: np.ndarray  # float64 [n] (time.perf_counter; the machine's monotonic clock)
    pid: int

    @property
    def count(self) -> int:
        return len(self.lengths)

    def sequences(self) -> list[np.ndarray]:
        """The sequences as views of ``x`` (no copies)."""
        return np.split(self.x, np.cumsum(self.lengths[:-1])) if len(self.lengths) else []


class Answer(NamedTuple):
    probs: np.ndarray  # float32 [n, C]; rows of sequences not computed are zeros
    attention: np.ndarray  # float32 [sum T]
    computed: np.ndarray  # bool [n]: False where the deadline passed while queued (not computed)
    version: str
    started: float = 0.0  # time.perf_counter on the model service: the batch started...
    finished: float = 0.0  # ...and finished


def pack(items: list[tuple[float, int, np.ndarray, float]]) -> Pack:
    """Per-sequence items -> one ``Pack``."""
    seqs = [np.asarray(s, dtype=np.float32) for _, _, s, _ in items]
    return Pack(
        np.concatenate(seqs) if seqs else np.zeros((0, 0), np.float32),
        np.fromiter((len(s) for s in seqs), np.int64, len(seqs)),
        np.fromiter((r for r, _, _, _ in items), np.float64, len(items)),
        np.fromiter((d for _, _, _, d in items), np.float64, len(items)),
        items[0][1] if items else 0,
    )


def unpack(answer: Answer, lengths: np.ndarray, sent: float = 0.0, back: float = 0.0) -> list[Any]:
    """An ``Answer`` -> per-sequence ``(probabilities, attention, version, stamps)``, None where not computed;
    ``sent`` and ``back``: when the call left the API worker and its answer arrived."""
    answer = Answer(*answer)
    attention = np.split(answer.attention, np.cumsum(lengths[:-1])) if len(lengths) else []
    stamps = (sent, answer.started, answer.finished, back)
    return [
        (p, a, answer.version, stamps) if ok else None
        for p, a, ok in zip(answer.probs, attention, answer.computed.tolist())
    ]


def merge(packs: list[Pack]) -> Pack:
    """The packs of one adaptive batch as one (their order kept)."""
    if len(packs) == 1:
        return packs[0]
    return Pack(
        np.concatenate([p.x for p in packs]),
        np.concatenate([p.lengths for p in packs]),
        np.concatenate([p.received for p in packs]),
        np.concatenate([p.deadline for p in packs]),
        -1,  # several API workers; ``sources`` counts them
    )


def sources(packs: list[Pack]) -> int:
    """How many API workers sent the sequences of a batch."""
    return len({p.pid for p in packs})


def split(answer: Answer, packs: list[Pack]) -> list[Answer]:
    """The merged batch's answer cut back into one per pack."""
    if len(packs) == 1:
        return [answer]
    out, row, step = [], 0, 0
    for p in packs:
        n, steps = p.count, int(p.lengths.sum())
        out.append(
            Answer(
                answer.probs[row : row + n],
                answer.attention[step : step + steps],
                answer.computed[row : row + n],
                answer.version,
                answer.started,
                answer.finished,
            )
        )
        row, step = row + n, step + steps
    return out


def request_items(sequences: list[np.ndarray]) -> list[tuple[float, int, np.ndarray, float]]:
    """A request's sequences as per-sequence items ``(received_at, pid, float32 [T, F], deadline)``: when the
    request was parsed (a validated array carries ``received_at``), this API worker, the request's deadline."""
    pid, due = os.getpid(), deadline()
    return [(getattr(s, "received_at", 0.0), pid, np.asarray(s), due) for s in sequences]
