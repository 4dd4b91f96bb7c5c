"""What the tests share that cannot be a fixture: the accounts' names and secrets, job files,
campaigns built in code, ``follow-engine`` in a process of its own, and reading results.

The fixtures built on these are in ``conftest.py``. Accounts are named (``alice``) and get
their key and secret from the name (``key_of``, ``secret_of``), so a job file, the engine's
environment and the simulator's table of secrets agree without being told.

A test that kills the engine, limits its file size or runs two at once needs the engine in
a process of its own while the simulator lives on in the test's event loop, so that what
arrived at the "exchange" outlives the engine and can be compared with what it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from engine.campaign import Account, Campaign, FollowJob, FollowValue, Settings
from engine.client import XtClient
from engine.collector import CampaignStats, Collector
from engine.past import parse_results
from engine.pool import WorkerPool
from engine.profiles import V4
from engine.results import JobResult, ResultLog
from engine.simulator import SimConfig, Simulator

BASE_LEADER = 7302994413592166401
ENGINE = (sys.executable, "-m", "engine")
#: Seconds any one engine process may take in these tests before it is killed as hung.
PROCESS_TIMEOUT = 60.0


# --- Accounts --------------------------------------------------------------------------------


def key_of(account: str) -> str:
    return f"key-{account}"


def secret_of(account: str) -> str:
    return f"{account}-s3cr3t-5e1f0c7a"


def secret_var(account: str) -> str:
    """The environment variable a job file from ``job_file`` reads the secret from."""
    return f"XT_{account.upper()}_SECRET_KEY"


def accounts_of(accounts: Campaign | Iterable[str]) -> dict[str, str]:
    """The simulator's api_key -> secret_key table: of a campaign's accounts, or of the
    accounts named (a ``jobs_per_account`` mapping names its accounts)."""
    if isinstance(accounts, Campaign):
        return {a.api_key: a.secret_key for a in accounts.accounts.values()}
    return {key_of(a): secret_of(a) for a in accounts}


def engine_env(accounts: Iterable[str], **extra: str) -> dict[str, str]:
    """A clean environment holding the accounts' secrets, and nothing of the test runner's."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env.update({secret_var(a): secret_of(a) for a in accounts})
    env.update(extra)
    return env


# --- Job files -------------------------------------------------------------------------------

FOLLOW_DEFAULTS = """\
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: xt_usdt,btc_usdt
"""


def job_file(
    jobs_per_account: Mapping[str, int],
    *,
    extra: str = "",
    not_before: Mapping[int, datetime] | None = None,
) -> str:
    """A job file whose secrets come from the environment (``engine_env``); leader ids are
    ``BASE_LEADER`` upwards in account order, job ids the default ``account:leader``, one
    job a line from line 12. ``extra`` (top-level keys: ``settings``, ``schedule``,
    ``base_url``) goes after the jobs; ``not_before`` holds back the jobs of these leaders."""
    lines = ["version: 1", "accounts:"]
    for account in jobs_per_account:
        lines += [
            f"  {account}:",
            f"    api_key: {key_of(account)}",
            f"    secret_key: ${{{secret_var(account)}}}",
        ]
    text = "\n".join(lines) + "\n" + FOLLOW_DEFAULTS + "jobs:\n"
    for leader, account in _leaders(jobs_per_account):
        when = (not_before or {}).get(leader)
        held = f", not_before: {when.isoformat()}" if when else ""
        text += f"  - {{account: {account}, leaderOrderId: {leader}, followVal: 0.5{held}}}\n"
    return text + extra


#: The ``write_jobs`` fixture: ``write_jobs(jobs_per_account, **job_file_options)`` or
#: ``write_jobs(text)``, with ``name=`` (default ``jobs.yaml``); the path written.
WriteJobs = Callable[..., Path]


def follow_run(jobs: Path, sim: Simulator, *extra: str) -> tuple[str, ...]:
    """``follow-engine run`` arguments for ``jobs`` against ``sim``, without the preflight's
    account reads: for the tests of what the follows do."""
    return ("run", "--no-preflight", str(jobs), "--base-url", sim.base_url or "", *extra)


def job_ids(jobs_per_account: Mapping[str, int]) -> dict[int, str]:
    """Leader id -> job id, as ``job_file`` and ``make_campaign`` number them."""
    return {leader: f"{account}:{leader}" for leader, account in _leaders(jobs_per_account)}


def _leaders(jobs_per_account: Mapping[str, int]) -> list[tuple[int, str]]:
    accounts = [a for a, count in jobs_per_account.items() for _ in range(count)]
    return list(enumerate(accounts, start=BASE_LEADER))


# --- Campaigns in process --------------------------------------------------------------------


class StartSimulator(Protocol):
    """The ``simulator`` fixture: starts a simulated exchange on loopback."""

    def __call__(
        self, accounts: Mapping[str, str] | None = None, config: SimConfig | None = None
    ) -> Awaitable[Simulator]: ...


FOLLOW: dict[str, FollowValue] = {
    "followType": "RATE",
    "followVal": Decimal("0.5"),
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}


def make_campaign(jobs_per_account: Mapping[str, int], tmp_path: Path, **settings: Any) -> Campaign:
    """The campaign ``job_file`` describes, built in code: the same accounts, keys, secrets,
    leader ids and job ids."""
    leader_field = settings.get("api", V4).leader_field
    jobs = tuple(
        FollowJob(f"{account}:{leader}", account, leader, {leader_field: leader, **FOLLOW})
        for leader, account in _leaders(jobs_per_account)
    )
    return Campaign(
        path=tmp_path / "jobs.yaml",
        base_url="http://unused",
        settings=Settings(**settings),
        accounts={a: Account(a, key_of(a), secret_of(a)) for a in jobs_per_account},
        jobs=jobs,
    )


@dataclass
class Outcome:
    stats: CampaignStats
    results: dict[str, JobResult] = field(default_factory=dict)


async def run_against(
    sim: Simulator,
    campaign: Campaign,
    *,
    results: Path | None = None,
    on_runner: Callable[[WorkerPool], None] | None = None,
) -> Outcome:
    """Run the jobs of ``campaign`` not yet ok in ``results`` against the started ``sim``."""
    assert sim.base_url is not None
    log = ResultLog(results or campaign.path.with_suffix(".results.jsonl"))
    done = log.open().ok_jobs()
    outcome = Outcome(CampaignStats())
    collector = Collector(log, on_result=lambda r: outcome.results.__setitem__(r.job, r))
    settings = campaign.settings
    try:
        async with XtClient(sim.base_url, settings.api, timeout=settings.timeout) as client:
            runner = WorkerPool(campaign, client, collector, rng=random.Random(7))
            if on_runner is not None:
                on_runner(runner)
            jobs = [j for j in campaign.jobs if j.id not in done]
            collector.stats.total = len(jobs)
            outcome.stats = await runner.process(jobs)
    finally:
        log.close()
    return outcome


# --- The engine in a process of its own ------------------------------------------------------


@dataclass
class Finished:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


async def spawn(
    *args: str,
    env: Mapping[str, str],
    out: Path,
    err: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``follow-engine ARGS`` writing to files, never pipes: a killed engine leaves no
    pipe half read, and a chatty one cannot block on a full pipe."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            *ENGINE,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            preexec_fn=preexec_fn,
        )


async def start_piped(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start ``follow-engine ARGS`` with pipes, for a test that reads its output as it comes."""
    return await asyncio.create_subprocess_exec(
        *ENGINE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )


async def finish(
    process: asyncio.subprocess.Process, out: Path, err: Path, timeout: float = PROCESS_TIMEOUT
) -> Finished:
    """Wait for ``process`` (killed when past ``timeout``) and read what it wrote."""
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"engine still running after {timeout} s: killed") from None
    return Finished(code, out.read_text(errors="replace"), err.read_text(errors="replace"))


async def run_engine(
    *args: str,
    env: Mapping[str, str],
    workdir: Path,
    name: str = "engine",
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = PROCESS_TIMEOUT,
) -> Finished:
    """Run ``follow-engine ARGS`` to its end, its output in ``workdir/NAME.out`` and ``.err``."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    process = await spawn(*args, env=env, out=out, err=err, preexec_fn=preexec_fn)
    return await finish(process, out, err, timeout)


@dataclass
class Running:
    """An engine process started by ``Engines.start``."""

    process: asyncio.subprocess.Process
    out: Path
    err: Path

    async def finish(self, timeout: float = PROCESS_TIMEOUT) -> Finished:
        return await finish(self.process, self.out, self.err, timeout)


@dataclass
class Engines:
    """The ``engines`` fixture: engine processes of one test, their output in ``workdir``;
    any still running when the test ends is killed, so a failed test leaves none behind."""

    workdir: Path
    started: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(
        self,
        *args: str,
        env: Mapping[str, str],
        name: str = "engine",
        preexec_fn: Callable[[], None] | None = None,
    ) -> Running:
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        process = await spawn(*args, env=env, out=out, err=err, preexec_fn=preexec_fn)
        self.started.append(process)
        return Running(process, out, err)

    async def run(
        self,
        *args: str,
        env: Mapping[str, str],
        name: str = "engine",
        preexec_fn: Callable[[], None] | None = None,
        timeout: float = PROCESS_TIMEOUT,
    ) -> Finished:
        """Run ``follow-engine ARGS`` to its end (``run_engine`` in ``workdir``)."""
        return await run_engine(
            *args, env=env, workdir=self.workdir, name=name, preexec_fn=preexec_fn, timeout=timeout
        )

    async def kill_the_rest(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.kill()
                await process.wait()


# --- Answers the simulator never gives ----------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def canned(status: int, body: bytes, **headers: str) -> Handler:
    """Answers ``status`` with ``body``, whatever was asked."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers=headers)

    return handle


@contextlib.asynccontextmanager
async def gateway(*answers: Handler) -> AsyncIterator[str]:
    """A server on loopback that answers each request with the next of ``answers``: what a
    gateway in front of the exchange may say. Its base URL."""
    left = deque(answers)

    async def answer(request: web.Request) -> web.StreamResponse:
        return await left.popleft()(request)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def cut_short(request: web.Request) -> web.StreamResponse:
    """Promises 100 bytes, sends 10, hangs up."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Length": "100"})
    await response.prepare(request)
    await response.write(b'{"rc":0,"m')
    assert request.transport is not None
    request.transport.close()
    return response


async def dribble(request: web.Request) -> web.StreamResponse:
    """A byte every 50 ms for 10 s: no read waits long, and the answer hardly ends."""
    await request.read()
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(200):
        try:
            await response.write(b" ")
        except ConnectionResetError:  # the client gave up: as it should
            break
        await asyncio.sleep(0.05)
    return response


# --- Results ---------------------------------------------------------------------------------


def last_lines(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each job's last line in a results file, and the warnings for lines skipped."""
    text = path.read_text(errors="replace") if path.exists() else ""
    past = parse_results(text.split("\n"), str(path))
    return past.last, past.warnings


def outcome_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a results file that record an outcome, in order, each checked to come
    after its job's intent line (``sending``) when the job was attempted."""
    intended: set[str] = set()
    outcomes = []
    for text in path.read_text().splitlines():
        line = json.loads(text)
        if line["status"] == "sending":
            intended.add(line["job"])
            continue
        assert line["attempts"] == 0 or line["job"] in intended, f"no intent before {line}"
        outcomes.append(line)
    return outcomes


def ok_jobs(path: Path) -> set[str]:
    return {job for job, line in last_lines(path)[0].items() if line.get("status") == "ok"}


def unrecorded_lines(stderr: str) -> list[dict[str, Any]]:
    """The results the engine could not write and printed on stderr instead."""
    found = []
    for text in stderr.splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "job" in line:
            found.append(line)
    return found


def unused_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    from bench.redis_server import free_port

    return f"redis://127.0.0.1:{free_port()}/0"
