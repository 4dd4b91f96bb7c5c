"""Taking turns (``engine.aio.Turns``), and the worker pool starting its requests by turns:
on a campaign whose limiters let everything go at once, the first requests leave while the
later ones start, not after all of them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.aio import Turns
from engine.client import Answer, Envelope, XtClient
from engine.collector import Collector
from engine.pool import STARTS_PER_TURN, WorkerPool
from engine.profiles import V4
from engine.results import ResultLog
from tests.support import make_campaign


async def test_at_most_per_turn_start_in_each_turn_and_the_rest_wait_in_order() -> None:
    turns = Turns(3)
    taken: list[tuple[int, int]] = []

    async def caller(n: int) -> None:
        taken.append((n, await turns.take()))

    await asyncio.gather(*(caller(n) for n in range(10)))
    assert [n for n, _ in taken] == list(range(10))  # in order
    per_turn = Counter(turn for _, turn in taken)
    assert sorted(per_turn.values()) == [1, 3, 3, 3]
    first = taken[0][1]
    assert sorted(per_turn) == [first, first + 1, first + 2, first + 3]  # one turn after another


async def test_turns_are_turns_of_the_event_loop() -> None:
    """Callers of one turn run in one pass of the loop, before any of the next turn's."""
    turns = Turns(2)
    ticks = 0
    seen: list[tuple[int, int]] = []

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if len(seen) < 6:
            asyncio.get_running_loop().call_soon(tick)

    async def caller() -> None:
        turn = await turns.take()
        seen.append((turn, ticks))

    asyncio.get_running_loop().call_soon(tick)
    await asyncio.gather(*(caller() for _ in range(6)))
    by_turn: dict[int, set[int]] = {}
    for turn, at in seen:
        by_turn.setdefault(turn, set()).add(at)
    assert all(len(ats) == 1 for ats in by_turn.values())  # a turn's callers: one loop pass
    passes = [ats.pop() for _, ats in sorted(by_turn.items())]
    assert passes == sorted(set(passes)) and len(passes) == 3  # each turn a later pass


async def test_a_caller_goes_on_in_the_turn_it_took() -> None:
    turns = Turns(1)
    first = await turns.take()
    assert await turns.take(first) == first  # no room left, yet the same caller goes on
    assert await turns.take() == first + 1  # a new start waits for the next turn


async def test_a_waiter_cancelled_gives_its_place_up() -> None:
    turns = Turns(1)
    await turns.take()  # this turn is full
    a, gone, c = (asyncio.ensure_future(turns.take()) for _ in range(3))
    await asyncio.sleep(0)  # a takes the next turn; the other two wait for theirs
    assert a.done() and not gone.done() and not c.done()
    gone.cancel()
    assert await c == await a + 1  # the turn after a's was not spent on the one cancelled
    assert gone.cancelled()


def test_per_turn_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Turns(0)


class Connecting(XtClient):
    """A client whose every request takes a few turns of the loop to be written, as a new
    connection does, and is answered at once; it notes when each starts and leaves."""

    def __init__(self, events: list[str]) -> None:
        super().__init__("http://unused", V4)
        self.events = events

    async def follow(
        self,
        api_key: str,
        secret_key: str,
        params: Mapping[str, Any],
        on_sent: Callable[[], None] | None = None,
    ) -> Answer:
        self.events.append("start")
        for _ in range(3):  # a socket, the connection made, the request written
            await asyncio.sleep(0)
        assert on_sent is not None
        on_sent()
        self.events.append("left")
        return Answer(200, Envelope(0, "SUCCESS", [], True))


async def test_on_a_wide_campaign_the_first_request_leaves_before_most_start(
    tmp_path: Path,
) -> None:
    """500 keys x 4 jobs: every limiter lets its jobs go at once. Started all together, every
    request would take its first step before any leaves (2,000 connections opened first)."""
    campaign = make_campaign({f"k{i:03d}": 4 for i in range(500)}, tmp_path)
    events: list[str] = []
    log = ResultLog(tmp_path / "r.jsonl")
    log.open()
    try:
        pool = WorkerPool(campaign, Connecting(events), Collector(log))
        stats = await pool.process(campaign.jobs)
    finally:
        log.close()
    assert stats.ok == 2000
    started_first = events.index("left")
    # A few turns of starts, each of at most STARTS_PER_TURN keys' requests (4 each).
    assert started_first <= 8 * STARTS_PER_TURN * 4
    assert started_first < 2000 // 4


class Answering(XtClient):
    """A client whose requests leave at once and are answered ``latency`` seconds later."""

    def __init__(self, latency: float, left: list[float]) -> None:
        super().__init__("http://unused", V4)
        self.latency, self.left = latency, left

    async def follow(
        self,
        api_key: str,
        secret_key: str,
        params: Mapping[str, Any],
        on_sent: Callable[[], None] | None = None,
    ) -> Answer:
        assert on_sent is not None
        on_sent()
        self.left.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.latency)
        return Answer(200, Envelope(0, "SUCCESS", [], True))


@pytest.mark.looptime
async def test_the_pool_tells_each_answer_to_the_limiter(tmp_path: Path) -> None:
    """Answered 20 ms after leaving, a key's second window goes 20 ms plus one window after
    its first, not one period (5 % margin) after."""
    campaign = make_campaign({"alice": 20}, tmp_path)
    left: list[float] = []
    log = ResultLog(tmp_path / "r.jsonl")
    log.open()
    try:
        stats = await WorkerPool(campaign, Answering(0.02, left), Collector(log)).process(
            campaign.jobs
        )
    finally:
        log.close()
    assert stats.ok == 20
    assert left[10] - left[0] == pytest.approx(1.02)
    assert all(b - a >= 1.0 for a, b in zip(left, left[10:], strict=False))
