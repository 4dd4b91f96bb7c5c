"""The exchange misbehaving in every way at once, and a results file that cannot take lines.

Proven by what the simulator saw arrive and accept, not by what the engine says it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import resource
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import policy
from engine.client import XtClient
from engine.collector import Collector
from engine.launch import LaunchOptions, launch_campaign
from engine.pool import WorkerPool
from engine.profiles import TIME_PATH
from engine.results import JobResult, ResultLog, ResultsFileError
from engine.simulator import (
    AUTH_105,
    DROP_AFTER,
    DROP_BEFORE,
    HTTP429,
    HTTP500,
    HTTP502,
    HTTP503,
    NON_JSON,
    SLOW,
    SimConfig,
)
from tests.support import (
    Engines,
    StartSimulator,
    WriteJobs,
    accounts_of,
    engine_env,
    follow_run,
    last_lines,
    make_campaign,
    ok_jobs,
    outcome_lines,
    run_against,
    unrecorded_lines,
)

EVERY_FAULT = (
    HTTP500,
    HTTP502,
    HTTP503,
    HTTP429,
    DROP_BEFORE,
    DROP_AFTER,
    NON_JSON,
    SLOW,
    AUTH_105,
    "COMMON_002",
    "COMMON_003",
    "COPY_TRADE_SPOT_000",
)
#: The request may have been acted on, and no answer says whether.
#: Faults after which the client cannot know the exchange did not act: no answer, an
#: unreadable one, or a 5xx (which may come after the origin acted).
AMBIGUOUS_FAULTS = {DROP_BEFORE, DROP_AFTER, NON_JSON, SLOW, HTTP500, HTTP502, HTTP503}


async def test_every_fault_at_once_each_job_ends_right_and_the_limit_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simulator: StartSimulator
) -> None:
    # Shorter backoff keeps the test quick; its schedule is proven in test_policy.
    monkeypatch.setattr(policy, "BACKOFF_CAP", 1.0)
    rate = 20
    campaign = make_campaign(
        {"alice": 12, "bob": 12, "carol": 12},
        tmp_path,
        rate_limit=rate,
        max_attempts=15,
        timeout=0.8,
    )
    config = SimConfig(
        latency=0.005,
        rate_limit=rate,
        fault_rate=0.2,
        fault_kinds=EVERY_FAULT,
        seed=11,
        slow_seconds=1.0,  # past the client's 0.8 s timeout
        skew_ms=-2000,  # the server's clock 2 s behind: every signature "from the future"
    )
    sim = await simulator(accounts_of(campaign), config)
    # Each kind at least once for sure, on top of the random ones.
    for job, fault in zip(campaign.jobs[::3], EVERY_FAULT, strict=False):
        sim.script(job.leader_id, [fault])
    outcome = await run_against(sim, campaign)

    follows = [a for a in sim.arrivals if a.path != TIME_PATH]
    by_leader = defaultdict(list)
    for arrival in follows:
        by_leader[arrival.leader_id].append(arrival)
    assert {a.fault for a in follows} >= set(EVERY_FAULT), "some fault kind never happened"
    assert any(a.mc == "AUTH_105" and a.fault is None for a in follows), "no real clock skew"
    assert sum(a.path == TIME_PATH for a in sim.arrivals) >= 1, "the clock was never measured"

    assert len(outcome.results) == len(campaign.jobs)
    for job in campaign.jobs:
        result = outcome.results[job.id]
        arrivals = by_leader[job.leader_id]
        assert result.status == "ok", result
        assert result.attempts == len(arrivals)
        assert arrivals[-1].mc == "SUCCESS" and arrivals[-1].fault is None
        assert result.ambiguous == any(a.fault in AMBIGUOUS_FAULTS for a in arrivals)
        accepted = sim.accepted[(campaign.accounts[job.account].api_key, job.leader_id)]
        assert accepted >= 1
        if accepted > 1:  # a duplicate only ever where the job says it may be one
            assert result.ambiguous
    assert sim.violations == 0
    for account in campaign.accounts.values():
        assert sim.max_in_window(account.api_key) <= rate
    assert outcome.stats.ok == len(campaign.jobs)


# --- A results file that cannot take lines -------------------------------------------------

ALICE = {"alice": 40}


@pytest.fixture
def refused(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> Callable[..., Awaitable[None]]:
    """``await refused(results, preexec_fn=...)``: the engine exits 2 naming ``results``,
    and not one request reached the exchange."""

    async def check(results: Path, preexec_fn: Callable[[], None] | None = None) -> None:
        jobs = write_jobs(ALICE)
        sim = await simulator(accounts_of(ALICE), SimConfig())
        run = await engines.run(
            *follow_run(jobs, sim),
            "--results",
            str(results),
            env=engine_env(ALICE),
            timeout=20,
            preexec_fn=preexec_fn,
        )
        assert run.code == 2, run.output
        assert str(results) in run.err and "nothing sent" in run.err
        assert "Traceback" not in run.err
        assert sim.arrivals == []

    return check


async def test_a_results_path_under_a_regular_file_refuses_to_start(
    tmp_path: Path, refused: Callable[..., Awaitable[None]]
) -> None:
    """Permission bits do not stop root; a parent that is a file stops everyone."""
    (tmp_path / "plain-file").write_text("")
    await refused(tmp_path / "plain-file" / "r.jsonl")


async def test_a_results_path_that_is_a_directory_refuses_to_start(
    tmp_path: Path, refused: Callable[..., Awaitable[None]]
) -> None:
    (tmp_path / "a-dir").mkdir()
    await refused(tmp_path / "a-dir")


async def test_a_results_path_that_is_a_fifo_refuses_to_start(
    tmp_path: Path, refused: Callable[..., Awaitable[None]]
) -> None:
    """A FIFO (or /dev/zero) would block (or never end) when read at start."""
    os.mkfifo(tmp_path / "fifo")
    await refused(tmp_path / "fifo")


def _file_size_limit(limit: int) -> None:
    """In the engine's process: writes past ``limit`` bytes fail with EFBIG, as on a full
    disk (SIGXFSZ ignored, as Python itself does, so the write fails rather than kills)."""
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def test_no_room_to_record_refuses_to_start(
    tmp_path: Path, refused: Callable[..., Awaitable[None]]
) -> None:
    await refused(tmp_path / "r.jsonl", preexec_fn=lambda: _file_size_limit(64 * 1024))


async def test_too_little_free_disk_refuses_before_the_first_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simulator: StartSimulator
) -> None:
    full = SimpleNamespace(total=1 << 30, used=(1 << 30) - 4096, free=4096)
    monkeypatch.setattr("engine.results.shutil.disk_usage", lambda _: full)
    campaign = make_campaign({"alice": 3}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig())
    campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
    with pytest.raises(ResultsFileError, match="bytes free; not starting"):
        await launch_campaign(campaign, LaunchOptions(results=tmp_path / "r.jsonl"))
    assert sim.arrivals == []


def _result(job: str) -> JobResult:
    return JobResult(
        job=job,
        account="alice",
        leader_field="leaderOrderId",
        leader_id=1,
        status="ok",
        rc=0,
        mc="SUCCESS",
        http_status=200,
        attempts=1,
        error=None,
        latency_ms=1.0,
        finished_at="2026-11-25T10:00:00.000Z",
    )


def test_a_line_the_disk_takes_only_part_of_is_taken_back(tmp_path: Path) -> None:
    """The file holds whole lines only, and closing after a failed write never raises."""
    path = tmp_path / "r.jsonl"
    log = ResultLog(path)
    log.open()
    log.record(_result("a"))
    whole = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 40, hard))  # room for part of one
    try:
        with pytest.raises(ResultsFileError, match="cannot write results: File too large"):
            log.record(_result("b"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    log.close()
    assert path.read_bytes() == whole
    again = ResultLog(path)
    assert again.open().ok_jobs() == {"a"}
    again.close()


class _FailingLog(ResultLog):
    """Takes ``room`` lines, then fails as a full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path)
        self.room = room

    def record(self, result: JobResult) -> None:
        if self.room <= 0:
            raise ResultsFileError(f"{self.path}: cannot write results: No space left on device")
        self.room -= 1
        super().record(result)


async def test_a_write_failure_stops_dispatching(tmp_path: Path, simulator: StartSimulator) -> None:
    concurrency = 2
    campaign = make_campaign({"alice": 40}, tmp_path, rate_limit=1000, concurrency=concurrency)
    log = _FailingLog(tmp_path / "r.jsonl", room=3)
    log.open()
    collector = Collector(log)
    sim = await simulator(accounts_of(campaign), SimConfig(latency=0.01))
    async with XtClient(sim.base_url or "", campaign.settings.api) as client:
        runner = WorkerPool(campaign, client, collector, rng=random.Random(1))
        stats = await asyncio.wait_for(runner.process(campaign.jobs), 20)
    log.close()
    assert stats.write_error is not None
    # Three lines went on record (intents and outcomes); nothing left without its intent on
    # record, and every follow sent has its outcome either on record or among the unrecorded.
    assert len(sim.arrivals) <= 3 + concurrency
    recorded = outcome_lines(tmp_path / "r.jsonl")
    assert len(recorded) + len(stats.unrecorded) == len(sim.arrivals)
    intents = {line["job"] for line in last_lines(tmp_path / "r.jsonl")[0].values()}
    assert {f"alice:{a.leader_id}" for a in sim.arrivals} <= intents


async def test_a_disk_full_mid_run_stops_sending_and_prints_what_it_could_not_record(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> None:
    concurrency = 2
    limit = 2 << 20
    jobs = write_jobs(ALICE)
    results = jobs.parent / "r.jsonl"
    sim = await simulator(accounts_of(ALICE), SimConfig(latency=0.05))
    running = await engines.start(
        *follow_run(jobs, sim),
        "--results",
        str(results),
        "--concurrency",
        str(concurrency),
        env=engine_env(ALICE),
        preexec_fn=lambda: _file_size_limit(limit),
    )
    await sim.wait_for_arrivals(6)
    with results.open("ab") as file:  # the disk fills up: blank lines, which readers skip
        file.write(b"\n" * limit)
    run = await running.finish(timeout=30)
    assert run.code == 1, run.output
    assert "File too large" in run.err and "stopped sending" in run.err
    assert "Traceback" not in run.err
    recorded = ok_jobs(results)
    unrecorded = {line["job"] for line in unrecorded_lines(run.err)}
    accepted = {f"alice:{leader}" for (_, leader), n in sim.accepted.items() if n}
    # Every follow the exchange took is on record, or printed for the user to keep.
    assert accepted == recorded | unrecorded
    assert len(unrecorded) <= concurrency
    assert len(sim.arrivals) == len(recorded) + len(unrecorded)
    assert last_lines(results)[1] == []  # no torn line left behind
