"""Scheduled campaigns: ``run`` at ``schedule.at``, ``schedule`` on ``schedule.cron``.

Time is driven, not waited for: under ``@pytest.mark.looptime`` the event loop's clock
jumps to the next timer, and the scheduler reads a clock that follows it from a fixed
start. Each test proves what was sent by what the simulator on loopback saw arrive.

The runner reads the same clock (``LaunchOptions.clock``) for ``not_before`` and for the
``finished_at`` it records.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from engine import jobfile
from engine.campaign import Schedule
from engine.cli import main
from engine.clock import Clock
from engine.launch import LaunchOptions
from engine.results import ResultLog
from engine.schedule import Scheduler, next_firing, start_at
from engine.simulator import SimConfig, Simulator
from tests.support import (
    BASE_LEADER,
    WriteJobs,
    accounts_of,
    engine_env,
    last_lines,
    outcome_lines,
    secret_of,
    secret_var,
    start_piped,
)

START = datetime(2020, 1, 1, 8, 59, 30, tzinfo=timezone.utc)
ACCOUNTS = accounts_of(["alice"])


def setup(base_url: str, schedule: str) -> str:
    """The job file's other keys, after alice's jobs; a timeout of 300 s outlasts the
    slowest answer these tests drive the clock through (150 s)."""
    return f"base_url: {base_url}\nsettings:\n  timeout: 300\n{schedule}\n"


def at(moment: datetime) -> str:
    return f"schedule:\n  at: {moment.isoformat()}"


def cron(expression: str) -> str:
    return f'schedule:\n  cron: "{expression}"'


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def loop_clock(start: datetime) -> Clock:
    """Wall time that follows the event loop's (fake, under looptime) clock from ``start``."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    return lambda: start + timedelta(seconds=loop.time() - origin)


async def sleep_until(clock: Clock, moment: datetime) -> None:
    await asyncio.sleep((moment - clock()).total_seconds())


def followed(sim: Simulator) -> list[int]:
    """Leader ids accepted, in order of arrival: a repeat would be a follow sent twice."""
    return [a.leader_id - BASE_LEADER for a in sim.arrivals if a.mc == "SUCCESS" and a.leader_id]


class ScheduleRun:
    """A ``Scheduler`` on ``path`` with its output captured."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.results = path.with_suffix(".results.jsonl")
        self.scheduler = Scheduler(
            lambda: jobfile.load(path),
            jobfile.load(path),
            LaunchOptions(results=self.results, clock=clock),
            Console(file=self.out, width=200),
            stream=self.err,
        )

    def start(self, *, once: bool = False) -> asyncio.Task[int]:
        return asyncio.create_task(self.scheduler.run(once=once))

    def lines(self) -> list[dict[str, Any]]:
        return outcome_lines(self.results)


async def terminate(task: asyncio.Task[int]) -> int:
    """SIGTERM to this process, as systemd would send it; the scheduler's exit code."""
    os.kill(os.getpid(), signal.SIGTERM)
    return await asyncio.wait_for(task, 30)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(secret_var("alice"), secret_of("alice"))


# Firing times


def test_cron_is_read_in_its_time_zone_across_daylight_saving() -> None:
    paris = Schedule(cron="0 9 * * *", timezone="Europe/Paris")
    spring = [datetime(2026, 3, 28, 8, tzinfo=timezone.utc)]
    autumn = [datetime(2026, 10, 24, 7, tzinfo=timezone.utc)]
    for firings in (spring, autumn):
        firings.append(next_firing(paris, firings[-1]))
    # 09:00 in Paris each day: 08:00 UTC in winter time, 07:00 UTC in summer time.
    assert spring[1] == datetime(2026, 3, 29, 7, tzinfo=timezone.utc)
    assert autumn[1] == datetime(2026, 10, 25, 8, tzinfo=timezone.utc)
    every = Schedule(cron="*/15 * * * *")
    assert next_firing(every, START) == START.replace(minute=0, second=0, hour=9)
    assert next_firing(every, START.replace(minute=15, second=0)).minute == 30  # strictly after


# run: schedule.at and not_before


@pytest.mark.looptime
async def test_at_in_the_near_future_sends_nothing_before_it(
    tmp_path: Path, write_jobs: WriteJobs
) -> None:
    clock = loop_clock(START)
    start = START + timedelta(seconds=90)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs({"alice": 3}, extra=setup(sim.base_url or "", at(start)))
        campaign = jobfile.load(path)
        assert campaign.schedule is not None and campaign.schedule.at == start
        err = io.StringIO()
        options = LaunchOptions(results=tmp_path / "r.jsonl", clock=clock)
        console = Console(file=io.StringIO())
        run = asyncio.create_task(start_at(campaign, options, console, start, stream=err))
        await sleep_until(clock, start - timedelta(seconds=1))
        assert sim.arrivals == []
        assert f"starting at {iso(start)}, in 1m 30s" in err.getvalue()
        assert await run == 0
    assert clock() >= start
    assert followed(sim) == [0, 1, 2]


@pytest.mark.looptime
async def test_not_before_jobs_stay_back_while_others_go(
    tmp_path: Path, write_jobs: WriteJobs
) -> None:
    clock = loop_clock(START)
    hold = START + timedelta(minutes=5)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs(
            {"alice": 4},
            extra=setup(sim.base_url or "", ""),
            not_before={BASE_LEADER + 1: hold, BASE_LEADER + 3: hold},
        )
        options = LaunchOptions(results=tmp_path / "r.jsonl", clock=clock)
        console = Console(file=io.StringIO())
        run = asyncio.create_task(
            start_at(jobfile.load(path), options, console, None, stream=io.StringIO())
        )
        await sleep_until(clock, hold - timedelta(seconds=1))
        assert sorted(followed(sim)) == [0, 2]
        assert await run == 0
    assert sorted(followed(sim)) == [0, 1, 2, 3]
    lines, _ = last_lines(tmp_path / "r.jsonl")
    finished = {
        line["leaderOrderId"] - BASE_LEADER: datetime.fromisoformat(
            line["finished_at"][:-1] + "+00:00"
        )
        for line in lines.values()
    }
    assert all(finished[n] < hold for n in (0, 2))
    assert all(finished[n] >= hold for n in (1, 3))


# schedule: firings


@pytest.mark.looptime
async def test_cron_campaign_sends_each_follow_once_across_three_firings(
    write_jobs: WriteJobs,
) -> None:
    clock = loop_clock(START)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs({"alice": 2}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        schedule = ScheduleRun(path, clock)
        task = schedule.start()
        await sleep_until(clock, START.replace(hour=9, minute=5))
        assert followed(sim) == [0, 1]
        write_jobs({"alice": 4}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        await sleep_until(clock, START.replace(hour=9, minute=20))
        assert followed(sim) == [0, 1, 2, 3]
        write_jobs({"alice": 5}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        await sleep_until(clock, START.replace(hour=9, minute=35))
        assert await terminate(task) == 130
    assert followed(sim) == [0, 1, 2, 3, 4]
    assert len(sim.arrivals) == 5
    assert [line["status"] for line in schedule.lines()] == ["ok"] * 5
    out = schedule.out.getvalue()
    for minute in ("00", "15", "30"):
        assert f"firing 2020-01-01T09:{minute}:00Z" in out
    assert "skipping 2 jobs already ok" in schedule.err.getvalue()
    assert "stopped while waiting for the next firing: nothing sent" in schedule.err.getvalue()


@pytest.mark.looptime
async def test_a_not_before_after_the_next_firing_waits_for_a_later_firing(
    write_jobs: WriteJobs,
) -> None:
    clock = loop_clock(START)
    later = START.replace(hour=9, minute=20, second=0)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs(
            {"alice": 3},
            extra=setup(sim.base_url or "", cron("*/15 * * * *")),
            not_before={BASE_LEADER + 1: later},
        )
        schedule = ScheduleRun(path, clock)
        task = schedule.start()
        await sleep_until(clock, START.replace(hour=9, minute=5))
        assert followed(sim) == [0, 2]
        assert "1 jobs have a not_before at or after the next firing" in schedule.err.getvalue()
        await sleep_until(clock, START.replace(hour=9, minute=20))
        assert followed(sim) == [0, 2, 1]  # 09:20 is before the firing after 09:15
        assert await terminate(task) == 130


@pytest.mark.looptime
async def test_an_invalid_file_skips_its_firing_and_the_next_one_runs(
    write_jobs: WriteJobs,
) -> None:
    clock = loop_clock(START)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs({"alice": 2}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        schedule = ScheduleRun(path, clock)
        task = schedule.start()
        await sleep_until(clock, START.replace(hour=9, minute=5))
        path.write_text(path.read_text().replace("followVal: 0.5", "followVal: -1"))
        await sleep_until(clock, START.replace(hour=9, minute=20))
        err = schedule.err.getvalue()
        assert f"firing 2020-01-01T09:15:00Z skipped: {path} cannot be run; nothing sent" in err
        assert f"{path}:12: job alice:{BASE_LEADER} (jobs[0]): followVal:" in err
        write_jobs({"alice": 3}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        await sleep_until(clock, START.replace(hour=9, minute=35))
        assert await terminate(task) == 130
    assert followed(sim) == [0, 1, 2]
    assert "firing 2020-01-01T09:30:00Z" in schedule.out.getvalue()


@pytest.mark.looptime
async def test_an_overlapping_firing_is_skipped_and_logged_not_stacked(
    write_jobs: WriteJobs,
) -> None:
    clock = loop_clock(START)
    async with Simulator(ACCOUNTS, SimConfig(latency=150)) as sim:
        path = write_jobs({"alice": 2}, extra=setup(sim.base_url or "", cron("*/2 * * * *")))
        schedule = ScheduleRun(path, clock)
        task = schedule.start()
        await sleep_until(clock, START.replace(hour=9, minute=5))
        assert await terminate(task) == 130
    # The 09:00 firing's answers came at 09:02:30; 09:02 came meanwhile and was not run.
    assert (
        "2020-01-01T09:02:30Z skipped the firing at 2020-01-01T09:02:00Z: "
        "the firing at 2020-01-01T09:00:00Z was still running"
    ) in schedule.err.getvalue()
    out = schedule.out.getvalue()
    assert [line for line in out.splitlines() if line.startswith("firing")] == [
        "firing 2020-01-01T09:00:00Z",
        "firing 2020-01-01T09:04:00Z",
    ]
    assert followed(sim) == [0, 1]


@pytest.mark.looptime
async def test_sigterm_during_a_firing_stops_cleanly_with_results_recorded(
    write_jobs: WriteJobs,
) -> None:
    clock = loop_clock(START)
    async with Simulator(ACCOUNTS, SimConfig(latency=3)) as sim:
        path = write_jobs({"alice": 25}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        schedule = ScheduleRun(path, clock)
        task = schedule.start()
        await sim.wait_for_arrivals(10)  # a full second's worth, answers 3 s away
        assert await terminate(task) == 130
    assert len(sim.arrivals) == 10
    lines = schedule.lines()
    assert sorted(line["leaderOrderId"] - BASE_LEADER for line in lines) == followed(sim)
    assert {line["status"] for line in lines} == {"ok"}
    assert "25 jobs: 10 ok, 0 failed; 15 not started" in schedule.out.getvalue()
    assert "stopped during the firing at 2020-01-01T09:00:00Z" in schedule.err.getvalue()


@pytest.mark.looptime
async def test_once_waits_for_the_next_firing_runs_it_and_exits(write_jobs: WriteJobs) -> None:
    clock = loop_clock(START)
    async with Simulator(ACCOUNTS) as sim:
        path = write_jobs({"alice": 2}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        schedule = ScheduleRun(path, clock)
        assert await schedule.start(once=True) == 0
    assert clock() - START == pytest.approx(timedelta(seconds=30), abs=timedelta(seconds=1))
    assert followed(sim) == [0, 1]


@pytest.mark.looptime
async def test_once_started_by_system_cron_runs_the_firing_due_now(write_jobs: WriteJobs) -> None:
    """System cron starts it a moment after the minute: that firing runs now, exit 1 as
    for run when a job fails."""
    clock = loop_clock(START.replace(hour=9, minute=15, second=0, microsecond=400_000))
    async with Simulator(ACCOUNTS) as sim:
        sim.script(BASE_LEADER + 1, ["COPY_TRADE_SPOT_006"])
        path = write_jobs({"alice": 2}, extra=setup(sim.base_url or "", cron("*/15 * * * *")))
        schedule = ScheduleRun(path, clock)
        assert await schedule.start(once=True) == 1
    assert clock().minute == 15
    assert [line["status"] for line in schedule.lines()] == ["ok", "failed"]
    assert "firing 2020-01-01T09:15:00Z" in schedule.out.getvalue()


# The command line


def test_run_refuses_a_cron_file_and_points_to_schedule(
    cli: CliRunner, write_jobs: WriteJobs
) -> None:
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", cron("0 9 * * *")))
    result = cli.invoke(main, ["run", str(path), "--simulate"])
    assert result.exit_code == 2
    assert "`follow-engine schedule`" in result.stderr and "--now" in result.stderr
    assert not path.with_suffix(".results.jsonl").exists()
    now = cli.invoke(main, ["run", str(path), "--simulate", "--now", "--sim-latency", "0"])
    assert now.exit_code == 0, now.output
    assert "1 jobs: 1 ok, 0 failed" in now.stdout


def test_run_with_a_past_at_starts_now(cli: CliRunner, write_jobs: WriteJobs) -> None:
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", at(START)))
    result = cli.invoke(main, ["run", str(path), "--simulate", "--sim-latency", "0"])
    assert result.exit_code == 0, result.output
    assert "schedule.at 2020-01-01T08:59:30Z has passed: starting now" in result.stderr


@pytest.mark.parametrize(
    ("schedule", "hint"), [("", "add schedule:"), (at(START), "use `follow-engine run`")]
)
def test_schedule_needs_a_cron_file(
    cli: CliRunner, write_jobs: WriteJobs, schedule: str, hint: str
) -> None:
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", schedule))
    result = cli.invoke(main, ["schedule", str(path), "--simulate"])
    assert result.exit_code == 2
    assert "no schedule.cron" in result.stderr and hint in result.stderr


def test_bad_input_fails_at_once_even_with_a_start_time(
    cli: CliRunner, write_jobs: WriteJobs
) -> None:
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", at(future)))
    path.write_text(path.read_text().replace("followVal: 0.5", "followVal: zero"))
    assert cli.invoke(main, ["run", str(path)]).exit_code == 2
    path.write_text(path.read_text().replace("followVal: zero", "followVal: 1"))
    plain = cli.invoke(main, ["run", str(path), "--base-url", "http://example.com"])
    assert plain.exit_code == 2 and "--insecure" in plain.stderr


def test_now_ignores_a_future_at(cli: CliRunner, write_jobs: WriteJobs) -> None:
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", at(future)))
    result = cli.invoke(main, ["run", str(path), "--simulate", "--now", "--sim-latency", "0"])
    assert result.exit_code == 0, result.output
    assert "starting at" not in result.stderr
    assert "1 jobs: 1 ok, 0 failed" in result.stdout


def test_a_results_file_in_use_fails_at_once_not_at_the_start(
    cli: CliRunner, write_jobs: WriteJobs
) -> None:
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    path = write_jobs({"alice": 1}, extra=setup("http://127.0.0.1:9", at(future)))
    other = ResultLog(path.with_suffix(".results.jsonl"))
    other.open()
    try:
        result = cli.invoke(main, ["run", str(path), "--simulate"])
    finally:
        other.close()
    assert result.exit_code == 2
    assert "in use by another run" in result.stderr and "nothing sent" in result.stderr


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await start_piped(*args, env=engine_env(["alice"]))


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    """Stderr up to the first line holding ``text``: the command is ready for a signal."""
    assert process.stderr is not None
    seen = ""
    while text not in seen:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, f"exited before printing {text!r}: {seen}"
        seen += line.decode()
    return seen


@pytest.mark.parametrize(
    ("command", "schedule", "ready", "sig"),
    [
        ("run", "at", "starting at", signal.SIGINT),
        ("schedule", "cron", "next firing at", signal.SIGTERM),
    ],
)
async def test_a_signal_while_waiting_exits_130_with_nothing_sent(
    write_jobs: WriteJobs, command: str, schedule: str, ready: str, sig: signal.Signals
) -> None:
    future = datetime.now(timezone.utc) + timedelta(hours=2)
    when = at(future) if schedule == "at" else cron(f"{future.minute} {future.hour} * * *")
    path = write_jobs({"alice": 2}, extra=setup("http://127.0.0.1:9", when))
    process = await start_cli(command, str(path), "--simulate")
    await read_until(process, ready)
    process.send_signal(sig)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    assert "nothing sent" in err.decode()
    assert path.with_suffix(".results.jsonl").read_text() == ""


async def test_schedule_once_under_system_cron_runs_now(write_jobs: WriteJobs) -> None:
    """Every minute: started at any moment, a firing is due within the last minute."""
    path = write_jobs({"alice": 3}, extra=setup("http://127.0.0.1:9", cron("* * * * *")))
    process = await start_cli("schedule", str(path), "--once", "--simulate", "--sim-latency", "0")
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert "3 jobs: 3 ok, 0 failed" in out.decode()
    lines = outcome_lines(path.with_suffix(".results.jsonl"))
    assert [line["status"] for line in lines] == ["ok"] * 3
