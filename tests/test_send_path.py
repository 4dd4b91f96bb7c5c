"""The worker pool's send path: requests started by turns (``engine.aio.Turns``), so that on a
campaign whose limiters let everything go at once the first requests leave while later ones
start; each attempt prepared ahead and let go by its limiter, so that it leaves the moment
its lane frees; answers told to the limiter. Clients here stand in for the XT client, with
time driven by looptime."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from engine.aio import Turns
from engine.answers import Withheld
from engine.campaign import Account
from engine.client import Answer, Envelope, Ready, XtClient
from engine.collector import CampaignStats, Collector, KeyStats
from engine.limiter import Limiter
from engine.pool import WorkerPool
from engine.pooljobs import BURST_PER_TURN, KEYS_PER_TURN, HeldJob, KeyWork
from engine.profiles import V4
from engine.results import ResultLog
from engine.sources import JobProgress
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


class Standing(XtClient):
    """Stands in for the XT client: each request takes ``turns`` turns of the loop and
    ``connect`` seconds to be signed and connected, waits to be let go, is written and is
    answered ``latency`` later: 429 with ``Retry-After`` to the requests numbered in
    ``refuse``. It notes when each started (by key) and left; ``on_answer`` hears of each."""

    def __init__(
        self,
        *,
        turns: int = 0,
        connect: float = 0.0,
        latency: float = 0.0,
        refuse: Mapping[int, float] | None = None,
        on_answer: Callable[[int], None] = lambda n: None,
    ) -> None:
        super().__init__("http://unused", V4)
        self.turns, self.connect, self.latency = turns, connect, latency
        self.refuse, self.on_answer = refuse or {}, on_answer
        self.events: list[str] = []
        self.prepared: list[float] = []
        self.left: list[tuple[float, float]] = []  # (prepared, left)

    async def follow(
        self,
        api_key: str,
        secret_key: str,
        params: Mapping[str, Any],
        on_sent: Callable[[bool], None] | None = None,
        *,
        ready: Ready | None = None,
    ) -> Answer:
        loop = asyncio.get_running_loop()
        self.events.append(f"start {api_key}")
        self.prepared.append(prepared := loop.time())
        for _ in range(self.turns):  # a socket, the connection made, the request written
            await asyncio.sleep(0)
        await asyncio.sleep(self.connect)
        assert on_sent is not None and ready is not None
        await ready()
        on_sent(False)
        n = len(self.left)
        self.events.append("left")
        self.left.append((prepared, loop.time()))
        await asyncio.sleep(self.latency)
        self.on_answer(n)
        if n in self.refuse:
            return Answer(429, None, retry_after=self.refuse[n])
        return Answer(200, Envelope(0, "SUCCESS", [], True))

    @property
    def left_at(self) -> list[float]:
        return [t for _, t in self.left]


async def run_pool(
    tmp_path: Path,
    jobs: dict[str, int],
    client: Standing,
    on_pool: Callable[[WorkerPool], None] = lambda pool: None,
    **settings: Any,
) -> CampaignStats:
    campaign = make_campaign(jobs, tmp_path, **settings)
    log = ResultLog(tmp_path / "r.jsonl")
    log.open()
    try:
        pool = WorkerPool(campaign, client, Collector(log))
        on_pool(pool)
        return await pool.process(campaign.jobs)
    finally:
        log.close()


async def test_on_a_wide_campaign_the_first_request_leaves_before_most_start(
    tmp_path: Path,
) -> None:
    """500 keys x 4 jobs: every limiter lets its jobs go at once. Started all together, every
    request would take its first step before any leaves (2,000 connections opened first)."""
    client = Standing(turns=3)
    stats = await run_pool(tmp_path, {f"k{i:03d}": 4 for i in range(500)}, client)
    assert stats.ok == 2000
    started_first = client.events.index("left")
    # A few turns of starts, each of at most KEYS_PER_TURN keys' requests (4 each).
    assert started_first <= 8 * KEYS_PER_TURN * 4
    assert started_first < 2000 // 4


async def test_a_key_starts_what_its_limiter_lets_go_at_once_together(tmp_path: Path) -> None:
    """20 keys x 10: each key's window of ten starts in one run, so its requests arrive
    together (a key's burst spread over turns would spread its every later window)."""
    client = Standing(turns=3)
    await run_pool(tmp_path, {f"k{i:02d}": 10 for i in range(20)}, client)
    starts = [e for e in client.events if e.startswith("start")]
    runs = [key for n, key in enumerate(starts) if n == 0 or starts[n - 1] != key]
    assert len(runs) == 20


async def test_a_key_let_go_without_limit_starts_a_burst_a_turn(tmp_path: Path) -> None:
    """The limit lifted, one key's 2,000 jobs may all go at once: still its first requests
    leave after a few turns of bursts have started, not after all."""
    client = Standing(turns=3)
    await run_pool(tmp_path, {"solo": 2000}, client, rate_limit=100000, concurrency=2048)
    assert client.events.index("left") <= 8 * KEYS_PER_TURN * BURST_PER_TURN < 2000


@pytest.mark.looptime
async def test_the_pool_tells_each_answer_to_the_limiter(tmp_path: Path) -> None:
    """Answered 20 ms after leaving, a key's second window goes 20 ms plus one window after
    its first, not one period (5 % margin) after."""
    client = Standing(latency=0.02)
    assert (await run_pool(tmp_path, {"alice": 20}, client)).ok == 20
    left = client.left_at
    assert left[10] - left[0] == pytest.approx(1.02)
    assert all(b - a >= 1.0 for a, b in zip(left, left[10:], strict=False))


@pytest.mark.looptime
async def test_a_prepared_request_leaves_the_moment_its_lane_frees(tmp_path: Path) -> None:
    """Signing and connecting take 5 ms; answered 20 ms after leaving. The second window is
    prepared while the first is answered, and leaves one window after those answers, not
    5 ms later still."""
    client = Standing(connect=0.005, latency=0.02)
    assert (await run_pool(tmp_path, {"alice": 20}, client)).ok == 20
    left = client.left_at
    assert left[0] == pytest.approx(0.005)
    assert left[10] - left[0] == pytest.approx(1.02)
    assert all(prepared < t - 0.5 for prepared, t in client.left[10:])  # ready long before


@pytest.mark.looptime
async def test_requests_prepared_before_a_pause_are_prepared_again_after_it(
    tmp_path: Path,
) -> None:
    """A 429 asking for 3 s holds the key back: what was prepared to go is not sent signed
    before the pause, and nothing is prepared during it."""
    client = Standing(connect=0.005, latency=0.02, refuse={0: 3.0})
    assert (await run_pool(tmp_path, {"alice": 20}, client)).ok == 20
    paused_at = client.left[0][1] + 0.02
    after = [(prepared, t) for prepared, t in client.left if t > paused_at]
    assert len(after) == 11  # the second window and the retry
    assert all(t >= paused_at + 3.0 and prepared >= paused_at + 3.0 for prepared, t in after)


@pytest.mark.looptime
async def test_a_stop_lets_no_prepared_request_leave(tmp_path: Path) -> None:
    pools: list[WorkerPool] = []

    def stop_after_the_first_window(n: int) -> None:
        if n == 9:
            pools[0].stop()

    client = Standing(connect=0.005, latency=0.02, on_answer=stop_after_the_first_window)
    stats = await run_pool(tmp_path, {"alice": 20}, client, on_pool=pools.append)
    assert len(client.left) == 10 and len(client.prepared) > 10  # the next window was ready
    assert stats.ok == 10 and stats.failed == 0  # the rest never attempted: a resume sends them


class OneLane:
    """A limiter with one lane to give, at once; notes what is given back."""

    period = 1.0

    def __init__(self) -> None:
        self.released: list[int] = []

    async def acquire(self) -> int:
        return 7

    def release(self, lane: int) -> None:
        self.released.append(lane)


@pytest.mark.looptime
@pytest.mark.parametrize("fresh", [True, False])
async def test_a_lane_won_for_a_stale_request_goes_to_the_next_prepared(fresh: bool) -> None:
    """A request that waited past its signature's time is withheld (it comes round again,
    signed afresh), and the lane goes to the next prepared request: given back, it would be
    lost to workers sharing the limit that already wait for a later one. With none fresh
    enough, it is given back."""
    limiter = OneLane()
    key = KeyWork(cast(Limiter, limiter), KeyStats("alice", 1.0))
    old, new = (HeldJob(cast(JobProgress, None), cast(Account, None), key) for _ in range(2))
    old_gate = key.prepare(old)
    await asyncio.sleep(3.0)
    new_gate = key.prepare(new)
    await asyncio.sleep(0.5 if fresh else 3.0)
    withheld = await key.admit(2.5, lambda job: None)
    assert isinstance(old_gate.exception(), Withheld)
    assert withheld == ([old] if fresh else [old, new])
    if fresh:
        assert new_gate.result() == 7 and limiter.released == [] and key.busy == 1
    else:
        assert isinstance(new_gate.exception(), Withheld) and limiter.released == [7]
    assert not key.prepared
