"""``POST /translate``'s request parameters: validation into one decoding request per text.

Request (JSON object; any other field is a 400 naming it):

=======================  =========  ==================================================================
``texts``                required   1..``max_texts`` source sentences (non-empty strings); each at most
                                    ``max_source_tokens`` tokens with ``</s>`` (``/metadata``), never cut
``beam_size``            5          1..``max_beams``; 1 = greedy (or sampling); texts x beam_size <= ``max_rows``
``length_penalty``       1.0        0..5: hypotheses ranked by score / length ** length_penalty
``coverage_penalty``     0.0        0..5: beta of GNMT's coverage penalty (beam_size > 1)
``n_best``               1          1..beam_size hypotheses per text, best first
``early_stopping``       heuristic  when a beam search stops (``service.core.decoding.beam``): ``heuristic``
                                    (Hugging Face's default), ``never`` (exact) or ``first`` (fairseq's)
``max_decoding_length``  -          1..``max_target_tokens`` target tokens (``</s>`` counted); default per
                                    text: 2 x its source tokens + 10 (at most the limit)
``sampling``             null       ``{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": random}``:
                                    sample instead of searching (beam_size 1); text i uses seed + i
``return_attention``     false      each hypothesis's alignment: ``attention`` [source][target] weights
``return_scores``        true       each hypothesis's ``score``
``target_prefix``        null       a list with one string or null per text: the translation starts with it
``stream``               false      server-sent events (beam_size 1): text as it is decoded
=======================  =========  ==================================================================

Answer: ``{"translations": [{"text", "score", "tokens", "finish_reason", "hypotheses": [...]}, ...],
"model_version", "source_tokens": [...]}``; ``hypotheses`` (with ``n_best`` > 1 or ``return_attention``) hold
``text``, ``score``, ``tokens``, ``finish_reason`` and, on request, ``attention``, ``source_pieces``,
``target_pieces``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.decoding.beam import STOPPING
from service.core.decoding.sampling import Sampling
from service.core.guard import Rejected
from service.core.tokens import EOS, UNK, Tokenizer
from service.core.validate import number_field
from service.core.vocab import Vocabulary

FIELDS = {
    "texts",
    "beam_size",
    "length_penalty",
    "coverage_penalty",
    "n_best",
    "early_stopping",
    "max_decoding_length",
    "sampling",
    "return_attention",
    "return_scores",
    "target_prefix",
    "stream",
}
SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "seed"}
DEFAULT_BEAM = 5
DEFAULT_STOPPING = "heuristic"  # the exact stop ("never") ran ~1.8x the rows for 0.1 chrF (docs/translation.md)
MAX_TEXT_CHARS = 10_000  # a text longer than this is refused before it is tokenized
MAX_PENALTY = 5.0


class TranslateError(Rejected):
    """A bad /translate request (400): the message names the field and the limit; ``reason`` labels the metric."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason, 400)


@dataclass(frozen=True)
class Limits:
    max_texts: int
    max_source_tokens: int
    max_target_tokens: int
    max_beams: int
    max_rows: int


@dataclass
class Prefix:
    """``target_prefix`` as a decoding constraint: position i may only take the prefix's token i."""

    tokens: list[int]

    def mask(self, row: np.ndarray, position: int, vocab: Vocabulary) -> None:
        if position < len(self.tokens):
            keep = row[self.tokens[position]]
            row[:] = -np.inf
            row[self.tokens[position]] = keep

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class TranslateRequest:
    """One text's decoding (a ``service.core.decoding.encoder_decoder.Seq2SeqRequest``)."""

    prompt: list[int]  # the source's token ids, </s> last
    max_new_tokens: int
    sampling: Sampling
    seed: int
    num_beams: int = 1
    beam_search: bool = False
    n_best: int = 1
    length_penalty: float = 1.0
    coverage_penalty: float = 0.0
    early_stopping: str = DEFAULT_STOPPING
    keep_attention: bool = False
    constraint: Prefix | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = True  # the score of a greedy or sampled translation is their sum
    position: int = 0


@dataclass(frozen=True)
class Options:
    stream: bool
    return_scores: bool
    return_attention: bool


def _number(body: dict, name: str, default: float, kind: type, low: float, high: float, open_low: bool = False) -> Any:
    return number_field(body, name, default, kind, low, high, TranslateError, open_low, range_reason="range")


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise TranslateError(f"{name}: expected true or false", "bad_type")
    return value


def _sampling(body: dict, vocab_size: int) -> tuple[Sampling, int] | None:
    s = body.get("sampling")
    if s is None:
        return None
    if not isinstance(s, dict):
        raise TranslateError("sampling: expected an object with temperature, top_k, top_p, seed, or null", "bad_type")
    unknown = sorted(set(s) - SAMPLING_FIELDS)
    if unknown:
        raise TranslateError(f"sampling.{unknown[0]}: unknown field (fields: {', '.join(sorted(SAMPLING_FIELDS))})",
                             "unknown_field")  # fmt: skip
    try:
        sampling = Sampling(
            _number(s, "temperature", 1.0, float, 0.0, 100.0),
            _number(s, "top_k", 0, int, 0, vocab_size),
            _number(s, "top_p", 1.0, float, 0.0, 1.0, open_low=True),
        )
        seed = _number(s, "seed", secrets.randbits(62), int, 0, 2**62)
    except TranslateError as e:
        raise TranslateError(f"sampling.{e}", e.reason) from None
    return sampling, seed


def parse(body: Any, tok: Tokenizer, limits: Limits) -> tuple[list[TranslateRequest], Options]:
    """Validate a /translate body; one request per text, and the answer's options. ``TranslateError`` on a bad one."""
    if not isinstance(body, dict):
        raise TranslateError("body: expected a JSON object", "invalid_json")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise TranslateError(f"{unknown[0]}: unknown field (fields: {', '.join(sorted(FIELDS))})", "unknown_field")
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        raise TranslateError("texts: required, a non-empty list of strings", "texts")
    if len(texts) > limits.max_texts:
        raise TranslateError(f"texts: {len(texts)} texts, the limit is {limits.max_texts}", "texts_many")
    sources = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise TranslateError(f"texts[{i}]: expected a non-empty string", "texts")
        if len(t) > MAX_TEXT_CHARS:
            raise TranslateError(f"texts[{i}]: {len(t)} characters, the limit is {MAX_TEXT_CHARS}", "source_long")
        ids = tok.encode(t) + [EOS]
        if len(ids) > limits.max_source_tokens:
            msg = f"texts[{i}]: {len(ids)} tokens with </s>, the limit is {limits.max_source_tokens}"
            raise TranslateError(msg, "source_long")
        sources.append(ids)
    sampled = _sampling(body, tok.vocab_size)
    beams = _number(body, "beam_size", 1 if sampled else DEFAULT_BEAM, int, 1, limits.max_beams)
    if sampled and beams > 1:
        raise TranslateError("beam_size: must be 1 with sampling (a beam search does not sample)", "beams_sampling")
    if len(texts) * beams > limits.max_rows:
        msg = f"texts x beam_size: {len(texts)} x {beams} = {len(texts) * beams}, the limit is {limits.max_rows}"
        raise TranslateError(msg, "rows")
    n_best = _number(body, "n_best", 1, int, 1, beams)
    length_penalty = _number(body, "length_penalty", 1.0, float, 0.0, MAX_PENALTY)
    coverage = _number(body, "coverage_penalty", 0.0, float, 0.0, MAX_PENALTY)
    if coverage and beams == 1:
        raise TranslateError("coverage_penalty: only with beam_size > 1 (it ranks beam hypotheses)", "coverage")
    stopping = body.get("early_stopping", DEFAULT_STOPPING)
    if stopping not in STOPPING:
        raise TranslateError(f"early_stopping: {stopping!r}; one of {', '.join(STOPPING)}", "bad_type")
    max_len = body.get("max_decoding_length")
    if max_len is not None:
        max_len = _number(body, "max_decoding_length", 0, int, 1, limits.max_target_tokens)
    options = Options(_flag(body, "stream", False), _flag(body, "return_scores", True),
                      _flag(body, "return_attention", False))  # fmt: skip
    if options.stream and beams > 1:
        raise TranslateError("stream: only with beam_size 1 (a beam's best hypothesis is known at its end)", "stream")
    prefixes = _prefixes(body.get("target_prefix"), len(texts), tok)
    out = []
    for i, ids in enumerate(sources):
        limit = max_len or min(2 * len(ids) + 10, limits.max_target_tokens)
        prefix = prefixes[i]
        if prefix is not None and len(prefix) >= limit:
            msg = f"target_prefix[{i}]: {len(prefix)} tokens, max_decoding_length is {limit} (</s> counted)"
            raise TranslateError(msg, "prefix_long")
        sampling, seed = sampled if sampled else (Sampling(0.0), 0)
        out.append(
            TranslateRequest(
                prompt=ids,
                max_new_tokens=limit,
                sampling=sampling,
                seed=seed + i,
                num_beams=beams,
                beam_search=beams > 1,
                n_best=n_best,
                length_penalty=length_penalty,
                coverage_penalty=coverage,
                early_stopping=stopping,
                keep_attention=options.return_attention,
                constraint=prefix,
            )
        )
    return out, options


def _prefixes(value: Any, n: int, tok: Tokenizer) -> list[Prefix | None]:
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise TranslateError(f"target_prefix: expected null or a list of {n} strings or nulls (one per text)",
                             "prefix")  # fmt: skip
    out: list[Prefix | None] = []
    for i, p in enumerate(value):
        if p is None or p == "":
            out.append(None)
            continue
        if not isinstance(p, str) or len(p) > MAX_TEXT_CHARS:
            raise TranslateError(f"target_prefix[{i}]: expected a string of at most {MAX_TEXT_CHARS} characters",
                                 "prefix")  # fmt: skip
        ids = tok.encode(p)
        if UNK in ids:
            raise TranslateError(f"target_prefix[{i}]: has characters the model cannot write (unknown token)",
                                 "prefix")  # fmt: skip
        out.append(Prefix(ids))
    return out
