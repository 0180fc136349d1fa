"""The step scheduler's vocabulary: a ``Stream`` (one request's decoding in flight), and what the scheduler needs
of a step graph (``StepRunner``, ``StepShape``) and of a request (``StepRequest``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.core.decoding.beam import Beams
from service.core.decoding.sampling import Sampling
from service.core.vocab import TokenTable

Emit = Callable[[dict], None]


@dataclass
class Stream:
    req: StepRequest
    emit: Emit
    arrived: float
    slots: list[int] = field(default_factory=list)
    read: int = 0  # prompt tokens read so far
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already emitted
    sent_logprobs: int = 0  # log-probabilities already emitted
    emitted_at: float = 0.0  # when text last left (0: none yet)
    last_token_at: float = 0.0
    beams: Beams | None = None
    context: Any = None  # what the request's encoder gave (an encoder-decoder's memory), for its decoding steps
    attention: list = field(default_factory=list)  # per token, the step's attention over the source (if kept)
    rng: np.random.Generator | None = None
    deadline: float = float("inf")  # time.perf_counter(): still waiting for a slot then, it is dropped (504)
    cancelled: bool = False
    finished: bool = False

    @property
    def decoding(self) -> bool:
        return self.read == len(self.req.prompt)

    def cancel(self) -> None:
        self.cancelled = True


class StepShape(TokenTable, Protocol):
    """What the scheduler needs of a step graph's contract (the generate room's ``Generation`` section)."""

    layers: int
    hidden: int
    chunk: int  # the most tokens a stream advances in one call

    @property
    def state_names(self) -> list[str]: ...


class StepRunner(Protocol):
    """A step model: ``run(tokens [B, K], lengths [B], states) -> (log-probs [B, V], new states)``; states are
    ``[layers, B, hidden]`` arrays named by ``gen.state_names`` (the generate room's ``StepModel`` on ORT)."""

    gen: StepShape

    def run(self, tokens: np.ndarray, lengths: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list]: ...


class StepRequest(Protocol):
    """A validated request (the generate room's ``GenerateRequest``): prompt token ids, limits and choices."""

    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    seed: int
    stop: list[str]
    num_beams: int
    beam_search: bool
    n_best: int
    logprobs: bool
    constraint: Any  # None, or an object with mask(row, position, vocab) and __len__
    position: int
