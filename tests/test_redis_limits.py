"""What a worker's limiter tells Redis of its requests, without Redis: the steps it takes."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from engine.redis_limits import RedisLimits
from engine.redis_store import Store


class Steps:
    """A store that records the steps sent in the background; every lane is free."""

    def __init__(self) -> None:
        self.later_steps: list[tuple[Any, ...]] = []

    async def persist(self, script: str, *args: Any) -> list[int]:
        assert script == "LANE_TAKE"
        return [3, 0, 50_000]

    def later(self, script: str, *args: Any) -> None:
        self.later_steps.append((script, *args))


@pytest.mark.looptime
async def test_only_a_late_answer_to_a_request_that_opened_its_connection_goes_to_redis() -> None:
    """The fastest answer is the worker's, over its keys: key b's first request, answered
    70 ms later than key a's, lengthens its lane by 70 ms; a later answer on a connection in
    use is jitter, and says nothing."""
    steps = Steps()
    limits = RedisLimits(cast(Store, steps), "w1", 10)
    a, b = limits.limiter("key:a"), limits.limiter("key:b")
    first, second = await a.acquire(), await b.acquire()
    a.sent(first, opened=True)
    b.sent(second, opened=True)
    await asyncio.sleep(0.02)
    a.answered(first)
    await asyncio.sleep(0.07)
    b.answered(second)
    third = await b.acquire()
    assert third != second  # another admission of lane 3: a token of its own
    b.sent(third)
    await asyncio.sleep(0.3)
    b.answered(third)
    b.answered(second)  # news already had: nothing
    late = [step for step in steps.later_steps if step[0] == "LANE_LATE"]
    assert late == [("LANE_LATE", "key:b", 3, "w1", 70)]
    sent = [step[:3] for step in steps.later_steps if step[0] == "LANE_SENT"]
    assert sent == [("LANE_SENT", "key:a", 3), ("LANE_SENT", "key:b", 3), ("LANE_SENT", "key:b", 3)]
