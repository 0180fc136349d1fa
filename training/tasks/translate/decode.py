"""Greedy and beam decoding over any step function (torch or ONNX Runtime), for the run's metrics and the export's
parity check: the same driver runs both, so "token for token" compares the graphs and nothing else.

Arrays are numpy. ``enc`` is the encoder's output for N sentences: ``(memory [N, S, H], keys [N, S, H],
mask [N, S], h[, c] [layers, N, H])``. ``step(token [R], feed [R, H], memory, keys, mask, h[, c])`` advances R rows
and returns ``(log_probs [R, V], feed, attention [R, S], h[, c])``. Each row belongs to one sentence (its memory
is gathered per row); a sentence leaves the batch as soon as it is done. Beam search is
``service.core.decoding.beam.Beams``, the service's own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.core.decoding.beam import Beams, Hypothesis

Step = Callable[..., tuple[np.ndarray, ...]]
STOPPING = "heuristic"  # the translator's default early_stopping (service.tasks.translate.params.DEFAULT_STOPPING)


def max_lengths(src_lengths: np.ndarray, limit: int) -> np.ndarray:
    """The most target tokens (``</s>`` counted) a sentence may get: 2 x its source + 10, at most ``limit``."""
    return np.minimum(2 * np.asarray(src_lengths) + 10, limit)


def greedy(step: Step, enc: tuple[np.ndarray, ...], max_len: np.ndarray, bos: int, eos: int) -> list[list[int]]:
    """The argmax token at every step until ``</s>`` or ``max_len``; tokens without ``</s>``."""
    memory, keys, mask, *state = enc
    n = memory.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    rows = np.arange(n)
    token = np.full(n, bos, np.int64)
    feed = np.zeros((n, memory.shape[2]), np.float32)
    while len(rows):
        logp, feed, _, *state = step(token, feed, memory[rows], keys[rows], mask[rows], *state)
        token = logp.argmax(-1).astype(np.int64)
        keep = []
        for j, i in enumerate(rows):
            if token[j] == eos:
                continue
            out[i].append(int(token[j]))
            if len(out[i]) + 1 < max_len[i]:
                keep.append(j)
        keep_a = np.array(keep, np.int64)
        rows, token, feed = rows[keep_a], token[keep_a], feed[keep_a]
        state = [s[:, keep_a] for s in state]
    return out


def beam(
    step: Step,
    enc: tuple[np.ndarray, ...],
    max_len: np.ndarray,
    bos: int,
    eos: int,
    width: int,
    alpha: float = 1.0,
    early_stopping: str = STOPPING,
) -> list[list[Hypothesis]]:
    """Each sentence's finished hypotheses, best first (``</s>`` kept at the end of those that ended)."""
    memory, keys, mask, *state = enc
    n = memory.shape[0]
    beams = [Beams(width, int(max_len[i]), eos, alpha, early_stopping=early_stopping) for i in range(n)]
    owner = np.arange(n)  # the sentence of each row
    token = np.full(n, bos, np.int64)
    feed = np.zeros((n, memory.shape[2]), np.float32)
    while len(owner):
        logp, feed, _, *state = step(token, feed, memory[owner], keys[owner], mask[owner], *state)
        take, tokens, owners = [], [], []
        start = 0
        while start < len(owner):
            i = owner[start]
            end = start + 1
            while end < len(owner) and owner[end] == i:
                end += 1
            parents, toks = beams[i].step(logp[start:end])
            if not beams[i].done:
                take.extend(start + p for p in parents)
                tokens.extend(toks)
                owners.extend([i] * len(toks))
            start = end
        idx = np.array(take, np.int64)
        owner, token, feed = np.array(owners, np.int64), np.array(tokens, np.int64), feed[idx]
        state = [s[:, idx] for s in state]
    return [b.best() for b in beams]


def best(
    runner: Step, src: list[list[int]], width: int, limit: int, bos: int, eos: int, early_stopping: str = STOPPING
) -> list[list[int]]:
    """Each source sentence's best tokens: greedy for ``width`` 1, else beam search's best hypothesis (``</s>``
    kept where it ended). ``runner`` is a step function with an ``encode(src)`` method (torch or ORT)."""
    enc = runner.encode(src)  # type: ignore[attr-defined]
    ml = max_lengths(np.array([len(s) for s in src]), limit)
    if width == 1:
        return greedy(runner, enc, ml, bos, eos)
    return [h[0].tokens for h in beam(runner, enc, ml, bos, eos, width, early_stopping=early_stopping)]
