"""The artifact contract: ``metadata.json`` as one typed object, written by export and read by the service.

Export builds the metadata, validates it through ``ArtifactMeta.from_dict`` and writes ``to_dict()``; the
service reads it back with ``from_dict`` (``service.runtime.find_artifact``), so both sides agree on names and
types, and an artifact of an unknown schema version or with a missing or mistyped field is refused with a
message naming the field. No torch here: the service imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
NORMALISATION_MODES = ("global", "series")


class ContractError(ValueError):
    """metadata.json does not follow the artifact contract."""


@dataclass(frozen=True)
class Normalisation:
    mode: str  # "global": (x - mean) / std in the graph; "series": each sequence z-normalised on its own steps
    mean: list[float]  # per-feature training statistics (also the drift monitor's reference)
    std: list[float]


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
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
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
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}
