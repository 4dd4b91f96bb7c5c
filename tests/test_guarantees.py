"""Issue 10, a run under a hostile world: an error nobody expected, a results file deleted or
misnamed, a second run, a stop while the file loads, a closed terminal or stdout.

Proven by what the simulated exchange on loopback saw arrive, against what the engine recorded
or printed; the engine runs as a process of its own where signals, exit codes or a second run
are what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from engine.campaign import Campaign, FollowJob
from engine.client import XtClient
from engine.launch import LaunchOptions, launch_and_report, launch_campaign
from engine.limiter import KeyLimiter, Limiter, LocalLimits
from engine.results import JobResult, ResultLog, ResultsFileError
from engine.simulator import FOLLOW_PATHS, SimConfig, Simulator
from tests import support
from tests.support import (
    ENGINE,
    PROCESS_TIMEOUT,
    accounts_of,
    engine_env,
    finish,
    follow_run,
    job_file,
    job_ids,
    key_of,
    last_lines,
    ok_jobs,
    run_engine,
    secret_of,
    spawn,
    start_piped,
    unrecorded_lines,
)


@dataclasses.dataclass
class Report:
    code: int
    out: str
    err: str


async def report(campaign: Campaign, results: Path) -> Report:
    """``launch_and_report`` in this process, as ``run`` calls it; a hang fails the test."""
    out, err = io.StringIO(), io.StringIO()
    options = LaunchOptions(results=results)
    work = launch_and_report(campaign, options, Console(file=out, width=200), err)
    code = await asyncio.wait_for(work, PROCESS_TIMEOUT)
    return Report(code, out.getvalue(), err.getvalue())


@contextlib.asynccontextmanager
async def exchange(campaign: Campaign, **config: Any) -> AsyncIterator[tuple[Simulator, Campaign]]:
    """A simulator checking ``campaign``'s signatures, and the campaign pointed at it."""
    async with Simulator(support.accounts_of(campaign), SimConfig(**config)) as sim:
        yield sim, dataclasses.replace(campaign, base_url=sim.base_url or "")


def by_job(results: Path) -> dict[str, dict[str, Any]]:
    return last_lines(results)[0]


# --- 1. An error nobody expected fails its job, named; the run goes on -----------------------


@pytest.mark.parametrize("left", [False, True], ids=["before-sending", "after-sending"])
async def test_an_unexpected_error_in_an_attempt_fails_that_job_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: bool
) -> None:
    """aiohttp's ValueError on a header with a line break killed the attempt's task: the job
    never finished and the run hung forever. Now the job fails, not retried, with the error
    named; ambiguous only when the request had left."""
    real = XtClient.follow

    async def follow(
        self: XtClient, api_key: str, secret: str, params: Any, on_sent: Any, *, ready: Any
    ) -> Any:
        if api_key == "key-bob":
            if left:  # as the client does: let go by the pool, then written
                await ready()
                on_sent(False)
            raise ValueError("Newline, carriage return, or null byte detected in headers")
        return await real(self, api_key, secret, params, on_sent, ready=ready)

    monkeypatch.setattr(XtClient, "follow", follow)
    campaign = support.make_campaign({"alice": 5, "bob": 3}, tmp_path)
    results = tmp_path / "r.jsonl"
    async with exchange(campaign) as (sim, campaign):
        done = await report(campaign, results)
    assert done.code == 1, done.err
    lines = by_job(results)
    assert len(lines) == 8
    for line in lines.values():
        if line["account"] == "alice":
            assert line["status"] == "ok", line
            continue
        assert line["status"] == "failed" and line["attempts"] == 1, line
        assert line["error"].startswith("internal error, not retried: ValueError('Newline")
        assert (line["sent"], line["ambiguous"]) == (left, left), line
    assert {a.api_key for a in sim.arrivals} == {"key-alice"}
    assert len(sim.arrivals) == 5


async def test_a_crashed_dispatcher_stops_the_run_named_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose jobs did not all finish never exits 0, though none of them failed."""

    class Broken(KeyLimiter):
        async def acquire(self) -> int:
            raise RuntimeError("the limiter broke")

    real = LocalLimits.limiter

    def limiter(self: LocalLimits, name: str) -> Limiter:
        return Broken(self.rate) if name == "key-bob" else real(self, name)

    monkeypatch.setattr(LocalLimits, "limiter", limiter)
    campaign = support.make_campaign({"alice": 2, "bob": 3}, tmp_path)
    results = tmp_path / "r.jsonl"
    async with exchange(campaign) as (sim, campaign):
        done = await report(campaign, results)
    assert done.code == 1, done.err
    assert "error: internal error: RuntimeError('the limiter broke')" in done.err
    assert "3 not started" in done.out
    assert not any(line["account"] == "bob" for line in by_job(results).values())
    assert {a.api_key for a in sim.arrivals} <= {"key-alice"}


# --- 2. A results file deleted or replaced, a second run --------------------------------------

LONG = {"alice": 60}


def delete(path: Path) -> None:
    path.unlink()


def replace(path: Path) -> None:
    other = path.with_name("other")
    other.write_text("")
    os.replace(other, path)


@pytest.mark.parametrize(
    ("target", "change", "message"),
    [
        ("jobs.results.jsonl", delete, "the results file was deleted or replaced"),
        ("jobs.results.jsonl", replace, "the results file was deleted or replaced"),
        ("jobs.yaml.lock", delete, "the campaign's lock file was deleted or replaced"),
    ],
    ids=["results-deleted", "results-replaced", "lock-deleted"],
)
async def test_a_results_or_lock_file_gone_mid_run_stops_sending_within_a_second(
    tmp_path: Path, target: str, change: Callable[[Path], None], message: str
) -> None:
    """The answers take 1.5 s, so no result is written to notice it by when the next burst
    is due (1.05 s after the first): the run must notice by itself. What the exchange took
    meanwhile is printed on stderr, since the file can no longer be trusted with it."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(LONG))
    results = tmp_path / "jobs.results.jsonl"
    kept = tmp_path / "kept.jsonl"
    out, err = tmp_path / "engine.out", tmp_path / "engine.err"
    async with Simulator(accounts_of(LONG), SimConfig(latency=1.5)) as sim:
        args = follow_run(jobs, sim, "--timeout", "30")
        process = await spawn(*args, env=engine_env(LONG), out=out, err=err)
        await sim.wait_for_arrivals(10)  # the first burst
        os.link(results, kept)  # the test may still read what the run wrote before
        change(tmp_path / target)
        changed = time.monotonic()
        run = await finish(process, out, err)
    assert run.code == 1, run.output
    assert message in run.err and "stopped sending" in run.err
    assert max(a.t for a in sim.arrivals) - changed < 1.0, "sent after the file was gone"
    assert len(sim.arrivals) < 60
    # Every follow the exchange took is on record from before, or printed now.
    printed = {line["job"]: line for line in unrecorded_lines(run.err)}
    recorded = ok_jobs(results if target.endswith(".lock") else kept)
    ids = job_ids(LONG)
    accepted = {ids[leader] for (_, leader), n in sim.accepted.items() if n and leader}
    assert accepted == recorded | {job for job, line in printed.items() if line["status"] == "ok"}
    assert printed, "the requests in flight finished after the change: printed, not lost"


@pytest.mark.parametrize("change", [delete, replace])
def test_a_results_file_deleted_or_replaced_takes_no_more_lines(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    """Checked at every line too, not only by the run's watch every half second: a line
    written to a file no longer at its path would be lost."""
    jobs = support.make_campaign({"alice": 2}, tmp_path).jobs
    results = tmp_path / "r.jsonl"
    log = ResultLog(results)
    log.open()
    log.record(ok_line(jobs[0]))
    change(results)
    with pytest.raises(ResultsFileError, match="the results file was deleted or replaced"):
        log.record(ok_line(jobs[1]))
    log.close()


@pytest.mark.parametrize("how", ["results-deleted", "other-results"])
async def test_a_second_run_of_a_campaign_refuses_while_the_first_runs(
    tmp_path: Path, how: str
) -> None:
    """The lock is beside the job file, so neither deleting the results file nor naming
    another one lets a second run send. The first run is held (SIGSTOP) while the second
    starts, so it cannot have ended first by chance; one request in flight at a time, and
    slow answers, so that nothing of the first run's is still on its way meanwhile."""
    small = {"alice": 4, "bob": 4}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(small))
    results = tmp_path / "jobs.results.jsonl"
    env = engine_env(small)
    out, err = tmp_path / "first.out", tmp_path / "first.err"
    async with Simulator(accounts_of(small), SimConfig(latency=0.2)) as sim:
        args = follow_run(jobs, sim, "--concurrency", "1")
        first = await spawn(*args, env=env, out=out, err=err)
        await sim.wait_for_arrivals(1)
        first.send_signal(signal.SIGSTOP)
        try:
            sent = len(sim.arrivals)
            extra: tuple[str, ...] = ("--fresh",)
            if how == "results-deleted":
                results.unlink()
            else:
                extra += ("--results", str(tmp_path / "other.jsonl"))
            second = await run_engine(*args, *extra, env=env, workdir=tmp_path, name="second")
            assert len(sim.arrivals) == sent, "the second run sent"
        finally:
            first.send_signal(signal.SIGCONT)
        first_done = await finish(first, out, err)
    assert second.code == 2, second.output
    assert "in use by another run of this campaign" in second.err and "nothing sent" in second.err
    assert set(sim.accepted.values()) == {1}, "a follow was sent twice"
    if how == "other-results":
        assert first_done.code == 0, first_done.err
        assert len(ok_jobs(results)) == 8
        assert not (tmp_path / "other.jsonl").exists()
    else:
        assert first_done.code == 1, first_done.err


# --- 3. A results path that is not a results file to write -----------------------------------


def _same_as_jobs(tmp_path: Path) -> Path:
    return tmp_path / "jobs.yaml"


def _hard_link(tmp_path: Path) -> Path:
    os.link(tmp_path / "jobs.yaml", tmp_path / "linked.jsonl")
    return tmp_path / "linked.jsonl"


def _symlink_to_jobs(tmp_path: Path) -> Path:
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "jobs.yaml")
    return tmp_path / "link.jsonl"


def _symlink(tmp_path: Path) -> Path:
    (tmp_path / "target.jsonl").write_text('{"job":"precious"}\n')
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "target.jsonl")
    return tmp_path / "link.jsonl"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


def _device(tmp_path: Path) -> Path:
    return Path(os.devnull)


def _env_file(tmp_path: Path) -> Path:
    (tmp_path / "xt.env").write_text("XT_ALICE_SECRET_KEY=something\n")
    return tmp_path / "xt.env"


@pytest.mark.parametrize(
    ("make", "fresh", "message"),
    [
        (_same_as_jobs, False, "is the job file itself"),
        (_same_as_jobs, True, "is the job file itself"),
        (_hard_link, True, "is the job file itself"),
        (_symlink_to_jobs, True, "is a symbolic link"),
        (_symlink, True, "is a symbolic link"),
        (_symlink, False, "is a symbolic link"),
        (_fifo, True, "not a regular file"),
        (_device, True, "not a regular file"),
        (_env_file, True, "holds no results; --fresh would wipe it"),
    ],
    ids=[
        "job-file", "job-file-fresh", "hard-link-fresh", "symlink-to-job-file-fresh",
        "symlink-fresh", "symlink", "fifo", "device", "env-file-fresh",
    ],
)  # fmt: skip
async def test_a_results_path_that_is_no_results_file_is_refused_untouched(
    tmp_path: Path, make: Callable[[Path], Path], fresh: bool, message: str
) -> None:
    """Before the fix ``--results jobs.yaml --fresh`` truncated the job file, and a symlink
    was followed to truncate its target."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file({"alice": 3}))
    results = make(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.is_fifo()}
    async with Simulator(accounts_of({"alice": 3})) as sim:
        run = await run_engine(
            *follow_run(jobs, sim), "--results", str(results),
            *(["--fresh"] if fresh else []), env=engine_env({"alice": 3}), workdir=tmp_path,
            timeout=20,
        )  # fmt: skip
    assert run.code == 2, run.output
    assert message in run.err and "nothing sent" in run.err
    assert sim.arrivals == []
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path.name} was changed"


# --- 5. A stop while the job file loads sends nothing ----------------------------------------

#: A full burst at the start: 20 keys, 10 jobs each.
BURST = {f"k{n:02d}": 10 for n in range(20)}


class FifoFeeder:
    """The job file as a FIFO: the engine's every read of it waits for the test to open the
    other end, so the test knows the moment loading starts, and no fixed delay guesses it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path

    async def opened(self) -> int:
        """Wait until the engine opens the file to read it; the writing end."""
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, os.open, self.path, os.O_WRONLY)
        try:
            return await asyncio.wait_for(asyncio.shield(opening), PROCESS_TIMEOUT)
        except BaseException:
            # Release the thread still blocked in open(): a reader lets it through.
            reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.close(await opening)
            os.close(reader)
            raise

    @staticmethod
    def write(fd: int, data: bytes) -> None:
        with os.fdopen(fd, "wb") as file:
            file.write(data)


@pytest.mark.parametrize(
    ("command", "stop"),
    [("schedule", True), ("schedule", False), ("run", True)],
    ids=["schedule-stopped", "schedule-not-stopped", "run-stopped"],
)
async def test_a_stop_while_the_job_file_loads_sends_nothing(
    tmp_path: Path, command: str, stop: bool
) -> None:
    """Before the fix SIGTERM while ``schedule`` loaded a firing's file still let a full
    burst go (20 keys x 10). ``schedule --once`` reads the file twice, at start and for the
    firing: the signal comes while the firing's read is under way. Not stopped, the same
    firing sends every job, so the setup would send."""
    text = job_file(BURST)
    if command == "schedule":
        # A literal secret: its warning on stderr says the first read is over.
        text = text.replace("${XT_K00_SECRET_KEY}", secret_of("k00"))
        text += "schedule:\n  cron: '* * * * *'\n"
    jobs = FifoFeeder(tmp_path / "jobs.yaml")
    async with Simulator(accounts_of(BURST)) as sim:
        args = (command, str(jobs.path), "--base-url", sim.base_url or "")
        once = ["--once"] if command == "schedule" else []
        process = await start_piped(*args, *once, env=engine_env(BURST))
        try:
            if command == "schedule":
                jobs.write(await jobs.opened(), text.encode())
                assert process.stderr is not None
                line = await asyncio.wait_for(process.stderr.readline(), PROCESS_TIMEOUT)
                assert b"secret_key is written literally" in line, line
            fd = await jobs.opened()  # the read that the firing, or the run, goes by
            if stop:
                process.send_signal(signal.SIGTERM)
            jobs.write(fd, text.encode())
            out, err = await asyncio.wait_for(process.communicate(), PROCESS_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = (out + err).decode(errors="replace")
    if not stop:
        assert process.returncode == 0, output
        assert len([a for a in sim.arrivals if a.path in FOLLOW_PATHS]) == 200
        return
    assert process.returncode == 130, output
    assert sim.arrivals == []
    assert "Traceback" not in output


# --- 11. A results file that starts with a byte-order mark -----------------------------------


def ok_line(job: FollowJob) -> JobResult:
    return JobResult(
        job=job.id, account=job.account, leader_field="leaderOrderId", leader_id=job.leader_id,
        status="ok", rc=0, mc="SUCCESS", http_status=200, attempts=1, error=None,
        latency_ms=1.0, finished_at="2026-11-25T10:00:00.000Z",
    )  # fmt: skip


async def test_a_results_file_starting_with_a_bom_is_read_from_its_first_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix the first line was skipped as torn, and its job sent again."""
    campaign = support.make_campaign({"alice": 3}, tmp_path)
    first = campaign.jobs[0]
    results = tmp_path / "r.jsonl"
    results.write_bytes(b"\xef\xbb\xbf" + ok_line(first).to_json().encode() + b"\n")
    async with exchange(campaign) as (sim, campaign):
        stats = await launch_campaign(campaign, LaunchOptions(results=results))
    assert stats.skipped == 1 and stats.ok == 2
    assert first.leader_id not in {a.leader_id for a in sim.arrivals}
    assert len(sim.arrivals) == 2
    assert "skipped a line" not in capsys.readouterr().err


# --- 12. SIGHUP, the terminal closed ----------------------------------------------------------


async def test_sighup_stops_like_sigterm_recording_the_requests_in_flight(tmp_path: Path) -> None:
    """Before the fix SIGHUP killed the engine at once: 20 sent, 6 recorded."""
    accounts = {"alice": 30}
    jobs, results = tmp_path / "jobs.yaml", tmp_path / "r.jsonl"
    jobs.write_text(job_file(accounts))
    out, err = tmp_path / "out", tmp_path / "err"
    async with Simulator(accounts_of(accounts), SimConfig(latency=0.3)) as sim:
        process = await spawn(
            *follow_run(jobs, sim), "--results", str(results),
            env=engine_env(accounts), out=out, err=err,
        )  # fmt: skip
        await sim.wait_for_arrivals(10)
        process.send_signal(signal.SIGHUP)
        finished = await finish(process, out, err, timeout=20)
        arrivals = len(sim.arrivals)
    assert finished.code == 130, finished.output
    assert "stopping: no new requests" in finished.err
    assert arrivals == 10
    lines = by_job(results)
    assert len(lines) == 10 and {line["status"] for line in lines.values()} == {"ok"}


# --- 15. A reader of stdout that goes away early ----------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
async def test_a_stdout_closed_early_changes_neither_the_run_nor_its_exit_code(
    tmp_path: Path, dry_run: bool
) -> None:
    """``run ... | head -1`` where head has gone before the summary comes: the pipe's reading
    end is closed before the engine writes a byte, so every write to stdout fails."""
    accounts = {"alice": 12}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(accounts))
    reader, writer = os.pipe()
    os.close(reader)
    try:
        async with Simulator(accounts_of(accounts)) as sim:
            with (tmp_path / "err").open("wb") as err:
                process = await asyncio.create_subprocess_exec(
                    *ENGINE, *follow_run(jobs, sim), *(["--dry-run"] if dry_run else []),
                    stdin=asyncio.subprocess.DEVNULL, stdout=writer, stderr=err,
                    env=engine_env(accounts),
                )  # fmt: skip
            os.close(writer)
            writer = -1
            code = await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)
    finally:
        if writer >= 0:
            os.close(writer)
    stderr = (tmp_path / "err").read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    if dry_run:
        assert "dry run: 12 requests shown, none sent" in stderr
        assert sim.arrivals == []
    else:
        assert len(ok_jobs(tmp_path / "jobs.results.jsonl")) == 12
        assert {a.api_key for a in sim.arrivals} == {key_of("alice")}
        assert len(sim.arrivals) == 12
