"""The artifact contract: metadata.json read and written as one typed object, refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.artifact import SCHEMA_VERSION, ArtifactMeta, ContractError


def test_exported_metadata_round_trips(artifact: Path) -> None:
    raw = json.loads((artifact / "metadata.json").read_text())
    meta = ArtifactMeta.from_dict(raw)
    assert meta.schema_version == SCHEMA_VERSION and meta.feature_dim == 12 and len(meta.classes) == 9
    assert meta.normalisation.mode == "global" and len(meta.normalisation.mean) == 12
    assert meta.training_length_range == [7, 26] and meta.extra["parity"]["passed"]
    assert meta.to_dict() == raw


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("classes"), "missing field 'classes'"),
        (lambda d: d.update(feature_dim="12"), "field 'feature_dim' has type str"),
        (lambda d: d.update(schema_version=99), "schema_version 99, this seqserve reads 1"),
        (lambda d: d["normalisation"].update(mode="minmax"), "normalisation.mode 'minmax'"),
        (lambda d: d["normalisation"].update(mean=[0.0]), "need 12 values (feature_dim)"),
        (lambda d: d["normalisation"].pop("std"), "missing field 'normalisation.std'"),
    ],
)
def test_a_broken_artifact_is_refused_naming_the_field(artifact: Path, change, message: str) -> None:  # noqa: ANN001
    raw = json.loads((artifact / "metadata.json").read_text())
    change(raw)
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ArtifactMeta.from_dict(raw, "metadata.json")


def test_a_language_model_artifact_round_trips(lm_artifact: Path) -> None:
    raw = json.loads((lm_artifact / "metadata.json").read_text())
    meta = ArtifactMeta.from_dict(raw)
    assert meta.task == "generate" and meta.generation is not None and meta.generation.state_names == ["h", "c"]
    assert meta.classes == [] and meta.to_dict() == raw


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(task="summarise"), "task .summarise. is not one of"),
        (lambda d: d.pop("generation"), "missing field 'generation'"),
        (lambda d: d["generation"].pop("hidden"), "missing field 'generation.hidden'"),
        (lambda d: d["generation"].update(rnn="rnn"), "generation.rnn must be 'lstm' or 'gru'"),
        (lambda d: d["generation"].update(chunk=0), "generation.chunk must be a positive integer"),
        (lambda d: d["generation"].update(special_ids={}), "generation.special_ids needs 'unk'"),
        (lambda d: d["generation"].update(vocab=["a"]), "generation.vocab must be a list of at least 2"),
    ],
)
def test_a_broken_language_model_artifact_is_refused(lm_artifact: Path, change, message: str) -> None:  # noqa: ANN001
    raw = json.loads((lm_artifact / "metadata.json").read_text())
    change(raw)
    with pytest.raises(ContractError, match=message):
        ArtifactMeta.from_dict(raw, "metadata.json")
