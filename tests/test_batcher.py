"""The cap on BentoML's learned batch wait (service/core/bentoml_patches.py), on BentoML's real Optimizer."""

from __future__ import annotations

from bentoml._internal.marshal.dispatcher import Optimizer

from service.core.bentoml_patches import cap_learned_wait


def test_learned_wait_is_capped_but_timings_still_learned() -> None:
    original = Optimizer.trigger_refresh
    try:
        assert cap_learned_wait(0.002)
        assert cap_learned_wait(0.002)  # idempotent: wraps the original once
        opt = Optimizer(max_latency=2.0)
        for n in range(1, 30):  # batches that waited 50 ms behind a busy model, 1 ms per item + 2 ms
            opt.o_stat.append((n, 0.001 * n + 0.002, 0.050))
        opt.trigger_refresh()
        assert opt.wait == 0.002  # BentoML alone would idle 50 ms before each lone request
        assert abs(opt.o_a - 0.001) < 1e-9 and abs(opt.o_b - 0.002) < 1e-9  # the timing model is untouched
        opt.o_stat.clear()
        opt.o_stat.extend([(1, 0.003, 0.0005)] * 5)
        opt.trigger_refresh()
        assert opt.wait == 0.0005  # below the cap: unchanged
    finally:
        Optimizer.trigger_refresh = original
