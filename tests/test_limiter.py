"""KeyLimiter under a fast-forwarded loop clock (looptime): no real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from engine.lateness import Fastest
from engine.limiter import KeyLimiter
from engine.simulator import max_in_window


async def acquire_times(limiter: KeyLimiter, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(count)))
    return times


@pytest.mark.looptime
@pytest.mark.parametrize("rate", [1, 2, 10, 25])
async def test_never_more_than_rate_in_any_window(rate: int) -> None:
    times = await acquire_times(KeyLimiter(rate), rate * 5)
    assert max_in_window(sorted(times), 1.0) == rate


@pytest.mark.looptime
async def test_bursts_a_full_window_then_waits_one_period() -> None:
    limiter = KeyLimiter(10, margin=0.05)
    times = await acquire_times(limiter, 30)
    start = min(times)
    offsets = sorted(round(t - start, 6) for t in times)
    assert offsets[:10] == [0.0] * 10
    assert offsets[10:20] == [pytest.approx(1.05)] * 10
    assert offsets[20:] == [pytest.approx(2.1)] * 10


@pytest.mark.looptime
async def test_fractional_rate_spaces_single_requests() -> None:
    times = await acquire_times(KeyLimiter(0.5, margin=0.0), 3)
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert gaps == [pytest.approx(2.0), pytest.approx(2.0)]


@pytest.mark.looptime
async def test_rate_below_a_whole_request_per_window_keeps_the_window() -> None:
    """2.5/s means at most 2 in any second, not 3."""
    times = await acquire_times(KeyLimiter(2.5), 10)
    assert max_in_window(sorted(times), 1.0) == 2


@pytest.mark.looptime
async def test_pause_holds_every_lane_back() -> None:
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(10)
    await limiter.acquire()
    paused_at = loop.time()
    limiter.pause(3.0)
    times = await acquire_times(limiter, 5)
    assert min(times) == pytest.approx(paused_at + 3.0)


@pytest.mark.looptime
async def test_pause_while_queued_takes_a_fresh_slot_after_it() -> None:
    """A request queued on a lane when a pause arrives must not go out early."""
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.0)
    await limiter.acquire()
    start = loop.time()
    waiter = asyncio.create_task(acquire_times(limiter, 1))
    await asyncio.sleep(0.5)
    limiter.pause(2.0)
    [sent] = await waiter
    # Its lane freed at 1.0, inside the pause: it goes when the pause ends, not before.
    assert sent - start == pytest.approx(2.5)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        KeyLimiter(0)


@pytest.mark.looptime
async def test_tracking_sends_holds_a_lane_until_its_request_left() -> None:
    """A request admitted at once but slow to leave must not let its lane's next one go
    out less than a period after it actually left."""
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.0, track_sends=True)
    start = loop.time()
    lane = await limiter.acquire()
    waiter = asyncio.create_task(acquire_times(limiter, 1))
    await asyncio.sleep(3.0)
    assert not waiter.done()  # held: the first request has not left yet
    limiter.sent(lane)
    [second] = await waiter
    assert second - start == pytest.approx(4.0)  # one period after it left, not after admission


@pytest.mark.looptime
async def test_a_released_lane_frees_without_waiting_a_period() -> None:
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.0, track_sends=True)
    start = loop.time()
    lane = await limiter.acquire()
    waiter = asyncio.create_task(acquire_times(limiter, 1))
    await asyncio.sleep(0.5)
    limiter.release(lane)  # never sent
    [second] = await waiter
    assert second - start == pytest.approx(1.0)  # only the lane's bucket period


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("answered_after", "widened", "next_after"),
    [(0.02, False, 1.02), (0.3, False, 1.05), (0.02, True, 1.07)],
    ids=["answered-soon", "answered-late", "widened"],
)
async def test_an_answer_frees_its_lane_one_window_after_it(
    answered_after: float, widened: bool, next_after: float
) -> None:
    """An answer proves its request had arrived: a request sent a window later arrives a window
    later at least, whatever the jitter, so the lane need not also wait out the margin; a late
    answer never holds it past its period. After a 429 widened the margin, the room it added
    is added after an answer too (the exchange counts otherwise than the rule assumed)."""
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.05, track_sends=True)
    if widened:
        assert limiter.widen() == pytest.approx(0.1)
    start = loop.time()
    lane = await limiter.acquire()
    limiter.sent(lane)
    await asyncio.sleep(answered_after)
    limiter.answered(lane)
    await limiter.acquire()
    assert loop.time() - start == pytest.approx(next_after)


@pytest.mark.looptime
@pytest.mark.parametrize(("opened", "slow_after"), [(True, 1.08), (False, 1.05)])
async def test_a_request_that_opened_its_connection_waits_the_excess_of_its_answer(
    opened: bool, slow_after: float
) -> None:
    """Two requests leave together; one is answered 20 ms later, the other 80 ms. If they
    opened their connections, the second may have reached the exchange 60 ms after the first
    (an exchange accepting a burst of connections reads it late), more than the margin
    covers, so its lane waits those 60 ms on top of its period (an answer a window ago would
    free it sooner, and does, at 1.08). On connections in use, the 60 ms are the answer's
    jitter: the lane goes one period after its request left."""
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(2, margin=0.05, track_sends=True)
    start = loop.time()
    fast, slow = await limiter.acquire(), await limiter.acquire()
    limiter.sent(fast, opened=opened)
    limiter.sent(slow, opened=opened)
    await asyncio.sleep(0.02)
    limiter.answered(fast)
    await asyncio.sleep(0.06)
    limiter.answered(slow)
    times = await acquire_times(limiter, 2)
    assert sorted(t - start for t in times) == [pytest.approx(1.02), pytest.approx(slow_after)]


@pytest.mark.looptime
@pytest.mark.parametrize(("shared", "next_after"), [(True, 1.09), (False, 1.05)])
async def test_the_fastest_answer_is_the_exchanges_shared_by_its_keys(
    shared: bool, next_after: float
) -> None:
    """A key whose whole first burst was read late has no faster answer of its own to
    compare with; another key's, from the same exchange, shows the wait."""
    loop = asyncio.get_running_loop()
    fastest = Fastest()
    quick, late = (KeyLimiter(1, track_sends=True, fastest=fastest) for _ in range(2))
    if not shared:
        late = KeyLimiter(1, track_sends=True)
    start = loop.time()
    lanes = await quick.acquire(), await late.acquire()
    quick.sent(lanes[0], opened=True)
    late.sent(lanes[1], opened=True)
    await asyncio.sleep(0.02)
    quick.answered(lanes[0])
    await asyncio.sleep(0.07)
    late.answered(lanes[1])
    await late.acquire()
    assert loop.time() - start == pytest.approx(next_after)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("half_took", "next_after"), [(0.086, [1.586] * 20), (0.02, [1.52] * 10 + [1.55] * 10)]
)
async def test_a_burst_read_late_holds_its_lanes_on_connections_in_use_too(
    half_took: float, next_after: list[float]
) -> None:
    """Another key's answer in 20 ms has shown the way there and back. At 0.5 a burst of 20
    leaves on connections in use. When every one of them comes back 66 ms late, the exchange
    read them late (one short of time reads all that came in together late), more than half
    the margin covers: their lanes wait for their answers a window ago, 1.586, not 1.55. When
    half of them came back at once, the others were only answered late: their lanes go at
    1.55, one period after they left (the quick half's, a window after their answers)."""
    loop = asyncio.get_running_loop()
    fastest = Fastest()
    other = KeyLimiter(1, track_sends=True, fastest=fastest)
    limiter = KeyLimiter(20, margin=0.05, track_sends=True, fastest=fastest)
    start = loop.time()
    shown = await other.acquire()
    other.sent(shown)
    await asyncio.sleep(0.02)
    other.answered(shown)
    await asyncio.sleep(0.48)
    burst = [await limiter.acquire() for _ in range(20)]
    for lane in burst:
        limiter.sent(lane)
    await asyncio.sleep(min(half_took, 0.086))
    for lane in burst[:10] if half_took < 0.086 else burst:
        limiter.answered(lane)
    await asyncio.sleep(start + 0.586 - loop.time())
    for lane in burst[10:] if half_took < 0.086 else []:
        limiter.answered(lane)
    times = await acquire_times(limiter, 20)
    assert [t - start for t in times] == [pytest.approx(t) for t in next_after]


def test_how_late_the_exchange_read_is_told_by_the_requests_sent_nearest() -> None:
    fastest = Fastest()
    assert fastest.reading_late(1.0) == 0.0  # nothing answered yet
    # Answered out of the order they left: kept in the order they left.
    for sent_at, took in [(1.0, 0.09), (0.0, 0.02), (1.001, 0.08), (0.999, 0.07), (5.0, 0.02)]:
        fastest.took(sent_at, took)
    assert fastest.seconds == 0.02
    assert [sent_at for sent_at, _ in fastest.answers] == [0.0, 0.999, 1.0, 1.001, 5.0]
    # The 16 nearest are all five: the least excess is the fastest's own, 0.
    assert fastest.reading_late(1.0) == 0.0
    for n in range(20):  # a burst at 3.0, every request of it read 50 ms late
        fastest.took(3.0 + n / 1000, 0.07)
    assert fastest.reading_late(3.005) == pytest.approx(0.05)
    # At its edge too: its 16 nearest are its own, not 5.0's quick answer.
    assert fastest.reading_late(3.019) == pytest.approx(0.05)
    # Between the burst and 5.0, the nearest reach 5.0's: that one was read at once.
    assert fastest.reading_late(4.5) == 0.0


@pytest.mark.looptime
async def test_an_answer_to_an_earlier_request_of_the_lane_changes_nothing() -> None:
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.05, track_sends=True)
    start = loop.time()
    first = await limiter.acquire()
    limiter.sent(first)
    second = await limiter.acquire()
    limiter.sent(second)  # at 1.05
    limiter.answered(first)  # late news of the first: says nothing of when the second arrived
    await limiter.acquire()
    assert loop.time() - start == pytest.approx(2.1)


@pytest.mark.looptime
async def test_an_answer_before_its_request_left_changes_nothing() -> None:
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.05, track_sends=True)
    start = loop.time()
    lane = await limiter.acquire()
    limiter.answered(lane)  # no request left: nothing arrived
    await asyncio.sleep(0.5)
    limiter.sent(lane)
    await limiter.acquire()
    assert loop.time() - start == pytest.approx(1.55)
