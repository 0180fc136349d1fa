"""The model artifact: ``metadata.json`` as one typed object, and finding, checking and storing artifacts.

An artifact is a directory (or a BentoML model store entry) holding ``model.onnx`` (or a task's graphs),
``metadata.json``, ``reference.npz`` (reference outputs for the load-time check) and ``checkpoint.pt`` (what
retraining fine-tunes from; the service never reads it).

* **The contract.** Export builds the metadata, validates it through ``ArtifactMeta.from_dict`` and writes
  ``to_dict()``; the service reads it back with ``from_dict`` (``find_artifact``), so both sides agree on names
  and types, and an artifact of an unknown schema version or with a missing or mistyped field is refused with a
  message naming the field. Two tasks share it: ``classify`` (the default: classes, features, normalisation) and
  ``generate`` (a character language model: its vocabulary, state shape and limits in ``generation``; the
  classifier fields are empty). The task decides which fields must be present.
* **Finding.** ``find_artifact`` resolves a model store tag or a directory (``SEQSERVE_MODEL``), in the local
  store only; ``use_project_model_store`` pins every entry point to one store.
* **Integrity.** ``check_integrity``: ``model.onnx``'s SHA-256 against the metadata's ``onnx_sha256``.
* **Storing.** ``save_to_store`` puts an artifact directory into the model store under its content-hash
  version (idempotent).

It lives with its reader, the service (export writes through it); no torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("seqserve")

SCHEMA_VERSION = 1
NORMALISATION_MODES = ("global", "series")
# The tasks an artifact may declare, and the BentoML entry that serves each (the training registry names these too).
ENTRIES = {
    "classify": "service.service:SeqServe",
    "generate": "service.generate_service:SeqGenerate",
    "forecast": "service.forecast_service:SeqForecast",
    "translate": "service.translate_service:SeqTranslate",
    "textclf": "service.textclf_service:SeqTextClf",
}
TASKS = tuple(ENTRIES)


class ContractError(ValueError):
    """metadata.json does not follow the artifact contract."""


@dataclass(frozen=True)
class Normalisation:
    mode: str  # "global": (x - mean) / std in the graph; "series": each sequence z-normalised on its own steps
    mean: list[float]  # per-feature training statistics (also the drift monitor's reference)
    std: list[float]


def check_text_section(
    cls: type, d: dict[str, Any], source: str, section: str, min_vocab: int, positive: tuple[str, ...]
) -> None:
    """What the token models' sections (``generation``, ``translation``) share: every field without a default
    present, a vocabulary of at least ``min_vocab`` strings, an LSTM or GRU, and ``positive`` sizes."""
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
    forecasting: Forecasting | None = None  # task "forecast" only
    translation: Translation | None = None  # task "translate" only
    text_classification: TextClassification | None = None  # task "textclf" only
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
        if task in ("generate", "translate"):  # token models: their limits live in their section
            gen = Generation.from_dict(need("generation", dict), source) if task == "generate" else None
            tr = Translation.from_dict(need("translation", dict), source) if task == "translate" else None
            limit = gen.max_prompt_tokens if gen is not None else tr.max_source_tokens  # type: ignore[union-attr]
            return cls(
                schema_version=version,
                model_name=need("model_name", str),
                model_version=need("model_version", str),
                classes=[],
                feature_dim=0,
                max_length=limit,
                training_length_range=[1, limit],
                normalisation=Normalisation("global", [], []),
                rnn=need("rnn", dict),
                training_metrics=dict(d.get("training_metrics") or {}),
                task=task,
                generation=gen,
                translation=tr,
                extra={k: v for k, v in d.items() if k not in known},
            )
        if task == "forecast":
            fc = Forecasting.from_dict(need("forecasting", dict), source)
            max_length = need("max_length", int)
            return cls(
                schema_version=version,
                model_name=need("model_name", str),
                model_version=need("model_version", str),
                classes=[],
                feature_dim=1 + fc.time_features + len(fc.covariates),
                max_length=max_length,
                training_length_range=list(d.get("training_length_range") or [1, max_length]),
                normalisation=Normalisation("series", [], []),
                rnn=need("rnn", dict),
                training_metrics=dict(d.get("training_metrics") or {}),
                task=task,
                forecasting=fc,
                extra={k: v for k, v in d.items() if k not in known},
            )
        if task == "textclf":
            tc = TextClassification.from_dict(need("text_classification", dict), source)
            classes = need("classes", list)
            if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
                raise ContractError(f"{source}: classes must be a list of at least 2 strings")
            return cls(
                schema_version=version,
                model_name=need("model_name", str),
                model_version=need("model_version", str),
                classes=list(classes),
                feature_dim=1,
                max_length=tc.max_tokens,
                training_length_range=list(d.get("training_length_range") or [1, tc.max_tokens]),
                normalisation=Normalisation("global", [0.0], [1.0]),
                rnn=need("rnn", dict),
                training_metrics=dict(d.get("training_metrics") or {}),
                task=task,
                text_classification=tc,
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
        sections = {"generation", "forecasting", "translation", "text_classification"}
        if self.task in ("generate", "translate"):  # the classifier's fields mean nothing here
            skip = {"classes", "feature_dim", "max_length", "training_length_range", "normalisation"}
            skip |= sections - {"generation" if self.task == "generate" else "translation"}
        elif self.task == "forecast":
            skip = {"classes", "feature_dim", "normalisation"} | sections - {"forecasting"}
        elif self.task == "textclf":
            skip = {"feature_dim", "max_length", "normalisation"} | sections - {"text_classification"}
        else:
            skip = sections
        d = {k: v for k, v in d.items() if k not in skip}
        return {**{k: v for k, v in d.items() if k != "extra"}, **self.extra}


REFERENCE_FILE = "reference.npz"


class ModelNotFound(RuntimeError):
    pass


NO_MODEL = (
    "no model to serve: set SEQSERVE_MODEL (a model store tag or an artifact directory) or promote a champion "
    "(python -m export.promote artifacts/default --store; make serve does both: make export first)"
)


def use_project_model_store() -> str:
    """Every seqserve entry point uses one model store: ``BENTOML_HOME``, else ``.bentoml/`` in the working
    directory (what the Makefile sets), never BentoML's ``~/bentoml`` default. Call before touching bentoml."""
    return os.environ.setdefault("BENTOML_HOME", str(Path.cwd() / ".bentoml"))


class ReferenceMismatch(RuntimeError):
    """A session's outputs differ from the artifact's recorded reference outputs."""


@dataclass
class Artifact:
    path: Path  # directory holding model.onnx and metadata.json
    meta: ArtifactMeta
    source: str  # the tag or path it was found by

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def reference_path(self) -> Path:
        return self.path / REFERENCE_FILE


def find_artifact(ref: str | None = None) -> Artifact:
    """Resolve ``ref`` (tag or directory; default from ``SEQSERVE_MODEL``) in the local store only."""
    ref = ref or os.environ.get("SEQSERVE_MODEL")
    if not ref:
        raise ModelNotFound(NO_MODEL)
    candidate = Path(ref)
    if candidate.is_dir():
        path = candidate
    else:
        import bentoml
        from bentoml.exceptions import BentoMLException

        try:
            # The local store only: never reach for a remote/cloud model on a missing tag.
            path = Path(bentoml.models.get(ref).path)
        except BentoMLException as e:
            home = os.environ.get("BENTOML_HOME", "~/bentoml")
            raise ModelNotFound(
                f"model {ref!r} is not in the local model store ({home}); run `make export` first ({e})"
            ) from None
    if not (path / "model.onnx").exists() or not (path / "metadata.json").exists():
        raise ModelNotFound(f"{path} does not hold model.onnx and metadata.json")
    meta = ArtifactMeta.from_dict(json.loads((path / "metadata.json").read_text()), str(path / "metadata.json"))
    return Artifact(path, meta, ref)


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_integrity(artifact: Artifact) -> None:
    """``model.onnx`` must be the file that was exported: its SHA-256 against the metadata's ``onnx_sha256``
    (a file damaged or replaced on disk is refused before ONNX Runtime reads it)."""
    expected = artifact.meta.extra.get("onnx_sha256")
    if not expected:
        log.warning("seqserve: artifact %s records no onnx_sha256; integrity not checked", artifact.source)
        return
    got = file_sha256(artifact.onnx_path)
    if got != expected:
        raise ReferenceMismatch(
            f"model {artifact.source}: model.onnx has SHA-256 {got[:16]}..., the metadata says "
            f"{expected[:16]}...: the file was damaged or replaced; refusing to serve it"
        )


ARTIFACT_FILES = ("model.onnx", "metadata.json", "reference.npz", "checkpoint.pt")
OPTIONAL_FILES = ("reference.npz", "checkpoint.pt")  # absent from artifacts exported by older versions
# Beside the common ones, where the task has them.
TASK_FILES = {"translate": ("encoder.onnx", "tokenizer.model"), "textclf": ("tokenizer.model",)}


def save_to_store(artifact_dir: str | Path) -> str:
    """Store the artifact under its content-hash version (idempotent); return the tag string."""
    artifact_dir = Path(artifact_dir)
    meta = json.loads((artifact_dir / "metadata.json").read_text())
    tag = f"{meta['model_name']}:{meta['model_version']}"
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
        return tag  # the same bytes are already stored
    except NotFound:
        pass
    labels = {"task": meta.get("task", "classify"), "rnn": meta["rnn"]["rnn"]}
    labels.update({"attention": meta["rnn"]["attention"]} if "attention" in meta["rnn"] else {})
    keys = ("schema_version", "feature_dim", "max_length", "opset", "created_at")
    summary = {k: meta[k] for k in keys if k in meta}
    for k in ("test_accuracy", "val_loss_nats"):
        if k in meta["training_metrics"]:
            summary[k] = meta["training_metrics"][k]
    with bentoml.models.create(tag, labels=labels, metadata=summary, module="seqserve") as model:
        for name in ARTIFACT_FILES:
            if name in OPTIONAL_FILES and not (artifact_dir / name).exists():
                continue  # exported before these files existed (unchecked at load / retrained from scratch)
            shutil.copy2(artifact_dir / name, model.path_of(name))
        for name in TASK_FILES.get(meta.get("task", "classify"), ()):
            if (artifact_dir / name).exists():
                shutil.copy2(artifact_dir / name, model.path_of(name))
    return tag
