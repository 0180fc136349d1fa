"""The one settings object: every SEQSERVE_* variable read once; a bad value is an error naming its variable."""

from __future__ import annotations

import pytest

from service.core.settings import BATCHING_DEFAULTS, Batching, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQSERVE_DEVICE", "SEQSERVE_WORKERS", "SEQSERVE_MODEL_WORKERS", "SEQSERVE_MAX_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.device, s.workers, s.model_workers, s.max_length) == ("auto", 2, 1, 0)
    assert s.accepted_max_length(4096) == 4096


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_DEVICE", "CUDA")
    monkeypatch.setenv("SEQSERVE_MODEL_WORKERS", "3")
    monkeypatch.setenv("SEQSERVE_MIN_PADDING_EFFICIENCY", "0.5")
    monkeypatch.setenv("SEQSERVE_MAX_LENGTH", "64")
    s = Settings()
    assert (s.device, s.model_workers, s.min_efficiency) == ("cuda", 3, 0.5)
    assert s.accepted_max_length(4096) == 64


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SEQSERVE_WORKERS", "two", "SEQSERVE_WORKERS='two': expected an integer"),
        ("SEQSERVE_MODEL_WORKERS", "0", "SEQSERVE_MODEL_WORKERS=0: must be >= 1"),
        ("SEQSERVE_MAX_LENGTH", "-5", "SEQSERVE_MAX_LENGTH=-5: must be >= 0"),
        ("SEQSERVE_MIN_PADDING_EFFICIENCY", "high", "SEQSERVE_MIN_PADDING_EFFICIENCY='high': expected a number"),
        ("SEQSERVE_DEVICE", "tpu", "SEQSERVE_DEVICE='tpu': must be auto, cpu or cuda"),
        ("SEQSERVE_SHAPE_BUCKETS", "yes", "SEQSERVE_SHAPE_BUCKETS='yes': must be auto, on or off"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as e:
        Settings()
    assert str(e.value) == message


def test_batching_follows_the_provider_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQSERVE_STEP_BUDGET", "SEQSERVE_MAX_SUB_BATCH", "SEQSERVE_MIN_PADDING_EFFICIENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEQSERVE_SHAPE_BUCKETS", "auto")
    s = Settings()
    assert s.batching(cuda=False) == BATCHING_DEFAULTS[False] == Batching(8192, 128, 0.85, False)
    assert s.batching(cuda=True) == BATCHING_DEFAULTS[True] == Batching(65536, 512, 0.0, True)
    monkeypatch.setenv("SEQSERVE_MIN_PADDING_EFFICIENCY", "0")  # an explicit 0 is kept on the CPU too
    monkeypatch.setenv("SEQSERVE_MAX_SUB_BATCH", "32")
    monkeypatch.setenv("SEQSERVE_SHAPE_BUCKETS", "off")
    assert Settings().batching(cuda=True) == Batching(65536, 32, 0.0, False)
    assert Settings().batching(cuda=False) == Batching(8192, 32, 0.0, False)
