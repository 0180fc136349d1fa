"""Length-sorted sub-batch planning, padding buffers, and the in-process engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.core.artifact import find_artifact
from service.core.batching.padding import PadBuffer, bucket_shape, padding_efficiency, plan_batches
from service.core.settings import Settings
from service.tasks.classify.engine import Engine
from training import data
from training.onnx import cpu_session

ROOT = Path(__file__).resolve().parents[1]


def long_tail_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Mostly short (7..29), a tenth 10-40x longer."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(7, 30, size=n)
    tail = rng.random(n) < 0.1
    lengths[tail] = lengths[tail] * rng.integers(10, 41, size=tail.sum())
    return lengths


@pytest.mark.parametrize("seed", range(5))
def test_plan_covers_everything_once_and_respects_limits(seed: int) -> None:
    lengths = long_tail_lengths(300, seed)
    groups = plan_batches(lengths, step_budget=4096, max_batch=64, min_efficiency=0.85)
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(300))
    for g in groups:
        assert len(g) <= 64
        assert len(g) == 1 or len(g) * lengths[g].max() <= 4096
        assert len(g) == 1 or lengths[g].sum() >= 0.85 * len(g) * lengths[g].max()
    assert padding_efficiency(lengths, groups) >= 0.85
    naive = lengths.sum() / (len(lengths) * lengths.max())
    assert naive < 0.2  # one padded batch would waste most of the compute


def test_pad_buffer_reuses_memory_and_zeroes_padding() -> None:
    buf = PadBuffer(3)
    a = [np.ones((5, 3), np.float32), np.full((2, 3), 2, np.float32)]
    x, lengths = buf.pad(a)
    assert x.shape == (2, 5, 3) and x.flags.c_contiguous and lengths.tolist() == [5, 2]
    assert np.all(x[1, 2:] == 0) and np.all(x[1, :2] == 2)
    base = x.base
    x2, _ = buf.pad([np.full((3, 3), 7, np.float32)])  # smaller: same memory, old values cleared
    assert x2.base is base and x2.shape == (1, 3, 3) and np.all(x2 == 7)
    x3, _ = buf.pad([np.ones((1, 3), np.float32), np.ones((4, 3), np.float32)])
    assert np.all(x3[0, 1:] == 0)


def test_bucket_shapes_are_few_and_waste_little() -> None:
    assert bucket_shape(1, 7) == (1, 7) and bucket_shape(3, 16) == (4, 16) and bucket_shape(64, 17) == (64, 18)
    assert bucket_shape(65, 29) == (128, 30) and bucket_shape(200, 1000) == (256, 1024)
    shapes = {bucket_shape(1, t)[1] for t in range(1, 1025)}
    assert len(shapes) < 80  # 16 exact, then 8 per octave
    assert all(t <= bucket_shape(1, t)[1] <= t * 1.125 for t in range(1, 1025))
    buf = PadBuffer(2)
    x, lengths = buf.pad([np.ones((5, 2), np.float32)] * 3, buckets=True)
    assert x.shape == (4, 5, 2) and lengths.tolist() == [5, 5, 5, 1] and np.all(x[3] == 0)


@pytest.mark.parametrize("buckets", ["off", "on"])
def test_engine_results_do_not_depend_on_batch_composition(artifact: Path, buckets: str) -> None:
    settings = Settings(device="cpu", ort_threads=1, step_budget=512, max_sub_batch=16, min_efficiency=0.85)
    engine = Engine(find_artifact(str(artifact)), replace(settings, shape_buckets=buckets))
    assert engine.batching.shape_buckets == (buckets == "on")
    test = data.load(ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts")
    rng = np.random.default_rng(0)
    seqs = [test.sequences[i] for i in rng.permutation(370)]
    probs, att, stats = engine.infer(seqs)
    assert stats.model_calls > 1 and stats.padding_efficiency >= 0.85 and stats.sequences == 370
    sess = cpu_session(artifact / "model.onnx")
    for i in range(0, 370, 23):
        p, a = sess.run(None, {"x": seqs[i][None], "lengths": np.array([len(seqs[i])], np.int64)})
        np.testing.assert_allclose(probs[i], p[0], atol=1e-6)
        np.testing.assert_allclose(att[i], a[0], atol=1e-6)
    body, _ = engine.predict(seqs[:3])
    out = json.loads(body)
    assert [len(o["attention"]) for o in out] == [len(s) for s in seqs[:3]]
