"""Fixed call shapes (service/core/batching/shapes.py) on CPU through the same code as on CUDA, and the array hop
(service/core/batching/hop.py) between API worker and model service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.artifact import find_artifact
from service.core.batching import hop
from service.core.batching.shapes import MAX_SHAPES, parse_ladder
from service.core.settings import Settings
from service.tasks.classify.engine import Engine


def test_default_ladder_doubles_steps_up_to_max_length_within_the_step_budget() -> None:
    ladder = parse_ladder("", 300, 65536)
    assert ladder.batches == (16, 64, 256, 512)
    assert ladder.steps == (16, 32, 64, 128, 256, 300)
    assert (512, 128) in ladder.shapes and (512, 256) not in ladder.shapes and (256, 256) in ladder.shapes
    assert all(b * t <= 65536 or b == 16 for b, t in ladder.shapes)
    explicit = parse_ladder("8, 2 @ 10,40", 64, 4096)
    assert explicit.batches == (2, 8) and explicit.steps == (10, 40, 64)


@pytest.mark.parametrize(
    "raw, needle",
    [("16,x", "batch sizes must be comma-separated integers"), ("0,16", ">= 1"), ("16@32,999", "<= the served")],
)
def test_a_bad_ladder_names_the_variable(raw: str, needle: str) -> None:
    with pytest.raises(ValueError, match="SEQSERVE_CUDA_SHAPES") as e:
        parse_ladder(raw, 128, 65536)
    assert needle in str(e.value)


def test_a_ladder_with_too_many_shapes_is_refused() -> None:
    raw = ",".join(str(b) for b in range(1, 17)) + "@" + ",".join(str(t) for t in range(1, 9))
    with pytest.raises(ValueError, match=f"more than {MAX_SHAPES}"):
        parse_ladder(raw, 8, 1 << 20)


@pytest.mark.parametrize("seed", range(3))
def test_plan_covers_everything_once_in_shapes_of_the_ladder(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 1001, size=700)
    ladder = parse_ladder("4,16,64", 1000, 4096)
    calls = ladder.plan(lengths)
    assert sorted(np.concatenate([g for g, _, _ in calls]).tolist()) == list(range(700))
    for g, b, t in calls:
        assert (b, t) in ladder.shapes
        assert len(g) <= b and lengths[g].max() <= t
        assert t == min(s for s in ladder.steps if s >= lengths[g].max())  # the tightest rung


def test_fixed_shapes_give_the_exact_engines_answers_alone_and_batched(artifact: Path) -> None:
    art = find_artifact(str(artifact))
    exact = Engine(art, Settings(device="cpu", fixed_shapes="off", max_length=40))
    shaped = Engine(art, Settings(device="cpu", fixed_shapes="on", cuda_shapes="4,16@8,20", max_length=40))
    report = shaped.shapes.report
    assert [s["shape"] for s in report["shapes"]] == [[4, 8], [16, 8], [4, 20], [16, 20], [4, 40], [16, 40]]
    assert all(max(s["max_abs_diff_batched"], s["max_abs_diff_alone"]) <= 1e-5 for s in report["shapes"])
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((int(n), art.meta.feature_dim)).astype(np.float32) for n in rng.integers(1, 41, 53)]
    p0, a0, _ = exact.infer(seqs)
    p1, a1, stats = shaped.infer(seqs)
    assert stats.model_calls == 4 and max(stats.call_sizes) == 16  # 53 sequences in calls of at most 16 rows
    assert np.abs(p1 - p0).max() <= 1e-5
    assert all(a.shape == b.shape and np.abs(a - b).max() <= 1e-5 for a, b in zip(a1, a0))
    for i in (0, 7, 52):  # alone, each in the smallest shape that holds it: the same answer as batched
        p, a, _ = shaped.infer([seqs[i]])
        assert np.abs(p[0] - p1[i]).max() <= 1e-6 and np.abs(a[0] - a1[i]).max() <= 1e-6


def test_a_setting_that_turns_fixed_shapes_off_keeps_the_cpu_path(artifact: Path) -> None:
    engine = Engine(find_artifact(str(artifact)), Settings(device="cpu"))  # auto: fixed shapes with CUDA only
    assert engine.shapes is None


def test_the_hop_packs_a_call_into_arrays_and_back() -> None:
    rng = np.random.default_rng(1)
    items = [(1.0 + i, 42, rng.standard_normal((n, 3)).astype(np.float32), 9.0) for i, n in enumerate([2, 5, 1])]
    call = hop.pack(items)
    assert call.x.shape == (8, 3) and call.lengths.tolist() == [2, 5, 1] and call.pid == 42
    assert all(np.array_equal(a, s) for a, (_, _, s, _) in zip(call.sequences(), items))
    other = hop.pack(items[:1])
    batch = hop.merge([call, other])
    assert batch.count == 4 and hop.sources([call, other]) == 1
    probs = np.arange(8, dtype=np.float32).reshape(4, 2)
    computed = np.array([True, False, True, True])
    answers = hop.split(hop.Answer(probs, np.arange(10, dtype=np.float32), computed, "v1"), [call, other])
    first = hop.unpack(tuple(answers[0]), call.lengths)  # a plain tuple, as it arrives
    assert first[1] is None and first[0][2] == "v1"
    assert first[0][1].tolist() == [0, 1] and first[2][1].tolist() == [7]
    assert hop.unpack(answers[1], other.lengths)[0][1].tolist() == [8, 9]
