"""The artifact contract: ``metadata.json`` as one typed object, written by export and read by the service.

Export builds the metadata, validates it through ``ArtifactMeta.from_dict`` and writes ``to_dict()``; the
service reads it back with ``from_dict`` (``service.runtime.find_artifact``), so both sides agree on names and
types, and an artifact of an unknown schema version or with a missing or mistyped field is refused with a
message naming the field. No torch here: the service imports this module.

Two tasks share the contract: ``classify`` (the default: classes, features, normalisation) and ``generate`` (a
character language model: its vocabulary, state shape and limits in ``generation``; the classifier fields are
empty). The task decides which fields must be present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
NORMALISATION_MODES = ("global", "series")
TASKS = ("classify", "generate")


class ContractError(ValueError):
    """metadata.json does not follow the artifact contract."""


@dataclass(frozen=True)
class Normalisation:
    mode: str  # "global": (x - mean) / std in the graph; "series": each sequence z-normalised on its own steps
    mean: list[float]  # per-feature training statistics (also the drift monitor's reference)
    std: list[float]


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
    forms: dict[str, Any] = field(default_factory=dict)  # constraint presets (service/forms.py)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Generation:
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k != "forms"]
        if missing:
            raise ContractError(f"{source}: missing field 'generation.{missing[0]}'")
        vocab, special = d["vocab"], d["special_ids"]
        if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(v, str) for v in vocab):
            raise ContractError(f"{source}: generation.vocab must be a list of at least 2 strings")
        if "unk" not in special or not all(isinstance(i, int) and 0 <= i < len(vocab) for i in special.values()):
            raise ContractError(f"{source}: generation.special_ids needs 'unk' and ids within the vocabulary")
        if d["rnn"] not in ("lstm", "gru"):
            raise ContractError(f"{source}: generation.rnn must be 'lstm' or 'gru', got {d['rnn']!r}")
        for k in ("layers", "hidden", "chunk", "max_prompt_tokens", "max_new_tokens"):
            if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 1:
                raise ContractError(f"{source}: generation.{k} must be a positive integer")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def state_names(self) -> list[str]:
        return ["h", "c"] if self.rnn == "lstm" else ["h"]


@dataclass(frozen=True)
class ArtifactMeta:
    schema_version: int
    model_name: str
    model_version: str  # content hash of the graph and the serving contract
    classes: list[str]
    feature_dim: int
    max_length: int  # longest accepted sequence (a resource limit)
    training_length_range: list[int]  # [shortest, longest] training sequence, for monitoring
    normalisation: Normalisation
    rnn: dict[str, Any]  # the model configuration (rnn type, hidden, layers, ...)
    training_metrics: dict[str, Any] = field(default_factory=dict)
    task: str = "classify"
    generation: Generation | None = None  # task "generate" only
    extra: dict[str, Any] = field(default_factory=dict)  # every other field of metadata.json (parity, opset, ...)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "metadata.json") -> ArtifactMeta:
        def need(key: str, kind: type | tuple[type, ...], where: dict[str, Any] = d, prefix: str = "") -> Any:
            if key not in where:
                raise ContractError(f"{source}: missing field {prefix + key!r}")
            value = where[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ContractError(f"{source}: field {prefix + key!r} has type {type(value).__name__}")
            return value

        version = need("schema_version", int)
        if version != SCHEMA_VERSION:
            raise ContractError(f"{source}: schema_version {version}, this seqserve reads {SCHEMA_VERSION}")
        task = d.get("task", "classify")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        if task not in TASKS:
            raise ContractError(f"{source}: task {task!r} is not one of {TASKS}")
        if task == "generate":
            gen = Generation.from_dict(need("generation", dict), source)
            return cls(
                schema_version=version,
                model_name=need("model_name", str),
                model_version=need("model_version", str),
                classes=[],
                feature_dim=0,
                max_length=gen.max_prompt_tokens,
                training_length_range=[1, gen.max_prompt_tokens],
                normalisation=Normalisation("global", [], []),
                rnn=need("rnn", dict),
                training_metrics=dict(d.get("training_metrics") or {}),
                task=task,
                generation=gen,
                extra={k: v for k, v in d.items() if k not in known},
            )
        norm = need("normalisation", dict)
        mode = norm.get("mode", "global")
        if mode not in NORMALISATION_MODES:
            raise ContractError(f"{source}: normalisation.mode {mode!r} is not one of {NORMALISATION_MODES}")
        feature_dim = need("feature_dim", int)
        mean = need("mean", list, norm, "normalisation.")
        std = need("std", list, norm, "normalisation.")
        if len(mean) != feature_dim or len(std) != feature_dim:
            raise ContractError(f"{source}: normalisation mean/std need {feature_dim} values (feature_dim)")
        classes = need("classes", list)
        if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise ContractError(f"{source}: classes must be a list of at least 2 strings")
        max_length = need("max_length", int)
        return cls(
            schema_version=version,
            model_name=need("model_name", str),
            model_version=need("model_version", str),
            classes=list(classes),
            feature_dim=feature_dim,
            max_length=max_length,
            training_length_range=list(d.get("training_length_range") or [1, max_length]),
            normalisation=Normalisation(mode, [float(v) for v in mean], [float(v) for v in std]),
            rnn=need("rnn", dict),
            training_metrics=dict(d.get("training_metrics") or {}),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.task == "generate":  # the classifier's fields mean nothing here
            skip = {"classes", "feature_dim", "max_length", "training_length_range", "normalisation"}
            d = {k: v for k, v in d.items() if k not in skip}
        else:
            d.pop("generation")
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}
