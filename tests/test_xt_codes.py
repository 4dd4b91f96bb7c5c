"""Issue 11, exchange correctness: what XT's answers mean (``result: false``, its error table),
the digits a number goes out with, one follow per account and leader, and the header
spelling. Proven by what the simulated exchange on loopback saw arrive (it checks every
signature with code of its own) and by the results file; client-level against answers
served on loopback; waits of seconds driven by looptime."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from rich.console import Console

from engine.cli import main
from engine.client import XtClient
from engine.collector import Collector
from engine.jobfile import JobFileError, load
from engine.launch import LaunchOptions, launch_and_report
from engine.policy import RISK_PAUSE, RISK_STRIKES, Verdict, judge
from engine.pool import WorkerPool
from engine.profiles import V4
from engine.results import ResultLog
from engine.simulator import RESULT_FALSE, Simulator
from tests import support
from tests.support import BASE_LEADER, canned, gateway, last_lines
from tests.test_schedule import loop_clock

#: The headers of an answer in XT's JSON envelope.
JSON = {"Content-Type": "application/json"}
SECRET = "alice-s3cr3t-5e1f0c7a"
ENV = {"XT_ALICE_SECRET_KEY": SECRET, "XT_BOB_SECRET_KEY": "bob-s3cr3t-0a1b2c"}

JOBS = """\
version: 1
accounts:
  alice:
    api_key: key-alice
    secret_key: ${XT_ALICE_SECRET_KEY}
  bob:
    api_key: key-bob
    secret_key: ${XT_BOB_SECRET_KEY}
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: xt_usdt
jobs:
"""


def lines_by_job(results: Path) -> dict[str, dict[str, Any]]:
    return last_lines(results)[0]


# --- rc 0 with "result": false --------------------------------------------------------------


async def test_rc_0_with_result_false_is_failed_not_retried_and_recorded_verbatim(
    tmp_path: Path,
) -> None:
    """XT answers ``result: true`` for a follow it made; ``false`` says it did not. Before
    the fix rc 0 alone counted as ok."""
    campaign = support.make_campaign({"alice": 2}, tmp_path)
    results = tmp_path / "r.jsonl"
    async with Simulator(support.accounts_of(campaign)) as sim:
        sim.script(BASE_LEADER, [RESULT_FALSE])
        await support.run_against(sim, campaign, results=results)
    refused, followed = (lines_by_job(results)[job.id] for job in campaign.jobs)
    assert (refused["status"], refused["attempts"]) == ("failed", 1)
    assert refused["error"] == "rc=0 mc=SUCCESS but result false: not followed"
    assert (refused["rc"], refused["mc"], refused["http_status"]) == (0, "SUCCESS", 200)
    assert refused["result"] is False
    assert (followed["status"], followed["result"]) == ("ok", True)
    assert len(sim.arrivals) == 2, "retried"


@pytest.mark.parametrize(
    ("result", "verdict"),
    [(False, Verdict.FAIL), (True, Verdict.OK), ({"followId": 42}, Verdict.OK)],
)
async def test_the_envelopes_result_is_read_verbatim(result: Any, verdict: Verdict) -> None:
    body = json.dumps({"rc": 0, "mc": "SUCCESS", "ma": [], "result": result}).encode()
    async with gateway(canned(200, body, **JSON)) as url, XtClient(url, V4) as client:
        answer = await client.follow("key-alice", SECRET, {"leaderOrderId": 1})
    assert answer.envelope is not None and answer.envelope.result == result
    assert judge(answer).verdict is verdict


# --- XT's error table: the account, the key, the run ------------------------------------------


@pytest.mark.parametrize("code", ["COMMON_001", "AUTH_101", "AUTH_102", "AUTH_104", "AUTH_106"])
async def test_a_code_that_rejects_the_account_fails_its_other_jobs_unsent(
    tmp_path: Path, code: str
) -> None:
    """COMMON_001 is XT's "user does not exist": no job of that account can succeed."""
    campaign = support.make_campaign({"alice": 4, "bob": 2}, tmp_path, concurrency=1)
    async with Simulator(support.accounts_of(campaign)) as sim:
        sim.script(BASE_LEADER, [code])
        outcome = await support.run_against(sim, campaign)
    first, *others = (outcome.results[job.id] for job in campaign.jobs[:4])
    assert (first.status, first.attempts, first.rc, first.mc) == ("failed", 1, 1, code)
    assert first.error == f"{code}: account rejected"
    for result in others:
        assert (result.status, result.sent) == ("failed", False)
        assert result.error == f"not sent: account alice rejected with {code}"
    assert all(outcome.results[job.id].status == "ok" for job in campaign.jobs[4:])
    assert [a.api_key for a in sim.arrivals].count("key-alice") == 1


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@pytest.mark.looptime
async def test_risk_control_pauses_the_key_longer_each_time_then_gives_the_account_up(
    tmp_path: Path,
) -> None:
    """GATEWAY_0001-0004, XT's "trigger risk control": each answer holds alice's key back
    (2 s, then 4 s), the third gives the account up and its jobs still queued fail unsent.
    One request in flight at a time, so the queue is known."""
    assert RISK_STRIKES == 3
    campaign = support.make_campaign({"alice": 5, "bob": 2}, tmp_path, concurrency=1)
    results = tmp_path / "r.jsonl"
    log = ResultLog(results)
    log.open()
    async with Simulator(support.accounts_of(campaign)) as sim:
        for n, code in enumerate(["GATEWAY_0001", "GATEWAY_0004", "GATEWAY_0002"]):
            sim.script(BASE_LEADER + n, [code])
        async with XtClient(sim.base_url or "", V4) as client:
            pool = WorkerPool(
                campaign, client, Collector(log), rng=random.Random(5),
                clock=loop_clock(datetime(2026, 11, 25, tzinfo=timezone.utc)),
            )  # fmt: skip
            await pool.process(campaign.jobs)
    log.close()
    lines = lines_by_job(results)
    a, b, c, d, e = (lines[job.id] for job in campaign.jobs[:5])
    # Each strike came after the pause the one before asked for, and each pause was longer.
    first_b, first_c = when(b["sent_at"][0]), when(c["sent_at"][0])
    assert first_b - when(a["sent_at"][0]) >= timedelta(seconds=RISK_PAUSE)
    assert first_c - first_b >= timedelta(seconds=2 * RISK_PAUSE)
    assert c["error"] == "GATEWAY_0002: risk control, 3 times: account given up"
    given_up = "not sent: account alice met XT's risk control (GATEWAY_0002)"
    for line in (a, b, d, e):
        assert (line["status"], line["error"]) == ("failed", given_up)
    assert (d["sent"], e["sent"]) == (False, False)
    assert [arrival.api_key for arrival in sim.arrivals].count("key-alice") == 3
    assert all(lines[job.id]["status"] == "ok" for job in campaign.jobs[5:])


@pytest.mark.parametrize("code", ["AUTH_001", "AUTH_004", "AUTH_007"])
async def test_a_header_code_stops_all_sending_at_once_with_one_message(
    tmp_path: Path, code: str
) -> None:
    """AUTH_001-007: the request headers themselves are refused, so every request of every
    account would be: the run stops, nothing more of any account is sent, exit 1."""
    campaign = support.make_campaign({"alice": 5, "bob": 5}, tmp_path, concurrency=1)
    results = tmp_path / "r.jsonl"
    out, err = io.StringIO(), io.StringIO()
    async with Simulator(support.accounts_of(campaign)) as sim:
        for job in campaign.jobs:  # whichever goes first draws it
            sim.script(job.leader_id, [code])
        campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
        exit_code = await launch_and_report(
            campaign, LaunchOptions(results=results), Console(file=out, width=200), err
        )
    assert exit_code == 1
    assert len(sim.arrivals) == 1
    [line] = lines_by_job(results).values()
    assert (line["status"], line["mc"], line["error"]) == (
        "failed", code, f"{code}: request headers refused",
    )  # fmt: skip
    message = f"error: the exchange refused the request headers ({code})"
    assert err.getvalue().count(message) == 1, err.getvalue()
    assert "set settings.headers to validate" in err.getvalue()
    assert "9 not started" in out.getvalue()


# --- Numbers as written ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("0.0000001", "0.0000001"),
        ("1E-7", "0.0000001"),
        ("1.5e+3", "1500"),
        ("2.50", "2.50"),
        ("100", "100"),
        ("1.23456789012345678901e+5", "123456.789012345678901"),
        ("'0.10'", "0.10"),
    ],
)
def test_a_number_goes_out_in_the_plain_digits_written(
    tmp_path: Path, written: str, sent: str
) -> None:
    """Before the fix ``0.0000001`` went out as ``1E-7`` and ``1.5e+3`` as ``1.5E+3``."""
    path = tmp_path / "jobs.yaml"
    path.write_text(
        JOBS + f"  - {{account: alice, leaderOrderId: 1, followVal: {written}, "
        f"followLoss: {written}}}\n"
    )
    result = CliRunner(env=ENV).invoke(main, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f'"followVal":{sent},' in result.output
    assert f'"followLoss":{sent},' in result.output


async def test_the_body_on_the_wire_holds_the_plain_digits(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS + "  - {account: alice, leaderOrderId: 1, followVal: 1.5e+3}\n")
    [job] = load(path, env=ENV).jobs
    bodies: list[bytes] = []

    async def recorded(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.json_response({"rc": 0, "mc": "SUCCESS", "ma": [], "result": True})

    async with gateway(recorded) as url, XtClient(url, V4) as client:
        await client.follow("key-alice", SECRET, job.params)
    [body] = bodies
    assert b'"followVal":1500,' in body


# --- One follow per account and leader --------------------------------------------------------


def test_the_same_account_and_leader_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        JOBS
        + "  - {id: first, account: alice, leaderOrderId: 7302994413592166401, followVal: 1}\n"
        + "  - {id: other, account: bob, leaderOrderId: 7302994413592166401, followVal: 1}\n"
        + "  - id: again\n"
        + "    account: alice\n"
        + "    leaderOrderId: '7302994413592166401'\n"
        + "    followVal: 2\n"
    )
    with pytest.raises(JobFileError) as caught:
        load(path, env=ENV)
    assert caught.value.problems == [
        f"{path}:19: job again (jobs[2]): leaderOrderId: account alice follows leader "
        "7302994413592166401 twice: jobs[0] at line 15 and jobs[2] at line 17"
    ]
    result = CliRunner(env=ENV).invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "jobs[0] at line 15 and jobs[2] at line 17" in result.output


def test_one_follow_per_account_and_leader_under_v1_too(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "settings:\n  api: v1\n"
        + JOBS
        + "  - {account: bob, leaderAccountId: 55, followVal: 1}\n"
        + "  - {id: again, account: bob, leaderAccountId: 55, followVal: 1}\n"
    )
    with pytest.raises(JobFileError, match=r"account bob follows leader 55 twice: jobs\[0\]"):
        load(path, env=ENV)


# --- The header spelling ----------------------------------------------------------------------


def header_names(sim: Simulator) -> list[set[str]]:
    """Record the validate header names of each request the simulator receives."""
    seen: list[set[str]] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append({n.lower() for n in request.headers if "validate-" in n.lower()})
        return await handler(request)

    sim.app.middlewares.append(record)
    return seen


@pytest.mark.parametrize(
    ("setting", "prefix"),
    [("headers: validate\n", "validate-"), ("", "xt-validate-")],
    ids=["validate", "default"],
)
async def test_the_header_spelling_is_a_setting_signed_as_sent(
    tmp_path: Path, setting: str, prefix: str
) -> None:
    """``settings.headers: validate`` sends ``validate-*``, as XT's current documentation
    writes them; the simulator checks the signature under the names it received."""
    path = tmp_path / "jobs.yaml"
    jobs = "".join(
        f"  - {{account: {a}, leaderOrderId: {BASE_LEADER + n}, followVal: 1}}\n"
        for n, a in enumerate(["alice", "alice", "bob"])
    )
    path.write_text(f"settings:\n  {setting or 'concurrency: 8'}\n" + JOBS + jobs)
    campaign = load(path, env=ENV)
    keys = {a.api_key: a.secret_key for a in campaign.accounts.values()}
    sim = Simulator(keys)
    seen = header_names(sim)
    async with sim:
        campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
        code = await launch_and_report(
            campaign,
            LaunchOptions(results=tmp_path / "r.jsonl"),
            Console(file=io.StringIO()),
            io.StringIO(),
        )
    assert code == 0
    assert {a.mc for a in sim.arrivals} == {"SUCCESS"}
    expected = {prefix + n for n in ("algorithms", "appkey", "recvwindow", "timestamp")}
    assert seen == [expected | {prefix + "signature"}] * 3


def test_a_header_spelling_xt_does_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("settings:\n  headers: x-validate\n" + JOBS + "  - {account: alice, "
                    "leaderOrderId: 1, followVal: 1}\n")  # fmt: skip
    with pytest.raises(JobFileError, match=r"settings\.headers: must be 'xt-validate' or "):
        load(path, env=ENV)
