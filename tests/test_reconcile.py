"""Asking the exchange before sending again (issue 13): resume reconciles, unfollow jobs,
``verify``, ``check`` and the preflight, proved by what reached the simulated exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from decimal import Decimal
from pathlib import Path

from engine.client import XtClient
from engine.launch import LaunchOptions, launch_campaign
from engine.pool import local_limits
from engine.profiles import (
    CANCEL_FOLLOW_PATH,
    LEADER_CONFIG_PATH,
    MY_LEADERS_PATH,
    USER_STATUS_PATH,
    V1,
    V4,
    ApiProfile,
)
from engine.reconcile import Reader, followed
from engine.simulator import FOLLOW_PATHS, SimConfig, Simulator, max_in_window
from tests.support import (
    BASE_LEADER,
    Engines,
    StartSimulator,
    accounts_of,
    engine_env,
    job_file,
    job_ids,
    key_of,
    last_lines,
    make_campaign,
)

#: Every signed endpoint: under v1 they share one limit per IP.
SIGNED = FOLLOW_PATHS | {CANCEL_FOLLOW_PATH, MY_LEADERS_PATH, LEADER_CONFIG_PATH, USER_STATUS_PATH}
FOLLOW = {
    "followType": "RATE",
    "followVal": Decimal("0.5"),
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}


def v1_file(jobs_per_account: dict[str, int], *, extra_jobs: str = "") -> str:
    """``job_file``'s campaign under api v1 (leaders named by account id)."""
    text = job_file(jobs_per_account).replace("leaderOrderId", "leaderAccountId")
    return text + extra_jobs + "settings:\n  api: v1\n"


def v1_config(**config: float) -> SimConfig:
    """The simulated exchange under XT's v1 rule: 2 requests per second per IP."""
    return SimConfig(**{"rate_limit": 2, "per_ip": True, **config})


def follows_of(sim: Simulator, account: str) -> dict[int, dict[str, object]]:
    return {leader: f.settings for leader, f in sim.state.follows.get(key_of(account), {}).items()}


async def test_kill_9_mid_campaign_then_resume_sends_no_follow_twice(
    tmp_path: Path, engines: Engines
) -> None:
    """Each kill lands right after a follow arrived and before its answer could: the
    exchange took it, the results file holds only its intent. Resume asks first."""
    accounts = {"alice": 5, "bob": 5}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(v1_file(accounts))
    env = engine_env(accounts)
    args = ("run", "--no-preflight", str(jobs))
    async with Simulator(accounts_of(accounts), v1_config(latency=0.4)) as sim:
        url = ("--base-url", sim.base_url or "")
        for arrived in (1, 4, 7):
            running = await engines.start(*args, *url, env=env, name=f"kill{arrived}")
            await asyncio.wait_for(sim.wait_for_arrivals(arrived), 30)
            running.process.kill()
            await running.finish()
        first = len(sim.arrivals)
        final = await engines.run(*args, *url, env=env, name="final")
    assert final.code == 0, final.err
    last, _ = last_lines(jobs.with_suffix(".results.jsonl"))
    assert {line["status"] for line in last.values()} == {"ok"}
    assert set(last) == set(job_ids(accounts).values())
    # Every follow reached the exchange once: none sent twice, none lost.
    assert set(sim.accepted.values()) == {1}
    assert len(sim.accepted) == 10
    reconciled = [line for line in last.values() if line["reconciled"]]
    assert reconciled, "no kill caught a follow in flight: the test shows nothing"
    assert all(line["attempts"] == 0 and line["sent"] for line in reconciled)
    # The resuming run's reads and follows together kept to the per-IP limit. (Across a
    # kill and a restart the limit is not promised: the README says so.)
    resumed = sorted(a.t for a in sim.arrivals[first:] if a.path in SIGNED)
    assert max_in_window(resumed, 1.0) <= 2


async def _resume_one(
    tmp_path: Path, sim: Simulator, *, api: ApiProfile, line: dict[str, object], **settings: object
) -> dict[str, object]:
    """A one-job campaign whose results file already holds ``line`` for it, run to the end;
    the job's last line."""
    campaign = make_campaign({"alice": 1}, tmp_path, api=api, rate_limit=api.rate_limit, **settings)
    campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
    [job] = campaign.jobs
    results = tmp_path / "r.jsonl"
    field = campaign.settings.api.leader_field
    results.write_text(json.dumps({"job": job.id, field: job.leader_id, **line}) + "\n")
    await launch_campaign(campaign, LaunchOptions(results=results))
    return last_lines(results)[0][job.id]


async def test_a_job_retried_writes_one_intent_line_however_many_attempts(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    """The intent costs one write per job, not one per attempt."""
    sim = await simulator(accounts_of(["alice"]))
    campaign = make_campaign({"alice": 1}, tmp_path, max_attempts=4)
    campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
    [job] = campaign.jobs
    sim.script(job.leader_id, ["http503", "http503", "drop_before"])
    results = tmp_path / "r.jsonl"
    await launch_campaign(campaign, LaunchOptions(results=results))
    lines = [json.loads(text) for text in results.read_text().splitlines()]
    assert [(line["status"], line["attempts"]) for line in lines] == [("sending", 0), ("ok", 4)]
    assert len(sim.arrivals) == 4


async def test_under_v4_an_intent_on_record_is_sent_again_flagged_ambiguous(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    sim = await simulator(accounts_of(["alice"]))
    last = await _resume_one(tmp_path, sim, api=V4, line={"status": "sending"})
    assert (last["status"], last["ambiguous"], last["reconciled"]) == ("ok", True, False)
    assert [a.path for a in sim.arrivals] == [V4.path]


async def test_under_v1_a_follow_in_place_is_recorded_ok_without_sending(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    sim = await simulator(accounts_of(["alice"]), v1_config())
    sim.state.follow(key_of("alice"), BASE_LEADER, {"leaderAccountId": BASE_LEADER, **FOLLOW})
    last = await _resume_one(tmp_path, sim, api=V1, line={"status": "sending"})
    assert (last["status"], last["reconciled"], last["attempts"]) == ("ok", True, 0)
    assert not [a for a in sim.arrivals if a.path in FOLLOW_PATHS]
    assert {a.path for a in sim.arrivals} == {MY_LEADERS_PATH, LEADER_CONFIG_PATH}


async def test_under_v1_a_follow_in_place_with_other_settings_is_sent_again(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    sim = await simulator(accounts_of(["alice"]), v1_config())
    settings = {"leaderAccountId": BASE_LEADER, **FOLLOW, "followVal": Decimal("0.7")}
    sim.state.follow(key_of("alice"), BASE_LEADER, settings)
    last = await _resume_one(tmp_path, sim, api=V1, line={"status": "failed", "ambiguous": True})
    # The exchange said what it holds: sent again, and not a guess any more.
    assert (last["status"], last["reconciled"], last["ambiguous"]) == ("ok", False, False)
    assert follows_of(sim, "alice")[BASE_LEADER]["followVal"] == Decimal("0.5")


async def test_a_read_that_fails_leaves_the_job_sent_again_and_flagged(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    sim = await simulator(accounts_of(["alice"]), v1_config())
    sim.script(MY_LEADERS_PATH, ["http500", "http500"])
    last = await _resume_one(tmp_path, sim, api=V1, line={"status": "sending"}, max_attempts=2)
    assert (last["status"], last["reconciled"], last["ambiguous"]) == ("ok", False, True)
    assert [a.path for a in sim.arrivals] == [MY_LEADERS_PATH, MY_LEADERS_PATH, V1.path]


async def test_unfollow_jobs_stop_follows_and_ask_before_sending(
    tmp_path: Path, engines: Engines
) -> None:
    """Leader 1 followed and to be dropped; leader 2 to be dropped but never followed;
    leader 3 to be followed: one cancel-follow, one follow, and nothing for leader 2."""
    jobs = tmp_path / "jobs.yaml"
    dropped = (
        "  - {account: alice, leaderAccountId: 1, action: unfollow}\n"
        "  - {account: alice, leaderAccountId: 2, action: unfollow}\n"
    )
    jobs.write_text(v1_file({"alice": 1}, extra_jobs=dropped))
    async with Simulator(accounts_of(["alice"]), v1_config()) as sim:
        sim.state.follow(key_of("alice"), 1, {"leaderAccountId": 1, **FOLLOW})
        done = await engines.run(
            "run", str(jobs), "--base-url", sim.base_url or "", env=engine_env(["alice"])
        )
    assert done.code == 0, done.err
    assert set(follows_of(sim, "alice")) == {BASE_LEADER}
    cancels = [a.leader_id for a in sim.arrivals if a.path == CANCEL_FOLLOW_PATH]
    assert cancels == [1]
    last, _ = last_lines(jobs.with_suffix(".results.jsonl"))
    assert last["alice:2"]["reconciled"] and last["alice:2"]["status"] == "ok"
    assert last["alice:1"]["mc"] == "SUCCESS" and not last["alice:1"]["reconciled"]


async def test_verify_prints_the_drift_between_file_and_exchange(
    tmp_path: Path, engines: Engines
) -> None:
    jobs = tmp_path / "jobs.yaml"
    extra = (
        "  - {account: alice, leaderAccountId: 40, followVal: 0.5}\n"  # missing
        "  - {account: alice, leaderAccountId: 50, action: unfollow}\n"  # still followed
    )
    jobs.write_text(v1_file({"alice": 2}, extra_jobs=extra))
    env = engine_env(["alice"])
    async with Simulator(accounts_of(["alice"]), v1_config()) as sim:
        url = ("--base-url", sim.base_url or "")
        state = sim.state
        first, second = BASE_LEADER, BASE_LEADER + 1
        state.follow(key_of("alice"), first, {"leaderAccountId": first, **FOLLOW})
        other = {**FOLLOW, "followVal": Decimal("0.7"), "symbols": "btc_usdt"}
        state.follow(key_of("alice"), second, {"leaderAccountId": second, **other})
        state.follow(key_of("alice"), 50, {"leaderAccountId": 50, **FOLLOW})
        state.follow(key_of("alice"), 60, {"leaderAccountId": 60, **FOLLOW})  # not in the file
        plain = await engines.run("verify", str(jobs), *url, env=env, name="plain")
        strict = await engines.run(
            "verify", str(jobs), *url, "--strict", "--json", env=env, name="strict"
        )
        for leader in (40,):
            state.follow(key_of("alice"), leader, {"leaderAccountId": leader, **FOLLOW})
        state.follow(key_of("alice"), second, {"leaderAccountId": second, **FOLLOW})
        state.cancel(key_of("alice"), 50)
        agreed = await engines.run("verify", str(jobs), *url, env=env, name="agreed")
        follows = [a for a in sim.arrivals if a.path in FOLLOW_PATHS | {CANCEL_FOLLOW_PATH}]
    assert plain.code == 1, plain.err
    assert "account alice, leader 40: missing (job alice:40)" in plain.out
    assert "account alice, leader 50: still followed (job alice:50)" in plain.out
    assert f"account alice, leader {second}: settings differ (job alice:{second})" in plain.out
    assert "    followVal: file 0.5 / exchange 0.7" in plain.out
    assert "    symbols: file xt_usdt,btc_usdt / exchange ['btc_usdt']" in plain.out
    assert "leader 60" not in plain.out
    drift = json.loads(strict.out)["drift"]
    assert {(d["leader"], d["kind"]) for d in drift} == {
        (40, "missing"),
        (50, "still followed"),
        (second, "settings differ"),
        (60, "not in the file"),
    }
    assert agreed.code == 0, agreed.out + agreed.err
    assert "no drift over 1 accounts" in agreed.out
    assert follows == [], "verify only reads"


async def test_verify_needs_api_v1(tmp_path: Path, engines: Engines) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file({"alice": 1}))
    done = await engines.run(
        "verify", str(jobs), "--base-url", "http://127.0.0.1:9", env=engine_env(["alice"])
    )
    assert done.code == 2
    assert "only api v1 has" in done.err


async def test_check_and_preflight_stop_only_the_accounts_xt_refuses(
    tmp_path: Path, engines: Engines
) -> None:
    """bob is a leader; carol's key is signed with the wrong secret; alice is fine."""
    accounts = {"alice": 2, "bob": 2, "carol": 2}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(accounts))
    env = engine_env(accounts)
    table = accounts_of(accounts) | {key_of("carol"): "not-what-carol-signs-with"}
    async with Simulator(table, SimConfig(latency=0.01)) as sim:
        sim.state.roles[key_of("bob")] = "LEADER"
        url = ("--base-url", sim.base_url or "")
        check = await engines.run("check", str(jobs), *url, env=env, name="check")
        run = await engines.run("run", str(jobs), *url, env=env, name="run")
    assert check.code == 1
    assert "account alice: NONE: ok" in check.out
    assert "account bob: LEADER: account bob is a copy-trading leader" in check.out
    assert "account carol: ?: check of account carol failed" in check.out
    assert "AUTH_103" in check.out
    assert run.code == 1
    followed_keys = {a.api_key for a in sim.arrivals if a.path in FOLLOW_PATHS}
    assert followed_keys == {key_of("alice")}, "a refused account's follows were sent"
    last, _ = last_lines(jobs.with_suffix(".results.jsonl"))
    reasons = {"alice": None, "bob": "account bob is", "carol": "check of account carol failed"}
    for line in last.values():
        reason = reasons[line["account"]]
        if reason is None:
            assert line["status"] == "ok"
        else:
            assert (line["status"], line["sent"]) == ("failed", False)
            assert line["error"].startswith(f"not sent: {reason}"), line["error"]
    assert "check: account bob is a copy-trading leader" in run.err


async def test_preflight_signs_with_xts_clock_when_this_one_is_off(
    tmp_path: Path, engines: Engines
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file({"alice": 2}))
    async with Simulator(accounts_of(["alice"]), SimConfig(skew_ms=30_000)) as sim:
        run = await engines.run(
            "run", str(jobs), "--base-url", sim.base_url or "", env=engine_env(["alice"])
        )
    assert run.code == 0, run.err
    assert "this clock is 30.0 s behind XT's: signing with XT's time" in run.err
    assert {a.mc for a in sim.arrivals} == {"SUCCESS"}, "a request was signed with the wrong time"


async def test_my_leaders_is_read_to_its_last_page(simulator: StartSimulator) -> None:
    campaign = make_campaign({"alice": 0}, Path("."), api=V1)
    sim = await simulator(accounts_of(["alice"]), v1_config(rate_limit=1000))
    leaders = set(range(1000, 1250))
    for leader in sorted(leaders):
        sim.state.follow(key_of("alice"), leader, {"leaderAccountId": leader, **FOLLOW})
    settings = dataclasses.replace(campaign.settings, rate_limit=1000)
    async with XtClient(sim.base_url or "", V1) as client:
        reader = Reader(client, local_limits(settings), settings)
        assert await followed(reader, campaign.accounts["alice"]) == leaders
    pages = [a for a in sim.arrivals if a.path == MY_LEADERS_PATH]
    assert len(pages) == 3
