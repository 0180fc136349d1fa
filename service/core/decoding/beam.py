"""Beam search for one request, one step at a time, inside the step scheduler (``service.core.decoding.scheduler``).

The request holds ``num_beams`` state slots. Each step the scheduler hands over the log-probabilities of its
live beams (``[live, V]``, constraints already applied); ``Beams.step`` extends every live beam by every token,
moves the ``<eos>`` extensions to the finished list, keeps the ``num_beams`` best other extensions, and says
which live beam each new one continues (``parents``: the scheduler copies those states) and with which token.

Scores are sums of log-probabilities; finished hypotheses are ranked by ``score / length ** alpha`` (length
normalisation, length counting ``<eos>``). When the search stops (``early_stopping``, Hugging Face's names):

* ``never`` (the default): when ``num_beams`` hypotheses have finished and no live beam can still beat the worst
  of them: a live beam's normalised score can at best reach ``score / max_new_tokens ** alpha`` (later tokens
  only lower its sum), so the stop is exact, not a heuristic, and a beam as wide as the search space finds the
  best sequence an exhaustive search finds; it often runs twice as many steps as its best hypothesis has tokens;
* ``heuristic``: when ``num_beams`` have finished and the best live beam's normalised score *now* is no better
  than the worst of them (Hugging Face's default, ``early_stopping=False``): fewer steps, not exact;
* ``first``: as soon as ``num_beams`` hypotheses have finished (fairseq; ``early_stopping=True``), an ``<eos>``
  extension finishing a hypothesis only if it ranks among the step's ``num_beams`` best extensions (with the
  other two every ``<eos>`` extension that can enter the finished list does).

At ``max_new_tokens`` the live beams finish too (reason ``length``).

An attention decoder (translation) also hands over each live beam's attention over the source (``[live, S]``):
a hypothesis then carries its coverage (attention summed over its steps) and, with ``keep_attention``, the rows
themselves (the alignment). With a coverage penalty ``beta`` > 0 a finished hypothesis is ranked by
``score / length ** alpha + beta * sum_i log(min(coverage_i, 1))`` (Wu et al. 2016, GNMT): a hypothesis that left
source tokens unattended ranks lower. The penalty is <= 0, so the stopping bound above stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STOPPING = ("never", "heuristic", "first")  # early_stopping: exact, Hugging Face's default, fairseq's


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
    early_stopping: str = "never"  # one of STOPPING
    live: list[Hypothesis] = field(default_factory=lambda: [Hypothesis([], [], 0.0)])
    finished: list[Hypothesis] = field(default_factory=list)

    @property
    def done(self) -> bool:
        if not self.live:
            return True
        if len(self.finished) < self.width:
            return False
        if self.early_stopping == "first":
            return True
        worst = self.finished[-1].normalised(self.alpha)  # kept best first
        best = self.live[0]  # live is best first too
        if self.early_stopping == "heuristic":
            return best.normalised(self.alpha) <= worst
        return best.score / self.max_new_tokens**self.alpha <= worst

    def step(self, log_probs: np.ndarray, attention: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """Extend the live beams (rows of ``log_probs``, in ``self.live`` order; ``attention``: their rows of
        the step's attention, if the decoder has one); return (parents, tokens) of the new live beams."""
        live = np.array([h.score for h in self.live])
        rows, toks = self._candidates(log_probs)
        scores = live[rows] + log_probs[rows, toks].astype(np.float64)
        if self.eos is not None:
            ends = live + log_probs[:, self.eos].astype(np.float64)
            offer = np.flatnonzero(np.isfinite(ends))
            if self.early_stopping == "first":  # an ending counts only if it ranks among the step's width best
                best = np.sort(np.concatenate([scores, ends[offer]]))[::-1][: self.width]
                offer = offer[ends[offer] >= best[-1]] if len(best) else offer[:0]
            for i in offer.tolist():
                self._offer_end(i, self.eos, float(ends[i]), float(log_probs[i, self.eos]), attention)
        v = log_probs.shape[1]
        top = np.lexsort((rows * v + toks, -scores))[: self.width]  # best first; ties by index: deterministic
        parents, tokens, best = rows[top].tolist(), toks[top].tolist(), scores[top].tolist()
        self.live = [
            self._attend(
                Hypothesis([*self.live[p].tokens, t], [*self.live[p].logprobs, float(log_probs[p, t])], score),
                self.live[p],
                attention,
                p,
            )
            for p, t, score in zip(parents, tokens, best)
        ]
        if self.live and len(self.live[0].tokens) >= self.max_new_tokens:
            for h in self.live:
                self._finish(h, "length")
            self.live = []
        return parents, tokens

    def _candidates(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and token of every extension that can be among the ``width`` best, in flat order: per row the
        tokens at least as likely as its (width + 1)-th most likely (ties all kept; one of them may be ``<eos>``),
        finite, not ``<eos>``. A row's extension ranks by its beam's score plus its log-probability, so a token
        below that line is beaten by ``width`` others of its own row: choosing among these is the exhaustive
        choice, at the cost of one partition per row instead of a sort of every extension."""
        v = log_probs.shape[1]
        need = self.width + 1
        if need < v:
            line = np.partition(log_probs, v - need, axis=1)[:, v - need : v - need + 1]
            flat = np.flatnonzero(log_probs >= line)
        else:
            flat = np.arange(log_probs.size)
        rows, toks = flat // v, flat % v
        keep = np.isfinite(log_probs[rows, toks]) & (toks != self.eos)
        return rows[keep], toks[keep]

    def _offer_end(self, i: int, eos: int, score: float, logprob: float, attention: np.ndarray | None) -> None:
        """Live beam ``i`` ended by ``<eos>`` with ``score``: it joins the finished hypotheses if it ranks among
        the ``width`` best (its rank is computed first, so the many that cannot enter cost no copies)."""
        h = self.live[i]
        coverage = None
        if attention is not None:
            coverage = attention[i].astype(np.float64) if h.coverage is None else h.coverage + attention[i]
        penalty = self._penalty(coverage)
        if len(self.finished) >= self.width:
            ranked = score / max(1, len(h.tokens) + 1) ** self.alpha + penalty
            if ranked <= self.finished[-1].normalised(self.alpha):  # a tie ranks after the earlier one
                return
        end = Hypothesis([*h.tokens, eos], [*h.logprobs, logprob], score, "end", coverage, penalty=penalty)
        if self.keep_attention and attention is not None:
            end.attention = [*h.attention, attention[i]]
        self._insert(end)

    def _penalty(self, coverage: np.ndarray | None) -> float:
        if self.beta and coverage is not None:
            return self.beta * float(np.log(np.clip(coverage, 1e-6, 1.0)).sum())
        return 0.0

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
        h.penalty = self._penalty(h.coverage)
        self._insert(h)

    def _insert(self, h: Hypothesis) -> None:
        """Into the finished list (best first, ties in arrival order), keeping the ``width`` best."""
        rank = h.normalised(self.alpha)
        at = len(self.finished)
        while at and self.finished[at - 1].normalised(self.alpha) < rank:
            at -= 1
        self.finished.insert(at, h)
        del self.finished[self.width :]

    def best(self) -> list[Hypothesis]:
        return sorted(self.finished, key=lambda x: -x.normalised(self.alpha))
