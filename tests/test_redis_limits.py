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
async def test_a_request_that_opened_its_connection_says_how_long_its_answer_took() -> None:
    """Redis weighs it against the fastest answer of any worker (``LANE_LATE``), and hears of
    this worker's fastest as it improves (``FASTEST``), over its keys; an answer on a
    connection in use says nothing of its own."""
    steps = Steps()
    limits = RedisLimits(cast(Store, steps), "w1", 10, exchange="c1")
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
    await asyncio.sleep(0.01)
    b.answered(third)  # on a connection in use, and the fastest yet
    b.answered(second)  # news already had: nothing
    told = [step for step in steps.later_steps if step[0] in ("LANE_LATE", "FASTEST")]
    assert told == [
        ("FASTEST", "c1", 20),
        ("LANE_LATE", "key:a", 3, "w1", 20, "c1"),
        ("LANE_LATE", "key:b", 3, "w1", 90, "c1"),
        ("FASTEST", "c1", 10),
    ]
    sent = [step[:3] for step in steps.later_steps if step[0] == "LANE_SENT"]
    assert sent == [("LANE_SENT", "key:a", 3), ("LANE_SENT", "key:b", 3), ("LANE_SENT", "key:b", 3)]


@pytest.mark.looptime
@pytest.mark.parametrize("all_late", [True, False])
async def test_a_burst_read_late_on_connections_in_use_holds_its_lanes_in_redis(
    all_late: bool,
) -> None:
    """As one process does (``test_a_burst_read_late_holds_its_lanes_on_connections_in_use_too``):
    when the 16 requests that left together on connections in use all come back 66 ms later
    than the fastest, each lane waits in Redis the 41 ms half the margin does not cover, told
    once their neighbours have been answered; when half came back at once, nothing is told."""
    steps = Steps()
    limits = RedisLimits(cast(Store, steps), "w1", 10, exchange="c1")
    shown_by, burst_of = limits.limiter("key:b"), limits.limiter("key:a")
    shown = await shown_by.acquire()
    shown_by.sent(shown)
    await asyncio.sleep(0.02)
    shown_by.answered(shown)  # the way there and back: 20 ms
    await asyncio.sleep(0.48)
    burst = [await burst_of.acquire() for _ in range(16)]
    for token in burst:
        burst_of.sent(token)
    await asyncio.sleep(0.02)
    for token in [] if all_late else burst[:8]:
        burst_of.answered(token)
    await asyncio.sleep(0.066)
    for token in burst if all_late else burst[8:]:
        burst_of.answered(token)
    await asyncio.sleep(0.25)
    told = [step for step in steps.later_steps if step[0] == "LANE_LATE"]
    if not all_late:
        assert told == []
        return
    assert [step[:4] for step in told] == [("LANE_LATE", "key:a", 3, "w1")] * 16
    assert all(61 <= step[4] <= 62 for step in told)  # 20 ms and the 41 ms, rounded up
