"""The next token of each decoding stream: greedy, or sampled with temperature, top-k and top-p (nucleus).

Greedy rows take the argmax of the whole step at once (exact, whatever the batch). A sampled row is chosen on
its own, from its own 1-D slice with its own generator (``numpy.random.Generator`` seeded by the request), so
the choice depends on nothing but that row's log-probabilities and the request's seed: numpy's vectorised
kernels may round an element differently depending on where it falls in a SIMD lane, and a row's place in a
batch would then leak into its samples.

Sampling: ``z = log_probs / temperature``; ``top_k`` keeps the k largest; ``top_p`` keeps the smallest set of
largest tokens whose probability reaches ``p`` (looked for among the 256 largest first, which almost always
hold it, else among all); one uniform number picks from the kept tokens' cumulative probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUCLEUS_FIRST_LOOK = 256


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off


def sample_row(log_probs: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """One token id from one row of log-probabilities (``-inf`` where a constraint forbids a token)."""
    if s.temperature == 0:
        return int(np.argmax(log_probs))
    z = log_probs.astype(np.float64) / s.temperature
    v = len(z)
    if s.top_k and s.top_k < v:
        cand = np.argpartition(-z, s.top_k - 1)[: s.top_k]
    elif s.top_p < 1.0 and NUCLEUS_FIRST_LOOK < v:
        cand = np.argpartition(-z, NUCLEUS_FIRST_LOOK - 1)[:NUCLEUS_FIRST_LOOK]
    else:
        cand = np.arange(v)
    cand = cand[np.argsort(-z[cand], kind="stable")]
    top = z[cand[0]]
    if not np.isfinite(top):
        raise ValueError("every token is forbidden at this position")
    p = np.exp(z[cand] - top)
    if s.top_p < 1.0:
        total = p.sum() if len(cand) == v or s.top_k else np.exp(z - top).sum()
        cum = np.cumsum(p) / total
        if cum[-1] < s.top_p and len(cand) < v and not s.top_k:  # the nucleus is wider than the first look
            cand = np.argsort(-z, kind="stable")
            p = np.exp(z[cand] - top)
            cum = np.cumsum(p) / total
        keep = int(np.searchsorted(cum, s.top_p)) + 1
        cand, p = cand[:keep], p[:keep]
    cum = np.cumsum(p)
    u = rng.random() * cum[-1]
    return int(cand[min(int(np.searchsorted(cum, u, side="right")), len(cand) - 1)])


def choose(log_probs: np.ndarray, params: list[Sampling], rngs: list[np.random.Generator]) -> np.ndarray:
    """The next token of each row (``params[i]``, ``rngs[i]`` for row i)."""
    tokens = np.argmax(log_probs, axis=1)  # greedy rows are done
    for i, (s, rng) in enumerate(zip(params, rngs)):
        if s.temperature > 0:
            tokens[i] = sample_row(log_probs[i], s, rng)
    return tokens
