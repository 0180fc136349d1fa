"""``POST /generate``'s request parameters: the request, its validation and the answer (JSON, or server-sent
events: ``service.core.decoding.channel.sse``).

Request (JSON object; any other field is a 400):

==================  =========  =====================================================================
``prompt``          required   text to continue; every character must be in the model's vocabulary (others
                               are refused, named in the 400). A model trained on one document a line starts
                               each prompt with ``<bos>``, and may take an empty prompt (a new document).
``max_new_tokens``  64         1..limit (``/metadata``); with a ``form``, the form's length + 1 by default
``temperature``     1.0        >= 0, 0 = greedy
``top_k``           0          0 (off) .. vocabulary size
``top_p``           1.0        in (0, 1]
``seed``            random     0 .. 2**63-1; the same request and seed give the same text, alone or under load
``stop``            []         up to 8 strings (1..64 characters); the text ends before the first one
``num_beams``       1          1 = sample; 2..16 = beam search (deterministic; temperature, top_k, top_p
                               must be left out)
``n_best``          1          with beams: return the n best (``beams``: text, score, tokens)
``logprobs``        false      per-token log-probabilities (of the chosen tokens)
``form``            -          a preset of the model (``/metadata`` ``forms``), e.g. ``5x4`` for the poems
``acrostic``        -          with ``form``: each line starts with the next of these characters (藏头诗)
``constraint``      -          ``{"fixed": {"0": "T"}, "allowed": {"1": "aeiou"}}`` over generated positions
``stream``          false      server-sent events (below)
==================  =========  =====================================================================

Answer: ``{"text", "tokens", "finish_reason": "length"|"stop"|"end", "prompt_tokens", "model_version",
"seed"}`` (+ ``logprobs``, ``score``, ``beams``). With ``stream: true``, ``text/event-stream``:
``data: {"text": "...", "tokens": n}`` as text arrives (a tail that may begin a stop string is held back),
then ``event: done`` with the answer as its data, or ``event: error`` with ``{"error": ...}`` if it fails
midway. Beam search streams only the ``done`` event.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from service.core.decoding.sampling import Sampling
from service.core.guard import Rejected
from service.core.validate import number_field
from service.core.vocab import ConstraintError, Vocabulary
from service.tasks.generate.forms import Constraint, from_form, from_request

FIELDS = {
    "prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stop",
    "num_beams",
    "n_best",
    "logprobs",
    "form",
    "acrostic",
    "constraint",
    "stream",
}
DEFAULT_MAX_NEW_TOKENS = 64
MAX_STOPS, MAX_STOP_CHARS = 8, 64


@dataclass
class GenerateRequest:
    """A validated request (``parse``): the prompt as token ids, the limits and choices."""

    prompt: list[int]
    prompt_text: str
    max_new_tokens: int
    sampling: Sampling
    seed: int
    stop: list[str] = field(default_factory=list)
    num_beams: int = 1
    beam_search: bool = False  # True with num_beams > 1 (and, for tests, a beam of 1)
    n_best: int = 1
    logprobs: bool = False
    constraint: Constraint | None = None
    position: int = 0  # the document position of the first generated character (for constraints)


class GenerateError(Rejected):
    """A bad /generate request (400): the message names the field and the limit; ``reason`` labels the metric."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason, 400)


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_new_tokens: int
    max_beams: int


def _number(body: dict, name: str, default: float, kind: type, low: float, high: float, open_low: bool = False) -> Any:
    return number_field(body, name, default, kind, low, high, GenerateError, open_low)


def parse(body: Any, vocab: Vocabulary, limits: Limits) -> tuple[GenerateRequest, bool]:
    """Validate a /generate body; return the request and whether to stream. ``GenerateError`` on a bad one."""
    if not isinstance(body, dict):
        raise GenerateError("body: expected a JSON object", "invalid_json")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise GenerateError(f"{unknown[0]}: unknown field (fields: {', '.join(sorted(FIELDS))})", "unknown_field")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise GenerateError("prompt: required, a string", "prompt")
    bos = vocab.gen.special_ids.get("bos")
    if not prompt and bos is None:
        raise GenerateError("prompt: empty; this model needs at least one character", "prompt_empty")
    missing = sorted({c for c in prompt if c not in vocab.index or vocab.index[c] in vocab.gen.special_ids.values()})
    if missing:
        shown = "".join(missing[:10])
        raise GenerateError(f"prompt: {len(missing)} characters not in the model's vocabulary: {shown!r}", "vocab")
    tokens = ([bos] if bos is not None else []) + [vocab.index[c] for c in prompt]
    if len(tokens) > limits.max_prompt_tokens:
        raise GenerateError(f"prompt: {len(tokens)} tokens, the limit is {limits.max_prompt_tokens}", "prompt_long")
    beams = _number(body, "num_beams", 1, int, 1, limits.max_beams)
    if beams > 1:
        for name in ("temperature", "top_k", "top_p"):
            if name in body and not (name == "temperature" and body[name] == 0):
                raise GenerateError(f"{name}: not with num_beams > 1 (beam search is deterministic)", "beams_sampling")
    temperature = _number(body, "temperature", 0.0 if beams > 1 else 1.0, float, 0.0, 100.0)
    top_k = _number(body, "top_k", 0, int, 0, len(vocab.gen.vocab))
    top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0, open_low=True)
    n_best = _number(body, "n_best", 1, int, 1, beams)
    seed = _number(body, "seed", secrets.randbits(63), int, 0, 2**63 - 1)
    stop = body.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS:
        raise GenerateError(f"stop: a string or a list of at most {MAX_STOPS} strings", "stop")
    if not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stop):
        raise GenerateError(f"stop: each stop string must have 1..{MAX_STOP_CHARS} characters", "stop")
    for name in ("logprobs", "stream"):
        if not isinstance(body.get(name, False), bool):
            raise GenerateError(f"{name}: expected true or false", "bad_type")
    constraint, form = None, body.get("form")
    try:
        if form is not None:
            acrostic = body.get("acrostic", "")
            if not isinstance(form, str) or not isinstance(acrostic, str):
                raise GenerateError("form, acrostic: expected strings", "bad_type")
            constraint = from_form(form, vocab, acrostic)
            if "constraint" in body:
                raise GenerateError("constraint: not with form (a form is a constraint)", "constraint")
        elif "acrostic" in body:
            raise GenerateError("acrostic: needs a form (e.g. 5x4)", "constraint")
        default_new = len(constraint) + 1 - len(prompt) if constraint else DEFAULT_MAX_NEW_TOKENS
        max_new = _number(
            body, "max_new_tokens", min(default_new, limits.max_new_tokens), int, 1, limits.max_new_tokens
        )
        if "constraint" in body:
            if not isinstance(body["constraint"], dict):
                raise GenerateError("constraint: expected an object with fixed and/or allowed", "constraint")
            constraint = from_request(body["constraint"], vocab, len(prompt), max_new)
        if constraint is not None:
            constraint.check_prompt(prompt, vocab)
            if form is not None and max_new < len(constraint) - len(prompt):
                need = len(constraint) - len(prompt)
                raise GenerateError(f"max_new_tokens: {max_new}, form {form!r} needs {need}", "max_new_tokens_range")
    except ConstraintError as e:
        raise GenerateError(str(e), "constraint") from None
    req = GenerateRequest(
        prompt=tokens,
        prompt_text=prompt,
        max_new_tokens=max_new,
        sampling=Sampling(temperature, top_k, top_p),
        seed=seed,
        stop=stop,
        num_beams=beams,
        beam_search=beams > 1,
        n_best=n_best,
        logprobs=body.get("logprobs", False),
        constraint=constraint,
        position=len(prompt),
    )
    return req, body.get("stream", False)
