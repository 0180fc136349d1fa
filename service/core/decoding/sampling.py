"""The next token of each decoding stream: greedy, or sampled with temperature, top-k and top-p (nucleus).

Greedy rows take the argmax of the whole step at once (exact, whatever the batch). Rows sampled with a
temperature alone are sampled together (``sample_plain``: operations whose result for an element does not
depend on its neighbours); rows with top-k or top-p are sampled one by one from their own 1-D slices. Every
row draws from its own generator (``numpy.random.Generator`` seeded by the request), so the choice depends on
nothing but that row's log-probabilities and the request's seed.

Sampling: ``z = (log_probs - max) / temperature`` (the row's maximum taken first, so that a temperature as
small as a float allows is greedy, not an overflow); ``top_k`` keeps the k largest; ``top_p`` keeps the smallest set of
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
    if not s.top_k and s.top_p >= 1.0:  # plain temperature: no order needed
        return int(sample_plain(log_probs[None], np.array([s.temperature]), np.array([rng.random()]))[0])
    lp = log_probs.astype(np.float64)
    with np.errstate(over="ignore"):  # the max first: any temperature > 0, however small, keeps it finite
        z = (lp - lp.max()) / s.temperature
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


def sample_plain(log_probs: np.ndarray, temperatures: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Rows sampled with temperature alone, all at once: inverse CDF of ``softmax(z / T)`` at ``u`` in [0, 1).

    Each row's result is the same bits whatever rows it comes with: division, subtraction of the row's max,
    ``exp`` and a row-wise ``cumsum`` are element-wise or row-sequential (``exp`` checked position-independent
    on numpy's SIMD paths; ``tests/test_lm.py`` checks the texts alone vs among 200 others)."""
    lp = log_probs.astype(np.float64)
    with np.errstate(over="ignore"):  # the max first: finite for any temperature > 0 (the rest may go to -inf)
        p = np.exp((lp - lp.max(axis=1, keepdims=True)) / temperatures[:, None])
    cum = np.cumsum(p, axis=1)
    if not np.all(np.isfinite(cum[:, -1]) & (cum[:, -1] > 0)):
        raise ValueError("every token is forbidden at this position")
    tokens = (cum <= (u * cum[:, -1])[:, None]).sum(axis=1)
    return np.minimum(tokens, log_probs.shape[1] - 1)


def choose(log_probs: np.ndarray, params: list[Sampling], rngs: list[np.random.Generator]) -> np.ndarray:
    """The next token of each row (``params[i]``, ``rngs[i]`` for row i): greedy rows by argmax, rows with
    temperature alone together (``sample_plain``), rows with top-k or top-p one by one (``sample_row``)."""
    tokens = np.argmax(log_probs, axis=1)
    plain = [i for i, s in enumerate(params) if s.temperature > 0 and not s.top_k and s.top_p >= 1.0]
    if plain:
        temps = np.array([params[i].temperature for i in plain])
        u = np.array([rngs[i].random() for i in plain])
        tokens[plain] = sample_plain(log_probs[plain], temps, u)
    for i, (s, rng) in enumerate(zip(params, rngs)):
        if s.temperature > 0 and (s.top_k or s.top_p < 1.0):
            tokens[i] = sample_row(log_probs[i], s, rng)
    return tokens
