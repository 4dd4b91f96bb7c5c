"""The engine end to end against the simulated exchange over loopback.

Each test proves a behaviour by what the simulator saw arrive, not by what the
engine says it did.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.launch import LaunchOptions, launch_campaign
from engine.pool import WorkerPool
from engine.profiles import V1
from engine.simulator import SimConfig
from tests.support import (
    BASE_LEADER,
    StartSimulator,
    accounts_of,
    make_campaign,
    outcome_lines,
    run_against,
)


async def test_rate_guarantee_holds_at_the_server_for_every_key(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({f"acct{i}": 25 for i in range(6)}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig(latency=0.02))
    outcome = await run_against(sim, campaign)
    assert outcome.stats.ok == 150
    assert sim.violations == 0
    for account in campaign.accounts.values():
        assert sim.max_in_window(account.api_key) == 10
    assert sum(sim.accepted.values()) == 150
    assert max(sim.accepted.values()) == 1


async def test_a_key_keeps_its_full_rate_with_slow_answers(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    """At 300 ms an answer, ten requests of one key are in flight together."""
    campaign = make_campaign({"solo": 20}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig(latency=0.3))
    outcome = await run_against(sim, campaign)
    assert outcome.stats.ok == 20
    times = sorted(a.t for a in sim.arrivals)
    assert times[9] - times[0] < 0.15  # the first window's ten left together
    assert times[10] - times[0] == pytest.approx(1.05, abs=0.1)  # the next ten one period on
    assert sim.violations == 0


async def test_a_throttled_key_does_not_hold_up_the_others(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"big": 40, **{f"small{i}": 2 for i in range(10)}}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig(latency=0.02))
    await run_against(sim, campaign)
    first = min(a.t for a in sim.arrivals)
    small = [a.t - first for a in sim.arrivals if a.api_key.startswith("key-small")]
    big = [a.t - first for a in sim.arrivals if a.api_key == "key-big"]
    assert len(small) == 20
    assert max(small) < 0.5  # all small keys done within the first window
    assert max(big) > 3.0  # while the big key needed four periods


async def test_v1_profile_shares_one_limit_across_keys(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"a": 3, "b": 3}, tmp_path, api=V1, rate_limit=4)
    config = SimConfig(latency=0.01, rate_limit=4, per_ip=True)
    sim = await simulator(accounts_of(campaign), config)
    outcome = await run_against(sim, campaign)
    assert outcome.stats.ok == 6
    assert sim.violations == 0
    assert sim.max_in_window(None) == 4
    assert all(a.path == V1.path for a in sim.arrivals)


@pytest.mark.parametrize(
    ("faults", "ambiguous"),
    [
        # A 5xx may come after the exchange acted: retried, and flagged (issue 10).
        (["http500"], True),
        (["http502", "http503"], True),
        (["http429"], False),
        (["COMMON_002"], False),
        (["COMMON_003"], False),
        (["COPY_TRADE_SPOT_000"], False),
        (["auth_105"], False),
        (["non_json"], True),
        (["drop_before"], True),
    ],
)
async def test_transient_failures_are_retried_to_success(
    tmp_path: Path, simulator: StartSimulator, faults: list[str], ambiguous: bool
) -> None:
    campaign = make_campaign({"alice": 1}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig())
    sim.script(BASE_LEADER, faults)
    outcome = await run_against(sim, campaign)
    [result] = outcome.results.values()
    assert result.status == "ok"
    assert result.attempts == len(faults) + 1
    assert result.ambiguous is ambiguous
    assert len(sim.arrivals) == len(faults) + 1
    assert sim.accepted[("key-alice", BASE_LEADER)] == 1


async def test_each_retry_is_signed_afresh_and_goes_through_the_limiter(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 12}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig())
    for leader in range(BASE_LEADER, BASE_LEADER + 12):
        sim.script(leader, ["http503"])
    outcome = await run_against(sim, campaign)
    assert outcome.stats.ok == 12
    assert len(sim.arrivals) == 24
    # A re-sent stale signature would be refused (AUTH_105/AUTH_103); none was.
    assert {a.mc for a in sim.arrivals if a.fault is None} == {"SUCCESS"}
    assert sim.max_in_window("key-alice") == 10
    assert sim.violations == 0


async def test_a_dropped_answer_is_retried_and_marked_ambiguous(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 1}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig())
    sim.script(BASE_LEADER, ["drop_after"])
    outcome = await run_against(sim, campaign)
    [result] = outcome.results.values()
    assert (result.status, result.attempts, result.ambiguous) == ("ok", 2, True)
    # The exchange had accepted the first one: the retry duplicated it, visibly.
    assert sim.accepted[("key-alice", BASE_LEADER)] == 2


async def test_a_read_timeout_is_ambiguous(tmp_path: Path, simulator: StartSimulator) -> None:
    campaign = make_campaign({"alice": 1}, tmp_path, timeout=0.3)
    sim = await simulator(accounts_of(campaign), SimConfig(slow_seconds=5))
    sim.script(BASE_LEADER, ["slow"])
    outcome = await run_against(sim, campaign)
    [result] = outcome.results.values()
    assert (result.status, result.attempts, result.ambiguous) == ("ok", 2, True)


async def test_giving_up_after_max_attempts(tmp_path: Path, simulator: StartSimulator) -> None:
    campaign = make_campaign({"alice": 1}, tmp_path, max_attempts=3)
    sim = await simulator(accounts_of(campaign), SimConfig())
    sim.script(BASE_LEADER, ["http500"] * 5)
    outcome = await run_against(sim, campaign)
    [result] = outcome.results.values()
    assert result.status == "failed"
    assert result.attempts == 3
    assert result.error == "gave up after 3 attempts: HTTP 500"
    assert result.http_status == 500
    assert len(sim.arrivals) == 3


@pytest.mark.parametrize("mc", ["COPY_TRADE_SPOT_006", "ORDER_002", "AUTH_001", "NEVER_SEEN_42"])
async def test_permanent_errors_fail_after_one_attempt(
    tmp_path: Path, simulator: StartSimulator, mc: str
) -> None:
    campaign = make_campaign({"alice": 2}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig())
    sim.script(BASE_LEADER, [mc])
    outcome = await run_against(sim, campaign)
    failed = outcome.results[f"alice:{BASE_LEADER}"]
    assert (failed.status, failed.attempts, failed.rc, failed.mc) == ("failed", 1, 1, mc)
    assert outcome.results[f"alice:{BASE_LEADER + 1}"].status == "ok"
    assert len(sim.arrivals) == 2


async def test_a_rejected_account_stops_sending_its_jobs(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 30, "bob": 5}, tmp_path, concurrency=4)
    accounts = accounts_of(campaign) | {"key-alice": "not-the-secret-alice-uses"}
    sim = await simulator(accounts, SimConfig(latency=0.02))
    outcome = await run_against(sim, campaign)
    alice = [r for r in outcome.results.values() if r.account == "alice"]
    sent = [r for r in alice if r.sent]
    unsent = [r for r in alice if not r.sent]
    assert all(r.mc == "AUTH_103" and r.attempts == 1 for r in sent)
    assert len(sent) <= 4  # at most what was in flight when the first answer came
    assert {r.error for r in unsent} == {"not sent: account alice rejected with AUTH_103"}
    assert len(sent) + len(unsent) == 30
    assert sum(1 for a in sim.arrivals if a.api_key == "key-alice") == len(sent)
    assert all(r.status == "ok" for r in outcome.results.values() if r.account == "bob")


async def test_repeated_clock_skew_measures_the_server_clock(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 3}, tmp_path)
    sim = await simulator(accounts_of(campaign), SimConfig(skew_ms=60_000))
    outcome = await run_against(sim, campaign)
    assert outcome.stats.ok == 3
    time_calls = [a for a in sim.arrivals if a.path == "/v4/public/time"]
    assert len(time_calls) == 1
    assert max(r.attempts for r in outcome.results.values()) <= 3


async def test_resume_skips_jobs_already_ok(tmp_path: Path, simulator: StartSimulator) -> None:
    campaign = make_campaign({"alice": 4}, tmp_path)
    results = tmp_path / "r.jsonl"
    sim = await simulator(accounts_of(campaign), SimConfig())
    sim.script(BASE_LEADER, ["COPY_TRADE_SPOT_010"])
    first = await run_against(sim, campaign, results=results)
    second = await run_against(sim, campaign, results=results)
    assert (first.stats.ok, first.stats.failed) == (3, 1)
    assert (second.stats.total, second.stats.ok) == (1, 1)
    assert sim.accepted[("key-alice", BASE_LEADER)] == 1
    assert len(sim.arrivals) == 5


async def test_stop_lets_requests_in_flight_finish_and_records_them(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 30}, tmp_path)
    runners: list[WorkerPool] = []
    sim = await simulator(accounts_of(campaign), SimConfig(latency=0.2))
    run = asyncio.create_task(run_against(sim, campaign, on_runner=runners.append))
    await sim.wait_for_arrivals(10)
    runners[0].stop()
    outcome = await run
    assert len(sim.arrivals) == 10
    assert outcome.stats.ok == 10
    assert sorted(outcome.results) == sorted(f"alice:{a.leader_id}" for a in sim.arrivals)
    assert len(outcome_lines(tmp_path / "jobs.results.jsonl")) == 10


async def test_abort_records_requests_in_flight_as_ambiguous(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 30}, tmp_path)
    runners: list[WorkerPool] = []
    sim = await simulator(accounts_of(campaign), SimConfig(latency=5))
    run = asyncio.create_task(run_against(sim, campaign, on_runner=runners.append))
    await sim.wait_for_arrivals(10)
    runners[0].abort()
    outcome = await run
    assert len(outcome.results) == 10
    for result in outcome.results.values():
        assert (result.status, result.ambiguous, result.sent) == ("failed", True, True)
        assert result.error.startswith("interrupted with the request in flight")


async def test_the_simulated_exchange_keeps_the_limit_of_the_campaigns_api(
    tmp_path: Path,
) -> None:
    """``--simulate`` enforces the limit of the API the campaign uses, taken at each run (a
    scheduled file may change API between firings): told 10/s, a v1 campaign still meets
    v1's 2/s per IP, and its 429s are retried."""
    campaign = make_campaign({"alice": 2, "bob": 2}, tmp_path, api=V1, rate_limit=10)
    options = LaunchOptions(results=tmp_path / "r.jsonl", simulate=SimConfig())
    stats = await launch_campaign(campaign, options)
    assert (stats.ok, stats.failed) == (4, 0)
    assert stats.retries >= 2  # four at once, two refused by a limit of 2 per IP
