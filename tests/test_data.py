"""Readers for .ts and JSONL, on the bundled data and on malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import data

ROOT = Path(__file__).resolve().parents[1]
JV = ROOT / "data/JapaneseVowels"

HEADER = (
    "@problemName t\n@timeStamps false\n@univariate false\n@dimensions 2\n@equalLength false\n"
    "@classLabel true a b\n@data\n"
)


def test_japanese_vowels_shapes() -> None:
    train = data.load(JV / "JapaneseVowels_TRAIN.ts")
    test = data.load(JV / "JapaneseVowels_TEST.ts")
    assert (len(train), len(test)) == (270, 370)
    assert train.classes == [str(i) for i in range(1, 10)]
    assert train.feature_dim == test.feature_dim == 12
    lengths = np.concatenate([train.lengths, test.lengths])
    assert (lengths.min(), lengths.max()) == (7, 29)
    assert all(s.dtype == np.float32 and s.shape[1] == 12 for s in train.sequences)
    # first value of the first training series, straight from the file
    assert train.sequences[0][0, 0] == pytest.approx(1.860936)
    assert train.sequences[0][0, 1] == pytest.approx(-0.207383)


def test_ts_variable_length(tmp_path: Path) -> None:
    p = tmp_path / "ok.ts"
    p.write_text("# comment\n" + HEADER + "1,2,3:4,5,6:a\n7:8:b\n")
    ds = data.read_ts(p)
    assert ds.labels == ["a", "b"] and ds.classes == ["a", "b"]
    np.testing.assert_array_equal(ds.sequences[0], [[1, 4], [2, 5], [3, 6]])
    assert ds.sequences[1].shape == (1, 2)


@pytest.mark.parametrize(
    "body, needle",
    [
        ("1,2,x:4,5,6:a\n", ":9 dim 0: not a number: 'x'"),
        ("1,2,3:4,5:a\n", ":9: dimensions have different lengths"),
        ("1,2,3:a\n", ":9: 1 dimensions, header says 2"),
        ("1,2:3,4:c\n", ":9: label 'c' not in @classLabel"),
        ("1,?:3,4:a\n", "missing value '?'"),
        ("1,nan:3,4:a\n", "non-finite value"),
    ],
)
def test_ts_malformed_names_file_and_line(tmp_path: Path, body: str, needle: str) -> None:
    p = tmp_path / "bad.ts"
    p.write_text(HEADER + "1,2:3,4:a\n" + body)
    with pytest.raises(data.DataError) as e:
        data.read_ts(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_ts_without_data_section(tmp_path: Path) -> None:
    p = tmp_path / "nodata.ts"
    p.write_text("@problemName x\n")
    with pytest.raises(data.DataError, match="no @data"):
        data.read_ts(p)


def test_jsonl_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"sequence": [[1, 2], [3, 4.5]], "label": "x"}, {"sequence": [[0, 0]], "label": 7}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = data.load(p)
    assert ds.labels == ["x", "7"] and ds.feature_dim == 2
    np.testing.assert_array_equal(ds.sequences[0], [[1, 2], [3, 4.5]])


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"sequence": [[1, 2]], "label": "a"', "invalid JSON"),
        ('{"sequence": [[1, 2]]}', "'sequence' and 'label'"),
        ('{"sequence": [], "label": "a"}', "non-empty list"),
        ('{"sequence": [[1, 2], [3]], "label": "a"}', "same, non-zero number of features"),
        ('{"sequence": [[1, "2"]], "label": "a"}', "non-number"),
        ('{"sequence": [[1, true]], "label": "a"}', "non-number"),
        ('{"sequence": [[1, NaN]], "label": "a"}', "non-finite"),
    ],
)
def test_jsonl_malformed_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"sequence": [[1, 2]], "label": "a"}\n' + line + "\n")
    with pytest.raises(data.DataError) as e:
        data.load(p)
    assert f"{p}:2" in str(e.value) and needle in str(e.value)


def test_feature_count_must_agree(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"sequence": [[1, 2]], "label": "a"}\n{"sequence": [[1, 2, 3]], "label": "a"}\n')
    with pytest.raises(data.DataError, match="different feature counts"):
        data.load(p)


def test_normalisation_and_stratified_split() -> None:
    train = data.load(JV / "JapaneseVowels_TRAIN.ts")
    tr, va = data.split(train, 0.15, seed=0)
    assert len(tr) + len(va) == 270
    assert sorted(set(va.labels)) == train.classes  # every class in validation
    assert {va.labels.count(c) for c in train.classes} == {round(30 * 0.15)}
    mean, std = data.normalisation(tr)
    steps = np.concatenate(tr.sequences)
    np.testing.assert_allclose(mean, steps.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, steps.std(0), rtol=1e-4)
    assert data.split(train, 0.15, seed=0)[1].labels == va.labels  # deterministic
