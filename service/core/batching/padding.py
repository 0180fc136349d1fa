"""Padding for variable-length sequences: plan length-sorted sub-batches, pad them into reused buffers.

A merged batch (sequences from many requests) is sorted by length and cut into contiguous sub-batches so
that each sub-batch wastes little compute on padding:

* ``B x T_max <= step_budget`` (bounds memory and the latency of one model call), and
* ``B <= max_batch``, and
* padding efficiency of the sub-batch (real steps / ``B x T_max``) stays >= ``min_efficiency``.

Padding itself writes each sequence into a preallocated zero buffer (one per thread, grown on demand and
never shrunk), so the hot path allocates nothing and loops once per sequence, never per time step.

**Shape buckets** (``bucket_shape``, used on CUDA): the padded ``[B, T]`` is rounded up to a few shapes (B to
a power of two, T to 1/8 of its octave), the extra rows being one-step zero sequences whose outputs are
dropped. On a GPU a call costs about the same for any B up to hundreds, while each shape the provider has not
seen yet costs set-up time; on a CPU the extra rows would be real work, so the CPU keeps exact shapes.
"""

from __future__ import annotations

import threading

import numpy as np


def plan_batches(lengths: np.ndarray, step_budget: int, max_batch: int, min_efficiency: float) -> list[np.ndarray]:
    """Return index arrays (into ``lengths``), shortest sequences first, one per sub-batch."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start, real = 0, 0
    for pos, i in enumerate(order):
        L = int(lengths[i])
        n = pos - start + 1  # size if this sequence joins; sorted, so it is the new T_max
        if n > 1 and (n > max_batch or n * L > step_budget or (real + L) < min_efficiency * n * L):
            groups.append(order[start:pos])
            start, real = pos, 0
        real += L
    groups.append(order[start:])
    return groups


def padding_efficiency(lengths: np.ndarray, groups: list[np.ndarray]) -> float:
    """Real time steps / padded time steps over all sub-batches."""
    padded = sum(len(g) * int(lengths[g].max()) for g in groups)
    return float(lengths.sum() / padded) if padded else 1.0


def bucket_shape(batch: int, steps: int) -> tuple[int, int]:
    """The bucketed ``(B, T)`` for a sub-batch of ``batch`` sequences, the longest ``steps`` long."""
    b = 1 << (batch - 1).bit_length()
    quantum = max(1, (1 << (steps.bit_length() - 1)) // 8)  # T < 16: exact; then at most 1/8 extra steps
    return b, -(-steps // quantum) * quantum


class PadBuffer:
    """A per-thread flat float32 buffer, viewed as a contiguous ``[B, T, F]`` array for each call."""

    def __init__(self, feature_dim: int) -> None:
        self.feature_dim = feature_dim
        self._local = threading.local()

    def pad(self, seqs: list[np.ndarray], buckets: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded ``x`` [B, T_max, F] (a view into the buffer) and int64 ``lengths`` [B]. With
        ``buckets``, B and T are rounded up by ``bucket_shape``; the extra rows have length 1."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        B, T, F = len(seqs), int(lengths.max()), self.feature_dim
        if buckets:
            B, T = bucket_shape(B, T)
            lengths = np.concatenate([lengths, np.ones(B - len(seqs), np.int64)])
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < B * T * F:
            buf = self._local.buf = np.empty(max(B * T * F, 2 * (buf.size if buf is not None else 0)), np.float32)
        x = buf[: B * T * F].reshape(B, T, F)
        x.fill(0.0)
        for row, s in zip(x, seqs):
            row[: len(s)] = s
        return x, lengths
