"""The distributed mode's steps, each a Lua script, against a real Redis with a driven clock:
the lanes of the global limiter, and the life of a job from submit to its one outcome."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from rich.console import Console

from engine.campaign import FollowJob
from engine.redis_store import (
    Store,
    campaign_id,
    connect,
    decode_job,
    decode_progress,
    encode_job,
    key_hash,
)
from engine.status import show_status
from engine.submit import submit
from tests.support import make_campaign

BASE, MARGIN = 1000, 0.05
PERIOD = 1050  # ms: the window, and the margin


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = await connect(redis_url)
    store.clock = Clock()
    yield store
    await store.close()


def clock(store: Store) -> Clock:
    assert isinstance(store.clock, Clock)
    return store.clock


async def take(store: Store, worker: str = "w1", lanes: int = 10) -> tuple[int, int]:
    lane, wait, _ = await store.run("LANE_TAKE", "key:k", lanes, BASE, MARGIN, worker)
    return lane, wait


_take_ids = itertools.count()


async def take_jobs(store: Store, cid: str, worker: str, want: int, *keys: str) -> list[Any]:
    """One TAKE, with an id of its own."""
    return await store.run("TAKE", cid, worker, f"t{next(_take_ids)}", want, *keys)  # type: ignore[no-any-return]


async def register(store: Store, *workers: str) -> None:
    for worker in workers:
        await store.run("BEAT", worker, "host", "test")


async def test_a_key_sends_its_rate_at_once_then_waits_a_period_from_each_send(
    store: Store,
) -> None:
    await register(store, "w1", "w2")
    lanes = [await take(store, "w1" if i % 2 else "w2") for i in range(10)]
    assert sorted(lane for lane, _ in lanes) == list(range(10))
    assert await take(store) == (-1, -1)  # every lane held: nothing free, no time known
    for lane, _ in lanes:
        await store.run("LANE_SENT", "key:k", lane, "w1" if lane % 2 else "w2", BASE, MARGIN)
    assert await take(store) == (-1, PERIOD)
    clock(store).ms += PERIOD - 1
    assert await take(store) == (-1, 1)
    clock(store).ms += 1
    assert (await take(store))[0] >= 0


async def test_a_lane_counts_from_when_its_request_left_not_from_admission(store: Store) -> None:
    """A burst admitted together may leave tens of ms apart; the next burst must wait a period
    from each request's departure, or two of one lane land in one window."""
    await register(store, "w1")
    lane, _ = await take(store, lanes=1)
    clock(store).ms += 300  # the request waited 300 ms for its connection
    await store.run("LANE_SENT", "key:k", lane, "w1", BASE, MARGIN)
    assert await take(store, lanes=1) == (-1, PERIOD)


async def test_a_late_answer_lengthens_the_wait_of_its_senders_lane_only(store: Store) -> None:
    """A request that opened its connection, answered 90 ms after it left where another
    worker's fastest took 20 (this worker's first burst read late, every answer of it slow),
    holds its lane 70 ms longer; said of a lane another worker's request left on last, or
    that is taken again, it changes nothing."""
    await register(store, "w1", "w2")
    lane, _ = await take(store, lanes=1)
    await store.run("LANE_SENT", "key:k", lane, "w1", BASE, MARGIN)
    assert await store.run("LANE_LATE", "key:k", lane, "w1", 90, "x") == 0  # none faster yet
    await store.run("FASTEST", "x", 20)
    await store.run("FASTEST", "x", 35)  # not faster: kept at 20
    assert await store.run("LANE_LATE", "key:k", lane, "w2", 90, "x") == 0  # not its request
    assert await store.run("LANE_LATE", "key:k", lane, "w1", 90, "x") == 70
    assert await take(store, "w2", lanes=1) == (-1, PERIOD + 70)
    clock(store).ms += PERIOD + 70
    assert (await take(store, "w2", lanes=1))[0] == lane
    assert await store.run("LANE_LATE", "key:k", lane, "w1", 90, "x") == 0  # held by w2 now
    await store.run("LANE_SENT", "key:k", lane, "w2", BASE, MARGIN)
    assert await store.run("LANE_LATE", "key:k", lane, "w1", 90, "x") == 0  # w2's left last
    assert await take(store, "w1", lanes=1) == (-1, PERIOD)


async def test_a_released_lane_is_free_at_once_and_only_its_holder_frees_it(store: Store) -> None:
    await register(store, "w1", "w2")
    lane, _ = await take(store, lanes=1)
    assert await store.run("LANE_RELEASE", "key:k", lane, "w2") == 0
    assert await take(store, "w2", lanes=1) == (-1, -1)
    assert await store.run("LANE_RELEASE", "key:k", lane, "w1") == 1
    assert (await take(store, "w2", lanes=1))[0] == lane


async def test_a_pause_holds_every_lane_for_every_worker(store: Store) -> None:
    await register(store, "w1", "w2")
    await store.run("LANE_PAUSE", "key:k", 2000)
    assert await take(store, "w2") == (-1, 2000)
    clock(store).ms += 2000
    assert (await take(store, "w2"))[0] >= 0


async def test_a_429_met_by_several_workers_widens_the_margin_once(store: Store) -> None:
    await register(store, "w1")
    lane, _ = await take(store, lanes=1)
    await store.run("LANE_SENT", "key:k", lane, "w1", BASE, MARGIN)
    assert await store.run("LANE_WIDEN", "key:k", "0.05", "0.1", BASE) == "0.1"
    assert await store.run("LANE_WIDEN", "key:k", "0.05", "0.1", BASE) == "0.1"  # seen 0.05 again
    lane, wait, margin = await store.run("LANE_TAKE", "key:k", 1, BASE, MARGIN, "w1")
    assert (lane, wait, margin) == (-1, 1100, 100_000)  # the lane waiting, lengthened too


async def test_a_dead_workers_lane_is_free_one_period_after_it_was_declared_dead(
    store: Store,
) -> None:
    await register(store, "w1", "w2")
    await take(store, "w1", lanes=1)  # its request may leave any moment before it dies
    clock(store).ms += 5000
    await register(store, "w2")
    assert await store.run("REAP", 3000) == ["w1", 0, 0]
    assert await take(store, "w2", lanes=1) == (-1, PERIOD)
    clock(store).ms += PERIOD
    assert (await take(store, "w2", lanes=1))[0] == 0


async def queued(store: Store, tmp_path: Path, jobs: dict[str, int]) -> list[str]:
    campaign = make_campaign(jobs, tmp_path)
    done = await submit(store, campaign, list(campaign.jobs), "c")
    assert done.queued == len(campaign.jobs)
    return [key_hash(a.api_key) for a in campaign.accounts.values()]


async def test_submitting_again_queues_nothing_twice_and_a_failed_job_again(
    store: Store, tmp_path: Path
) -> None:
    campaign = make_campaign({"alice": 3}, tmp_path)
    jobs = list(campaign.jobs)
    first = await submit(store, campaign, jobs, "c")
    assert (first.queued, first.ok, first.busy) == (3, 0, 0)
    again = await submit(store, campaign, jobs, "c")
    assert (again.queued, again.busy) == (0, 3)
    await register(store, "w1")
    cid, kh = first.campaign, key_hash("key-alice")
    got = await take_jobs(store, cid, "w1", 2, kh)
    taken = [got[1], got[4]]
    for job, status in zip(taken, ("ok", "failed"), strict=True):
        line = f'{{"job":"{job}","status":"{status}"}}'
        assert await store.run("FINISH", cid, "w1", job, line, status) == 1
    third = await submit(store, campaign, jobs, "c")
    assert (third.queued, third.ok, third.busy, third.again) == (1, 1, 1, 1)


async def test_a_worker_takes_due_jobs_of_the_keys_it_names_only(
    store: Store, tmp_path: Path
) -> None:
    campaign = make_campaign({"alice": 2, "bob": 2}, tmp_path)
    later, late = campaign.jobs[0], clock(store).ms + 5000
    start = await submit(store, campaign, list(campaign.jobs[1:]), "c")
    kh = key_hash("key-alice")
    body = encode_job(later, kh)
    await store.submit(start.campaign, "c", "{}", [(later.id, kh, "alice", body, late)])
    await register(store, "w1")
    got = await take_jobs(store, start.campaign, "w1", 10, kh)
    assert got[0] == 5000  # the job not yet due, and when it is
    assert got[1::3] == [campaign.jobs[1].id]
    job, key = decode_job(got[1], got[2])
    assert (job, key) == (campaign.jobs[1], kh)
    assert decode_progress(job, got[3]).attempts == 0
    clock(store).ms += 5000
    got = await take_jobs(store, start.campaign, "w1", 10, kh)
    assert got[1::3] == [later.id]


async def test_a_dead_workers_jobs_go_back_flagged_only_when_on_the_wire(
    store: Store, tmp_path: Path
) -> None:
    keys = await queued(store, tmp_path, {"alice": 3})
    await register(store, "w1", "w2")
    cid = campaign_id("c")
    got = await take_jobs(store, cid, "w1", 3, *keys)
    on_wire, waiting, retrying = got[1::3]
    assert await store.run("FLIGHT", cid, "w1", on_wire) == 1
    progress = '{"a":1,"s":false,"am":false,"k":0,"t":[]}'
    assert await store.run("PROGRESS", cid, "w1", retrying, progress) == 1
    clock(store).ms += 2999
    await register(store, "w2")
    assert await store.run("REAP", 3000) == []  # a slow worker is not a dead one
    clock(store).ms += 1
    assert await store.run("REAP", 3000) == ["w1", 3, 1]
    # w1 comes back: nothing it held is its own any more.
    assert await store.run("BEAT", "w1") == -1
    assert await take_jobs(store, cid, "w1", 3, *keys) == [-2]
    assert await store.run("FLIGHT", cid, "w1", waiting) == 0
    assert await store.run("FINISH", cid, "w1", waiting, "{}", "ok") == 0
    got = await take_jobs(store, cid, "w2", 3, *keys)
    by_job = {got[i]: got[i + 2] for i in range(1, len(got), 3)}
    assert set(by_job) == {on_wire, waiting, retrying}
    dummy = FollowJob(on_wire, "alice", 1, {})
    wire = decode_progress(dummy, by_job[on_wire])
    assert (wire.attempts, wire.sent, wire.ambiguous) == (1, True, True)
    assert by_job[waiting] == ""
    assert decode_progress(dummy, by_job[retrying]).attempts == 1
    assert not decode_progress(dummy, by_job[retrying]).ambiguous


async def test_an_outcome_is_recorded_once_whoever_sends_it_again(
    store: Store, tmp_path: Path
) -> None:
    keys = await queued(store, tmp_path, {"alice": 1})
    await register(store, "w1")
    cid = campaign_id("c")
    job = (await take_jobs(store, cid, "w1", 1, *keys))[1]
    line = f'{{"job":"{job}","status":"ok"}}'
    assert await store.run("FINISH", cid, "w1", job, line, "ok") == 1
    assert await store.run("FINISH", cid, "w1", job, line, "ok") == 2  # a reply lost: said so
    entries = await store.client.xrange(f"fe:c:{cid}:log")
    assert [e[1]["j"] for e in entries] == [job]
    counts = await store.client.hmget(f"fe:c:{cid}", ["open", "ok"])
    assert counts == ["0", "1"]


async def test_a_take_asked_again_after_its_reply_was_lost_takes_nothing_more(
    store: Store, tmp_path: Path
) -> None:
    keys = await queued(store, tmp_path, {"alice": 4})
    await register(store, "w1")
    cid = campaign_id("c")
    first = await store.run("TAKE", cid, "w1", "t-1", 2, *keys)
    again = await store.run("TAKE", cid, "w1", "t-1", 2, *keys)
    assert again == first and len(first[1::3]) == 2
    assert await store.client.zcard(f"fe:c:{cid}:q:{keys[0]}") == 2


async def test_a_worker_leaving_gives_back_what_it_still_holds(
    store: Store, tmp_path: Path
) -> None:
    """A job taken as the worker stopped (the reply never read) is not lost with it."""
    keys = await queued(store, tmp_path, {"alice": 3})
    await register(store, "w1", "w2")
    cid = campaign_id("c")
    got = await take_jobs(store, cid, "w1", 3, *keys)
    assert await store.run("FLIGHT", cid, "w1", got[1]) == 1
    assert await store.run("LEAVE", "w1") == [3, 1]
    again = await take_jobs(store, cid, "w2", 3, *keys)
    assert sorted(again[1::3]) == sorted(got[1::3])


async def test_status_counts_each_accounts_jobs_queued_in_flight_ok_and_failed(
    store: Store, tmp_path: Path
) -> None:
    campaign = make_campaign({"alice": 4, "bob": 2}, tmp_path)
    done = await submit(store, campaign, list(campaign.jobs), "c")
    await register(store, "w1")
    got = await take_jobs(store, done.campaign, "w1", 3, key_hash("key-alice"))
    ok, failed, _ = got[1::3]  # the third stays in flight
    for job, status in ((ok, "ok"), (failed, "failed")):
        line = f'{{"job":"{job}","status":"{status}","account":"alice","worker":"w1"}}'
        assert await store.run("FINISH", done.campaign, "w1", job, line, status) == 1
    console = Console(record=True, width=200)
    await show_status(store, None, console)
    text = console.export_text()
    cells = [[c.strip() for c in line.split("│")] for line in text.splitlines()]
    rows = {row[2]: row[3:7] for row in cells if len(row) == 9}  # the accounts table
    assert rows["alice"] == ["1", "1", "1", "1"], text  # queued, in flight, ok, failed
    assert rows["bob"] == ["2", "0", "0", "0"], text
