"""The model artifact: ``metadata.json`` as one typed object, and finding, checking and storing artifacts.

An artifact is a directory (or a BentoML model store entry) holding ``model.onnx`` (or a task's graphs),
``metadata.json``, ``reference.npz`` (reference outputs for the load-time check) and ``checkpoint.pt`` (what
retraining fine-tunes from; the service never reads it).

* **The contract.** Export builds the metadata, validates it through ``ArtifactMeta.from_dict`` and writes
  ``to_dict()``; the service reads it back with ``from_dict`` (``find_artifact``), so both sides agree on names
  and types, and an artifact of an unknown schema version or with a missing or mistyped field is refused with a
  message naming the field. Every task shares it: ``classify`` (the default: classes, features, normalisation);
  ``generate``, ``forecast``, ``translate`` and ``textclf`` each add their section (``service.core.sections``:
  vocabulary, limits, graph shapes), the classifier's fields they do not use left empty. The task decides which
  fields must be present.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.core.sections import ContractError, Forecasting, Generation, TextClassification, Translation

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


def check_file_hashes(path: Path, files_sha256: dict[str, str]) -> None:
    """A task's extra files (tokenizer, second graph) must be the ones exported: each one's SHA-256 as recorded."""
    for name, want in files_sha256.items():
        f = path / name
        if not f.exists():
            raise ReferenceMismatch(f"{path}: {name} is missing (the metadata records it)")
        got = file_sha256(f)
        if got != want:
            raise ReferenceMismatch(f"{path}: {name} has SHA-256 {got[:16]}..., the metadata says {want[:16]}...")


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
        for stored in meta.get("training_data", {}).get("files", {}).values():  # what a retrain reads
            shutil.copy2(artifact_dir / stored["file"], model.path_of(stored["file"]))
    return tag
