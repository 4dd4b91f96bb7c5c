"""Issue 10, how the engine reads what the exchange (or a gateway before it) answers: a 5xx
that may come after the exchange acted, a jittery link that bunches arrivals, and a
Retry-After of any size or form. Client-level against canned answers on loopback; end to end
against the simulated exchange on loopback; waits of minutes driven by looptime."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rich.console import Console

from engine.campaign import Campaign
from engine.client import Answer, Envelope, XtClient, retry_after
from engine.collector import CampaignStats, Collector
from engine.jobfile import JobFileError, load
from engine.launch import LaunchOptions, launch_and_report
from engine.limiter import KeyLimiter
from engine.policy import BACKOFF_CAP, Verdict, judge
from engine.pool import WorkerPool
from engine.profiles import V4
from engine.results import ResultLog
from engine.simulator import HTTP429, HTTP500, HTTP502, HTTP503, SimConfig, Simulator
from tests import support
from tests.support import (
    BASE_LEADER,
    accounts_of,
    canned,
    engine_env,
    follow_run,
    gateway,
    job_file,
    key_of,
    last_lines,
    run_engine,
)

#: The wall clock the client reads an HTTP-date against: any fixed moment.
NOW = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)


# --- 6. A 5xx may come after the exchange acted ----------------------------------------------

#: Statuses by which a gateway says it never forwarded the request (policy.NOT_FORWARDED).
NOT_FORWARDED = [501, 505, 521, 522, 523, 525, 526, 530]
#: Any other 5xx: the origin may have acted on the request before the error.
MAY_HAVE_ACTED = [500, 502, 503, 504, 520, 524, 599]


@pytest.mark.parametrize(
    ("status", "ambiguous"),
    [(s, False) for s in NOT_FORWARDED] + [(s, True) for s in MAY_HAVE_ACTED],
)
async def test_a_5xx_is_retried_and_ambiguous_unless_the_gateway_never_forwarded(
    status: int, ambiguous: bool
) -> None:
    params = support.make_campaign({"alice": 1}, Path("unused")).jobs[0].params
    async with (
        gateway(canned(status, b"<html>gateway</html>")) as base,
        XtClient(base, V4) as client,
    ):
        answer = await client.follow("key-alice", "secret-alice", params)
    assert answer.http_status == status
    decision = judge(answer)
    assert decision.verdict is Verdict.RETRY
    assert decision.ambiguous is ambiguous


async def test_a_5xx_from_the_exchange_marks_its_job_ambiguous_whatever_comes_next(
    tmp_path: Path,
) -> None:
    campaign = support.make_campaign({"alice": 4}, tmp_path, max_attempts=2)
    async with Simulator(support.accounts_of(campaign)) as sim:
        for n, faults in enumerate([[HTTP500], [HTTP502], [HTTP503], [HTTP502, HTTP503]]):
            sim.script(BASE_LEADER + n, faults)
        outcome = await support.run_against(sim, campaign)
    results = [outcome.results[job.id] for job in campaign.jobs]
    assert [(r.status, r.attempts, r.ambiguous, r.sent) for r in results] == [
        ("ok", 2, True, True),
        ("ok", 2, True, True),
        ("ok", 2, True, True),
        ("failed", 2, True, True),
    ]
    assert results[3].error == "gave up after 2 attempts: HTTP 503"


# --- 7. A margin for jitter, widened by a 429 --------------------------------------------------


@pytest.mark.parametrize(
    ("written", "margin"), [(None, 0.05), ("0", 0.0), ("0.2", 0.2), ("1", 1.0)]
)
def test_settings_margin_is_read_and_defaults_to_five_percent(
    tmp_path: Path, written: str | None, margin: float
) -> None:
    path = tmp_path / "jobs.yaml"
    settings = f"settings:\n  margin: {written}\n" if written is not None else ""
    path.write_text(job_file({"alice": 1}) + settings)
    campaign = load(path, env={"XT_ALICE_SECRET_KEY": "alice-secret"})
    assert campaign.settings.margin == margin


@pytest.mark.parametrize("written", ["-0.1", "1.01", "5%", "true", "0x1"])
def test_settings_margin_outside_zero_to_one_is_refused(tmp_path: Path, written: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(job_file({"alice": 1}) + f"settings:\n  margin: {written}\n")
    with pytest.raises(JobFileError, match=r"settings\.margin: must be"):
        load(path, env={"XT_ALICE_SECRET_KEY": "alice-secret"})


def test_widen_doubles_the_margin_by_five_points_at_least_and_one_at_most() -> None:
    limiter = KeyLimiter(10, margin=0.0)
    margins = [limiter.widen() for _ in range(7)]
    assert margins == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert limiter.period == pytest.approx(2.0)
    assert KeyLimiter(10, margin=0.01).widen() == pytest.approx(0.06)


@pytest.mark.looptime
async def test_a_widened_margin_holds_back_a_request_already_sent() -> None:
    loop = asyncio.get_running_loop()
    limiter = KeyLimiter(1, margin=0.05, track_sends=True)
    start = loop.time()
    limiter.sent(await limiter.acquire())
    assert limiter.widen() == pytest.approx(0.1)
    await limiter.acquire()
    assert loop.time() - start == pytest.approx(1.1)


class Throttled:
    """An exchange (in place of the client) that answers 429 to the first ``refused``
    requests and ok to the rest."""

    def __init__(self, refused: int) -> None:
        self.refused = refused
        self.calls = 0

    async def follow(
        self, api_key: str, secret: str, params: Any, on_sent: Any, *, ready: Any
    ) -> Answer:
        await ready()  # as the client does: let go by the pool, then written
        on_sent(False)
        self.calls += 1
        if self.calls <= self.refused:
            return Answer(429, None)
        return Answer(200, Envelope(0, "SUCCESS", [], True))


@pytest.mark.looptime
@pytest.mark.parametrize(("bursts", "margin"), [(1, 0.1), (2, 0.2)])
async def test_a_burst_of_429s_widens_the_margin_once(
    tmp_path: Path, bursts: int, margin: float
) -> None:
    """Ten 429s to ten requests sent under one margin say once that it was too small: the
    margin doubles once, not ten times (to 100 %, half the key's rate for the rest of the
    run). The retries, sent under the wider margin, may widen it again."""
    rate = 10
    campaign = support.make_campaign({"alice": rate}, tmp_path, rate_limit=rate)
    log = ResultLog(tmp_path / "r.jsonl")
    log.open()
    exchange = Throttled(refused=bursts * rate)
    pool = WorkerPool(campaign, exchange, Collector(log), rng=random.Random(3))  # type: ignore[arg-type]
    stats = await pool.process(campaign.jobs)
    log.close()
    assert stats.ok == rate
    assert stats.keys["key-alice"].margin == pytest.approx(margin)


class Link:
    """A proxy between engine and exchange, as a network or a gateway may be: it holds the
    n-th request ``delay(n)`` seconds on its way, and may put a ``Retry-After`` of its own
    on the exchange's 429 and 5xx answers. It notes the loop time each request reached it."""

    def __init__(
        self,
        upstream: str,
        delay: Callable[[int], float] = lambda n: 0.0,
        retry_after: Callable[[], str] | None = None,
    ) -> None:
        self.upstream, self.delay, self.retry_after = upstream, delay, retry_after
        self.times: list[float] = []
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        self.times.append(asyncio.get_running_loop().time())
        body = await request.read()
        await asyncio.sleep(self.delay(len(self.times) - 1))
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        assert self._session is not None
        url = self.upstream + request.path
        async with self._session.post(url, data=body, headers=headers) as r:
            passed = {k: v for k, v in r.headers.items() if k in ("Content-Type", "Retry-After")}
            if self.retry_after is not None and (r.status == 429 or r.status >= 500):
                passed["Retry-After"] = self.retry_after()
            return web.Response(status=r.status, body=await r.read(), headers=passed)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with aiohttp.ClientSession() as self._session:
                yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


def alternating(rate: int, jitter: float) -> Callable[[int], float]:
    """Network jitter at its worst for a margin below ``jitter``: each other burst of
    ``rate`` requests slow and the next one fast, so two requests of one lane arrive
    ``jitter`` closer together than they left."""
    return lambda n: jitter if (n // rate) % 2 == 0 else 0.0


async def run_pool(campaign: Campaign, base_url: str, results: Path) -> CampaignStats:
    """The worker pool on ``campaign``'s jobs against ``base_url``."""
    log = ResultLog(results)
    log.open()
    try:
        async with XtClient(base_url, campaign.settings.api) as client:
            pool = WorkerPool(campaign, client, Collector(log), rng=random.Random(3))
            return await pool.process(campaign.jobs)
    finally:
        log.close()


async def test_on_a_jittery_link_429s_widen_the_margin_until_none_come(tmp_path: Path) -> None:
    """150 ms of jitter (``alternating``) against a 5 % margin: the first fast burst after a
    slow one is refused (429). Each burst of 429s widens that key's margin until the bursts
    no longer bunch: the run ends without 429s, says so, and every job is ok. With the
    margin fixed, every other burst drew 429s to the end."""
    rate = 5
    campaign = support.make_campaign({"alice": 4 * rate}, tmp_path, rate_limit=rate)
    results = tmp_path / "r.jsonl"
    config = SimConfig(rate_limit=rate)
    out, err = io.StringIO(), io.StringIO()
    async with (
        Simulator(support.accounts_of(campaign), config) as sim,
        Link(sim.base_url or "", alternating(rate, jitter=0.15)).running() as url,
    ):
        code = await launch_and_report(
            dataclasses.replace(campaign, base_url=url),
            LaunchOptions(results=results),
            Console(file=out, width=200),
            err,
        )
    assert code == 0, err.getvalue()
    statuses = [a.status for a in sim.arrivals]
    assert statuses[rate : 2 * rate] == [429] * rate, "the jitter did not bite: no test"
    assert 429 not in statuses[-2 * rate :], "429s went on to the end of the run"
    assert sim.violations == statuses.count(429)
    assert "margin widened" in out.getvalue() and "alice" in out.getvalue()
    assert all(line["status"] == "ok" for line in last_lines(results)[0].values())


# --- 9. Retry-After: any number of seconds, or a date ------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3600", 3600.0),
        ("86400", 86400.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (format_datetime(NOW + timedelta(minutes=10), usegmt=True), 600.0),
        ("Wed, 25 Nov 2026 10:05:00 GMT", 300.0),
        ("Wednesday, 25-Nov-26 10:05:00 GMT", 300.0),  # RFC 850, which RFC 9110 still takes
        (format_datetime(NOW - timedelta(minutes=10), usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header, NOW.timestamp) == seconds


async def test_the_client_keeps_a_long_or_dated_retry_after() -> None:
    params = support.make_campaign({"alice": 1}, Path("unused")).jobs[0].params
    later = format_datetime(NOW + timedelta(hours=2), usegmt=True)
    answers = (
        canned(429, b"", **{"Retry-After": "7200"}),
        canned(503, b"", **{"Retry-After": later}),
    )
    async with gateway(*answers) as base, XtClient(base, V4, clock=NOW.timestamp) as client:
        long = await client.follow("key-alice", "secret-alice", params)
        dated = await client.follow("key-alice", "secret-alice", params)
    assert (long.http_status, long.retry_after) == (429, 7200.0)
    assert (dated.http_status, dated.retry_after) == (503, 7200.0)


def in_seconds(seconds: float) -> Callable[[], str]:
    return lambda: str(seconds)


def at_date_in(seconds: float) -> Callable[[], str]:
    """An HTTP-date ``seconds`` from the moment it is sent (whole seconds: one less, at worst)."""
    return lambda: format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds), True)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("fault", "retry", "wait", "settings"),
    [
        (HTTP429, in_seconds(3600), 3600, {"max_retry_after": 7200}),
        (HTTP429, at_date_in(250), 249, {}),
        (HTTP503, in_seconds(120), 120, {}),
    ],
    ids=["429-an-hour", "429-http-date", "503"],
)
async def test_a_retry_never_comes_sooner_than_retry_after(
    tmp_path: Path,
    fault: str,
    retry: Callable[[], str],
    wait: float,
    settings: dict[str, Any],
) -> None:
    """Before the fix a Retry-After of an hour or more, or a date, was dropped and the retry
    came within a second. A 429 holds back the whole key: the job's sibling waits too.
    (The exchange's answers have the link's Retry-After; looptime drives the hour.)"""
    campaign = support.make_campaign({"alice": 2}, tmp_path, concurrency=1, **settings)
    async with Simulator(support.accounts_of(campaign)) as sim:
        sim.script(BASE_LEADER, [fault])
        link = Link(sim.base_url or "", retry_after=retry)
        async with link.running() as url:
            stats = await run_pool(campaign, url, tmp_path / "r.jsonl")
    assert stats.ok == 2
    assert len(link.times) == 3
    first, *later = link.times
    if fault == HTTP429:
        assert all(t - first >= wait for t in later)
    else:
        assert link.times[-1] - first >= wait  # the job's own retry, after its sibling
    assert max(later) - first < wait + BACKOFF_CAP + 2


async def test_a_retry_after_above_max_retry_after_fails_the_keys_jobs_unsent(
    tmp_path: Path,
) -> None:
    """The simulator's 429 says ``Retry-After: 1``; ``--max-retry-after 0.5`` makes that too
    long to wait. One request in flight at a time, so alice's other jobs are still queued."""
    accounts = {"alice": 3, "bob": 2}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(accounts))
    async with Simulator(accounts_of(accounts)) as sim:
        sim.script(BASE_LEADER, ["http429"])
        run = await run_engine(
            *follow_run(jobs, sim), "--max-retry-after", "0.5",
            "--concurrency", "1", env=engine_env(accounts), workdir=tmp_path,
        )  # fmt: skip
    assert run.code == 1, run.output
    lines = last_lines(tmp_path / "jobs.results.jsonl")[0]
    first, *others = (lines[f"alice:{BASE_LEADER + n}"] for n in range(3))
    why = "the exchange asked to wait 1 s (Retry-After), longer than max_retry_after 0.5 s"
    assert (first["status"], first["attempts"], first["http_status"]) == ("failed", 1, 429)
    assert first["error"] == f"HTTP 429: rate limited; {why}"
    for line in others:
        assert (line["status"], line["sent"]) == ("failed", False)
        assert line["error"] == f"not sent: {why}"
    assert all(lines[f"bob:{BASE_LEADER + n}"]["status"] == "ok" for n in (3, 4))
    assert [a.api_key for a in sim.arrivals].count(key_of("alice")) == 1
