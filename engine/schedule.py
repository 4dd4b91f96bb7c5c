"""When campaigns run: ``run`` at the file's ``schedule.at``, ``schedule`` on its ``cron``.

Firing times come from croniter, computed in the schedule's time zone so that
``0 9 * * *`` stays at 09:00 local across daylight-saving changes. Waiting reads an
injectable clock in short steps: tests drive time, and a wall clock that jumps (NTP,
a suspended laptop) is followed. Each firing re-reads the job file and runs, through
``launch_campaign``, the jobs not yet ok in the results file, so a recurring campaign
sends only what is new. Firings never overlap: one due while the previous one still
runs is skipped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from engine.campaign import Campaign, Schedule
from engine.clock import Clock, iso_utc
from engine.exits import EXIT_INTERRUPTED, EXIT_USAGE
from engine.jobfile import JobFileError
from engine.launch import LaunchOptions, launch_and_report
from engine.results import CampaignLock, ResultLog, ResultsFileError
from engine.signals import StopSignals
from engine.urls import InsecureTransportError

if TYPE_CHECKING:
    from rich.console import Console

    from engine.report import Countdown

#: A firing missed by less than this still runs: system cron or a systemd timer starts
#: ``schedule --once`` a moment after the minute it fires at.
MISFIRE_GRACE = timedelta(seconds=60)

#: Reads the job file with the command line applied; raises ``JobFileError`` or
#: ``InsecureTransportError`` when the file cannot be run.
Loader = Callable[[], Campaign]


def next_firing(schedule: Schedule, after: datetime) -> datetime:
    """The first firing of ``schedule.cron`` strictly after ``after``, in UTC."""
    assert schedule.cron is not None, "a cron schedule"
    from engine import cron  # croniter: only for a cron schedule

    return cron.next_firing(schedule.cron, schedule.timezone, after)


def check_results(path: Path, jobs_file: Path) -> None:
    """Raise ``ResultsFileError`` now if the results file cannot be used (locked by another
    run, not writable, disk full, the job file itself) or another run of the campaign is
    sending, rather than at a start time hours away."""
    lock = CampaignLock(jobs_file)
    lock.acquire()
    try:
        log = ResultLog(path)
        log.open(jobs_file=jobs_file)
        log.close()
    finally:
        lock.release()


async def wait_until(
    moment: datetime, clock: Clock, stopped: asyncio.Event, countdown: Countdown
) -> bool:
    """Wait for ``moment`` showing ``countdown``; False if ``stopped`` is set first. The clock
    is read again every ``countdown.interval`` seconds, so a wall clock that jumps is followed."""
    try:
        while not stopped.is_set() and (left := (moment - clock()).total_seconds()) > 0:
            countdown.update(left)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopped.wait(), min(left, countdown.interval))
    finally:
        countdown.close()
    return not stopped.is_set()


async def start_at(
    campaign: Campaign,
    options: LaunchOptions,
    console: Console | None,
    start: datetime | None,
    *,
    stream: TextIO | None = None,
) -> int:
    """``follow-engine run``: wait for ``start`` (the file's ``schedule.at``), interruptibly and
    sending nothing meanwhile, then run once; the exit code. ``stream`` [stderr] gets all
    but the summary."""
    stream = stream or sys.stderr
    clock = options.clock
    with _signals_of(options) as options:
        assert options.signals is not None
        if start is not None and start <= clock():
            print(f"schedule.at {iso_utc(start)} has passed: starting now", file=stream, flush=True)
        elif start is not None:
            from engine.report import Countdown

            countdown = Countdown(start, "starting", stream)
            if not await wait_until(start, clock, options.signals.stopped(), countdown):
                print("interrupted while waiting: nothing sent", file=stream, flush=True)
                return EXIT_INTERRUPTED
        return await launch_and_report(campaign, options, console, stream)


@contextlib.contextmanager
def _signals_of(options: LaunchOptions) -> Iterator[LaunchOptions]:
    """``options`` with stop signals: the command's own, or installed here until the end."""
    if options.signals is not None:
        yield options
        return
    with StopSignals() as signals:
        yield dataclasses.replace(options, signals=signals)


class Scheduler:
    """``follow-engine schedule``: fire on the job file's cron until stopped, or once."""

    def __init__(
        self,
        load: Loader,
        first: Campaign,
        options: LaunchOptions,
        console: Console,
        *,
        stream: TextIO | None = None,
    ) -> None:
        """``first`` is the file as checked at start: its cron gives the first firing."""
        assert first.schedule is not None and first.schedule.cron is not None, "a cron campaign"
        self.load = load
        self.path = first.path
        self.schedule = first.schedule
        self.options = options
        self.console = console
        self.clock = options.clock
        self.stream = stream or sys.stderr
        self._warned = set(first.warnings)

    async def run(self, *, once: bool = False) -> int:
        """Fire until SIGINT or SIGTERM, or after one firing when ``once``. The exit code:
        the last firing's, or 130 when stopped."""
        with _signals_of(self.options) as options:
            self.options = options
            assert options.signals is not None
            stopped = options.signals.stopped()
            due = next_firing(self.schedule, self.clock() - MISFIRE_GRACE)
            from engine.report import Countdown

            while True:
                countdown = Countdown(due, "next firing", self.stream)
                if not await wait_until(due, self.clock, stopped, countdown):
                    self._log("stopped while waiting for the next firing: nothing sent")
                    return EXIT_INTERRUPTED
                code = await self._fire(due)
                if code == EXIT_INTERRUPTED or options.signals.requested:
                    self._log(f"stopped during the firing at {iso_utc(due)}")
                    return EXIT_INTERRUPTED
                if once:
                    return code
                due = self._after(due)

    async def _fire(self, due: datetime) -> int:
        """Re-read the file and run what is not yet ok; a file that cannot be run skips the
        firing (exit code 2) and the schedule goes on with the last good cron."""
        when = iso_utc(due)
        try:
            campaign = self.load()
        except (JobFileError, InsecureTransportError) as exc:
            self._log(f"firing {when} skipped: {self.path} cannot be run; nothing sent\n{exc}")
            return EXIT_USAGE
        if campaign.schedule is None or campaign.schedule.cron is None:
            self._log(
                f"firing {when} skipped: {self.path} has no schedule.cron any more; nothing "
                f"sent; keeping {self.schedule.cron!r}"
            )
            return EXIT_USAGE
        self.schedule = campaign.schedule
        self._warn(campaign.warnings)
        upcoming = next_firing(self.schedule, due)
        # A job the runner would hold past the next firing would keep this one running
        # and the next skipped: it waits for a later firing instead.
        jobs = tuple(j for j in campaign.jobs if j.not_before is None or j.not_before < upcoming)
        if len(jobs) < len(campaign.jobs):
            self._log(
                f"{len(campaign.jobs) - len(jobs)} jobs have a not_before at or after the next "
                f"firing ({iso_utc(upcoming)}): left for a later firing"
            )
        self.console.print(f"firing {when}", markup=False, highlight=False)
        try:
            campaign = dataclasses.replace(campaign, jobs=jobs)
            return await launch_and_report(campaign, self.options, self.console, self.stream)
        except ResultsFileError as exc:
            self._log(f"firing {when} skipped: {exc}; nothing sent")
            return EXIT_USAGE

    def _after(self, due: datetime) -> datetime:
        """The first firing after ``due`` still ahead. Those that came while it ran are
        skipped and logged, never stacked."""
        now = self.clock()
        missed: list[datetime] = []
        upcoming = next_firing(self.schedule, due)
        while upcoming <= now:
            missed.append(upcoming)
            upcoming = next_firing(self.schedule, upcoming)
        if missed:
            which = (
                f"the firing at {iso_utc(missed[0])}"
                if len(missed) == 1
                else f"{len(missed)} firings ({iso_utc(missed[0])} to {iso_utc(missed[-1])})"
            )
            self._log(f"skipped {which}: the firing at {iso_utc(due)} was still running")
        return upcoming

    def _warn(self, warnings: Iterable[str]) -> None:
        """Each warning once, not at every firing."""
        for warning in warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                self._log(f"warning: {warning}")

    def _log(self, message: str) -> None:
        print(f"{iso_utc(self.clock())} {message}", file=self.stream, flush=True)
