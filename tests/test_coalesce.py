"""The API worker's coalescing of concurrent requests into model service calls (pure asyncio, no server)."""

from __future__ import annotations

import asyncio

import pytest

from service.core.batching.coalesce import Coalescer


class SlowModel:
    """Answers each item with (item, call number) after a short delay; records the calls it got."""

    def __init__(self, fail_on: object = None) -> None:
        self.calls: list[list] = []
        self.fail_on = fail_on

    async def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        await asyncio.sleep(0.01)
        if self.fail_on in items:
            raise RuntimeError("model failed")
        return [(item, len(self.calls)) for item in items]


def test_idle_request_is_sent_at_once_and_busy_ones_share_calls() -> None:
    async def scenario() -> tuple[SlowModel, list]:
        model = SlowModel()
        c = Coalescer(model, max_in_flight=2, max_items=256)
        requests = [[f"r{i}a", f"r{i}b"] if i % 3 == 0 else [f"r{i}"] for i in range(20)]
        results = await asyncio.gather(*(c.submit(r) for r in requests))
        return model, list(zip(requests, results))

    model, pairs = asyncio.run(scenario())
    assert model.calls[0] == ["r0a", "r0b"] and model.calls[1] == ["r1"]  # nothing waited while idle
    assert len(model.calls) < 20  # the other 18 requests travelled together
    for request, result in pairs:
        assert [item for item, _ in result] == request  # each request gets exactly its own answers, in order


def test_max_items_bounds_a_call() -> None:
    async def scenario() -> SlowModel:
        model = SlowModel()
        c = Coalescer(model, max_in_flight=1, max_items=5)
        await asyncio.gather(*(c.submit([i, i]) for i in range(12)))
        return model

    model = asyncio.run(scenario())
    assert max(len(call) for call in model.calls) <= 5 and sum(len(call) for call in model.calls) == 24


def test_an_error_reaches_the_requests_of_that_call_only() -> None:
    async def scenario() -> list:
        model = SlowModel(fail_on="bad")
        c = Coalescer(model, max_in_flight=1, max_items=2)
        return await asyncio.gather(
            c.submit(["a"]), c.submit(["b"]), c.submit(["bad"]), c.submit(["c"]), return_exceptions=True
        )

    a, b, bad, c = asyncio.run(scenario())  # calls: [a], [b, bad] (fails), [c]
    assert a == [("a", 1)] and c == [("c", 3)]
    assert isinstance(b, RuntimeError) and isinstance(bad, RuntimeError)


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_never_more_calls_in_flight_than_allowed(in_flight: int) -> None:
    async def scenario() -> int:
        peak = running = 0

        async def model(items: list) -> list:
            nonlocal peak, running
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.005)
            running -= 1
            return items

        c = Coalescer(model, max_in_flight=in_flight)
        await asyncio.gather(*(c.submit([i]) for i in range(50)))
        return peak

    assert asyncio.run(scenario()) == in_flight
