"""Beam search for one request, one step at a time, inside the step scheduler (``service.core.decoding.scheduler``).

The request holds ``num_beams`` state slots. Each step the scheduler hands over the log-probabilities of its
live beams (``[live, V]``, constraints already applied); ``Beams.step`` extends every live beam by every token,
moves the ``<eos>`` extensions to the finished list, keeps the ``num_beams`` best other extensions, and says
which live beam each new one continues (``parents``: the scheduler copies those states) and with which token.

Scores are sums of log-probabilities; finished hypotheses are ranked by ``score / length ** alpha`` (length
normalisation, length counting ``<eos>``). The search stops when ``num_beams`` hypotheses have finished and no
live beam can still beat the worst of them: a live beam's normalised score can at best reach
``score / max_new_tokens ** alpha`` (later tokens only lower its sum), so the stop is exact, not a heuristic,
and a beam as wide as the search space finds the best sequence an exhaustive search finds. At
``max_new_tokens`` the live beams finish too (reason ``length``).

An attention decoder (translation) also hands over each live beam's attention over the source (``[live, S]``):
a hypothesis then carries its coverage (attention summed over its steps) and, with ``keep_attention``, the rows
themselves (the alignment). With a coverage penalty ``beta`` > 0 a finished hypothesis is ranked by
``score / length ** alpha + beta * sum_i log(min(coverage_i, 1))`` (Wu et al. 2016, GNMT): a hypothesis that left
source tokens unattended ranks lower. The penalty is <= 0, so the stopping bound above stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Hypothesis:
    tokens: list[int]
    logprobs: list[float]
    score: float  # sum of the log-probabilities
    reason: str = ""  # "end", "stop" or "length" once finished
    coverage: np.ndarray | None = None  # attention summed over the steps, per source token (attention decoders)
    attention: list[np.ndarray] = field(default_factory=list)  # per step, with keep_attention
    penalty: float = 0.0  # the coverage penalty (<= 0), set when it finishes

    def normalised(self, alpha: float) -> float:
        return self.score / max(1, len(self.tokens)) ** alpha + self.penalty


@dataclass
class Beams:
    width: int
    max_new_tokens: int
    eos: int | None
    alpha: float = 1.0
    beta: float = 0.0  # coverage penalty weight
    keep_attention: bool = False
    live: list[Hypothesis] = field(default_factory=lambda: [Hypothesis([], [], 0.0)])
    finished: list[Hypothesis] = field(default_factory=list)

    @property
    def done(self) -> bool:
        if not self.live:
            return True
        if len(self.finished) < self.width:
            return False
        worst = min(h.normalised(self.alpha) for h in self.finished)
        bound = max(h.score for h in self.live) / self.max_new_tokens**self.alpha
        return bound <= worst

    def step(self, log_probs: np.ndarray, attention: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """Extend the live beams (rows of ``log_probs``, in ``self.live`` order; ``attention``: their rows of
        the step's attention, if the decoder has one); return (parents, tokens) of the new live beams."""
        scores = np.array([h.score for h in self.live])[:, None] + log_probs.astype(np.float64)
        if self.eos is not None:
            for i, h in enumerate(self.live):
                if np.isfinite(scores[i, self.eos]):
                    lp = float(log_probs[i, self.eos])
                    end = Hypothesis([*h.tokens, self.eos], [*h.logprobs, lp], float(scores[i, self.eos]), "end")
                    self._finish(self._attend(end, h, attention, i))
            scores[:, self.eos] = -np.inf
        flat = scores.ravel()
        k = min(self.width, int(np.isfinite(flat).sum()))
        top = np.argpartition(-flat, k - 1)[:k] if 0 < k < len(flat) else np.flatnonzero(np.isfinite(flat))
        top = top[np.lexsort((top, -flat[top]))]  # best first; ties by index: deterministic
        v = log_probs.shape[1]
        parents, tokens = (top // v).tolist(), (top % v).tolist()
        self.live = [
            self._attend(
                Hypothesis(
                    [*self.live[p].tokens, t], [*self.live[p].logprobs, float(log_probs[p, t])], float(flat[p * v + t])
                ),
                self.live[p],
                attention,
                p,
            )
            for p, t in zip(parents, tokens)
        ]
        if self.live and len(self.live[0].tokens) >= self.max_new_tokens:
            for h in self.live:
                self._finish(h, "length")
            self.live = []
        return parents, tokens

    def _attend(self, h: Hypothesis, parent: Hypothesis, attention: np.ndarray | None, row: int) -> Hypothesis:
        """``h`` continues ``parent`` by the step whose attention is ``attention[row]``."""
        if attention is not None:
            a = attention[row]
            h.coverage = a.astype(np.float64) if parent.coverage is None else parent.coverage + a
            if self.keep_attention:
                h.attention = [*parent.attention, a]
        return h

    def finish_live(self, index: int, reason: str, keep: int) -> None:
        """A live beam ends here (a stop string matched): keep its first ``keep`` tokens."""
        h = self.live.pop(index)
        self._finish(Hypothesis(h.tokens[:keep], h.logprobs[:keep], float(sum(h.logprobs[:keep])), reason))

    def _finish(self, h: Hypothesis, reason: str = "") -> None:
        h.reason = reason or h.reason
        if self.beta and h.coverage is not None:
            h.penalty = self.beta * float(np.log(np.clip(h.coverage, 1e-6, 1.0)).sum())
        self.finished.append(h)
        self.finished.sort(key=lambda x: -x.normalised(self.alpha))
        del self.finished[self.width :]

    def best(self) -> list[Hypothesis]:
        return sorted(self.finished, key=lambda x: -x.normalised(self.alpha))
