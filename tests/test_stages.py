"""The stage timeline (service/core/stages.py) and make profile-tail's quantiles (loadtest/profile_tail.py)."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.profile_tail import quantile
from service.core.stages import STAGE_BUCKETS, Timeline


def test_the_stages_of_a_timeline_add_up_to_its_total() -> None:
    t = Timeline(10.0, handled=10.001, sent=10.002, batch_started=10.004, batch_finished=10.005, back=10.0065)
    d = t.durations(10.007)
    assert list(d) == ["parse", "queue", "to_batch", "compute", "from_batch", "respond", "total"]
    assert sum(v for k, v in d.items() if k != "total") == pytest.approx(d["total"]) == pytest.approx(0.007)
    assert Timeline(10.0, handled=10.001).durations(10.002) == {}  # refused before the model: no stages


def test_histogram_quantiles_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(np.log(0.004), 0.6, 5000)
    bounds = [*STAGE_BUCKETS, float("inf")]
    cumulative = {le: float((samples <= le).sum()) for le in bounds}
    for q in (0.5, 0.99):
        exact = float(np.quantile(samples, q))
        upper = next(b for b in bounds if b >= exact)
        lower = max([0.0, *[b for b in bounds if b < exact]])
        assert lower <= quantile(q, cumulative) <= upper
    assert quantile(0.5, {float("inf"): 0.0}) is None
