"""The task sections of ``metadata.json`` (``generation``, ``forecasting``, ``translation``, ``text_classification``),
each a typed dataclass that checks itself (``from_dict``); ``service.core.artifact.ArtifactMeta`` holds the one its
task needs. No torch here.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any


class ContractError(ValueError):
    """metadata.json does not follow the artifact contract."""


def check_text_section(
    cls: type, d: dict[str, Any], source: str, section: str, min_vocab: int, positive: tuple[str, ...]
) -> None:
    """What the token models' sections (``generation``, ``translation``, ``text_classification``) share: every
    field without a default present, a vocabulary of at least ``min_vocab`` strings, an LSTM or GRU, and
    ``positive`` sizes."""
    fields = cls.__dataclass_fields__.values()
    missing = [f.name for f in fields if f.name not in d and f.default_factory is MISSING]  # type: ignore[attr-defined]
    if missing:
        raise ContractError(f"{source}: missing field '{section}.{missing[0]}'")
    vocab = d["vocab"]
    if not isinstance(vocab, list) or len(vocab) < min_vocab or not all(isinstance(v, str) for v in vocab):
        raise ContractError(f"{source}: {section}.vocab must be a list of at least {min_vocab} strings")
    if d["rnn"] not in ("lstm", "gru"):
        raise ContractError(f"{source}: {section}.rnn must be 'lstm' or 'gru', got {d['rnn']!r}")
    for k in positive:
        if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 1:
            raise ContractError(f"{source}: {section}.{k} must be a positive integer")


@dataclass(frozen=True)
class Generation:
    """A language model's serving contract (task ``generate``): the step graph advances B streams by up to
    ``chunk`` tokens from their states (``[layers, B, hidden]``, ``h`` and for an LSTM ``c``)."""

    vocab: list[str]  # token id -> text; specials first
    special_ids: dict[str, int]  # "unk", and "bos"/"eos" when the corpus is one document a line
    rnn: str  # "lstm" | "gru"
    layers: int
    hidden: int
    chunk: int  # K: the most tokens a stream advances in one call (prompts are read in such chunks)
    max_prompt_tokens: int
    max_new_tokens: int
    forms: dict[str, Any] = field(default_factory=dict)  # constraint presets (service/tasks/generate/forms.py)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Generation:
        check_text_section(cls, d, source, "generation", 2, ("layers", "hidden", "chunk", "max_prompt_tokens",
                                                            "max_new_tokens"))  # fmt: skip
        vocab, special = d["vocab"], d["special_ids"]
        if "unk" not in special or not all(isinstance(i, int) and 0 <= i < len(vocab) for i in special.values()):
            raise ContractError(f"{source}: generation.special_ids needs 'unk' and ids within the vocabulary")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def state_names(self) -> list[str]:
        return ["h", "c"] if self.rnn == "lstm" else ["h"]


@dataclass(frozen=True)
class Forecasting:
    """A forecaster's serving contract (task ``forecast``): the graph reads ``x`` ``[B, T, 1 + F_t + C]`` (the
    raw value, NaN if missing, then time features and covariates), ``lengths`` and ``future`` ``[B, H, F_t + C]``,
    and returns ``quantiles`` ``[B, H, Q]`` on the ``quantiles`` grid, in the series' own units."""

    horizon: int  # H: the most steps ahead a request may ask for
    frequency: str  # the time grid (service/tasks/forecast/calendar.py): Q, M, W, D, H, 30min, ..., step
    period: int  # the seasonal period the time features follow
    context: int  # history steps the model reads: longer histories are cut to their last ``context``
    quantiles: list[float]  # the trained grid, ascending, with 0.5; served levels are interpolated inside it
    covariates: list[str] = field(default_factory=list)  # known-future covariates, in column order
    scaling: str = "mean_abs"  # each series divided by the mean absolute value of its counted history
    time_features: int = 4

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Forecasting:
        missing = [k for k in ("horizon", "frequency", "period", "context", "quantiles") if k not in d]
        if missing:
            raise ContractError(f"{source}: missing field 'forecasting.{missing[0]}'")
        for k in ("horizon", "period", "context", "time_features"):
            if k in d and (
                not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < (0 if k == "time_features" else 1)
            ):
                raise ContractError(f"{source}: forecasting.{k} must be a positive integer")
        q = d["quantiles"]
        if not isinstance(q, list) or 0.5 not in q or q != sorted(q) or not all(0 < v < 1 for v in q):
            raise ContractError(f"{source}: forecasting.quantiles must be ascending levels in (0, 1) with 0.5")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Translation:
    """A translator's serving contract (task ``translate``): ``encoder.onnx`` reads ``src`` ``[B, S]`` and
    ``lengths`` and gives ``memory``, ``keys``, ``mask`` and the decoder's first state; ``model.onnx`` is the decoder
    step (``token``, ``feed``, ``memory``, ``keys``, ``mask``, state -> ``log_probs``, ``feed``, ``attention``,
    state). The tokenizer (``tokenizer.model`` for sentencepiece) ships beside them."""

    tokenizer: str  # "sentencepiece" | "chars"
    vocab: list[str]  # token id -> piece; ids 0-3 are <pad>, <unk>, <s>, </s>
    rnn: str  # "lstm" | "gru" (the decoder's state: h, or h and c)
    dec_layers: int
    hidden: int
    attention: str  # "bahdanau" | "luong"
    max_source_tokens: int
    max_target_tokens: int
    files_sha256: dict[str, str] = field(default_factory=dict)  # encoder.onnx, tokenizer.model

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Translation:
        positive = ("dec_layers", "hidden", "max_source_tokens", "max_target_tokens")
        check_text_section(cls, d, source, "translation", 5, positive)
        if d["tokenizer"] not in ("sentencepiece", "chars"):
            raise ContractError(f"{source}: translation.tokenizer must be 'sentencepiece' or 'chars'")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def state_names(self) -> list[str]:
        return ["h", "c"] if self.rnn == "lstm" else ["h"]


@dataclass(frozen=True)
class TextClassification:
    """A text classifier's serving contract (task ``textclf``): ``model.onnx`` reads ``x`` float32 ``[B, T, 1]``
    (token ids, ``<s>`` first, as floats) and ``lengths``, and returns ``probabilities`` ``[B, C]`` over the
    artifact's ``classes`` and ``attention`` ``[B, T]``. The tokenizer (``tokenizer.model``) ships beside it."""

    tokenizer: str  # "sentencepiece"
    vocab: list[str]  # token id -> piece; ids 0-3 are <pad>, <unk>, <s>, </s>
    rnn: str  # "lstm" | "gru"
    layers: int
    hidden: int
    max_tokens: int  # the most tokens (with <s>) a text may have; longer texts are refused
    base_lm: dict[str, Any] = field(default_factory=dict)  # the pre-trained LM: run, version, val loss (or none)
    files_sha256: dict[str, str] = field(default_factory=dict)  # tokenizer.model

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> TextClassification:
        check_text_section(cls, d, source, "text_classification", 5, ("layers", "hidden", "max_tokens"))
        if d["tokenizer"] != "sentencepiece":
            raise ContractError(f"{source}: text_classification.tokenizer must be 'sentencepiece'")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
