"""Launching one campaign, start to end: results file, simulator, client, worker pool,
signals, and the exit code a person or a script gets.

The CLI and the scheduler both run campaigns through ``launch_campaign`` (or
``launch_and_report``, which adds progress, summary and exit code); nothing else here
prints except the stop notice a person needs when pressing Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from engine.campaign import Campaign, FollowJob
from engine.client import XtClient
from engine.clock import Clock, iso_utc, wall_clock
from engine.collector import CampaignStats, Collector
from engine.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from engine.openfiles import SPARE_FILES, fit_open_files
from engine.past import PastStates
from engine.plan import DryRun, dry_run, pending
from engine.pool import WorkerPool, local_limits
from engine.progress import ProgressDisplay
from engine.reconcile import Reader, reconcile, reconciled_line, unread_note
from engine.results import CampaignLock, JobResult, ResultLog
from engine.signals import StopSignals
from engine.sources import JobProgress, MemorySource

if TYPE_CHECKING:
    from rich.console import Console

    from engine.simulator import SimConfig

__all__ = [
    "MAX_LINE_WARNINGS",
    "SPARE_FILES",
    "DryRun",
    "LaunchOptions",
    "default_results_path",
    "dry_run",
    "fit_open_files",
    "launch_and_report",
    "launch_campaign",
    "open_records",
    "pending",
    "read_exchange",
    "report",
    "show_progress",
    "watch_records",
]

T = TypeVar("T")

#: Skipped lines of the results file named one by one; a file full of them gets a count.
MAX_LINE_WARNINGS = 20
#: Seconds between checks that the results and lock files are still in place.
WATCH_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    results: Path
    fresh: bool = False
    #: Run against a built-in simulator on loopback, configured so; the limit it enforces
    #: is always that of the campaign's API (read afresh at each firing of a schedule).
    simulate: SimConfig | None = None
    on_result: Callable[[JobResult], None] | None = None
    on_start: Callable[[CampaignStats], None] | None = None
    #: What time it is: for ``schedule.at``, cron firings, ``not_before`` and ``finished_at``.
    clock: Clock = wall_clock
    #: The command's stop signals, installed before it loaded anything; None: the run
    #: installs its own for its duration.
    signals: StopSignals | None = None
    #: Check XT's clock and every account's key and role before the first follow.
    preflight: bool = False


def default_results_path(jobs_file: Path) -> Path:
    return jobs_file.with_suffix(".results.jsonl")


def open_records(
    jobs_file: Path, results: Path, fresh: bool
) -> tuple[CampaignLock, ResultLog, PastStates]:
    """Lock the campaign and its results file, and read what earlier runs recorded (skipped
    lines warned about on stderr). Raises ``ResultsFileError`` when either cannot be used."""
    lock = CampaignLock(jobs_file)
    lock.acquire()
    log = ResultLog(results)
    try:
        past = log.open(fresh=fresh, jobs_file=jobs_file)
    except BaseException:
        lock.release()
        raise
    for warning in past.warnings[:MAX_LINE_WARNINGS]:
        print(f"warning: {warning}", file=sys.stderr)
    if (more := len(past.warnings) - MAX_LINE_WARNINGS) > 0:
        print(f"warning: {results}: {more} more lines skipped", file=sys.stderr)
    return lock, log, past


async def launch_campaign(campaign: Campaign, options: LaunchOptions) -> CampaignStats:
    """Run every job not already ok in the results file. Raises ``ResultsFileError``
    before sending anything when the results file cannot be used, or another run of the
    campaign is sending."""
    lock, log, past = open_records(campaign.path, options.results, options.fresh)
    try:
        done, uncertain = past.ok_jobs(), past.uncertain_jobs()
        jobs = pending(campaign.jobs, done)
        # Never more in flight than jobs to run; an in-process simulator holds the other end
        # of every connection.
        wanted = min(campaign.settings.concurrency, max(1, len(jobs)))
        fits, fewer = fit_open_files(wanted, 1 if options.simulate is None else 2)
        if fewer is not None:
            print(fewer, file=sys.stderr)
            campaign = replace(campaign, settings=replace(campaign.settings, concurrency=fits))
        collector = Collector(log, on_result=options.on_result)
        collector.stats.skipped = len(campaign.jobs) - len(jobs)
        # Known before anything starts, so that progress shows the whole run from the first.
        collector.stats.total = len(jobs)
        async with AsyncExitStack() as stack:
            # Entered first so that it is left last: no moment of the run without a handler.
            signals = options.signals or stack.enter_context(StopSignals())
            stack.callback(signals.attach, None)
            base_url = campaign.base_url
            if options.simulate is not None:
                from engine.simulator import Simulator  # aiohttp's server: only when simulating

                api = campaign.settings.api
                simulator = Simulator(
                    {a.api_key: a.secret_key for a in campaign.accounts.values()},
                    replace(options.simulate, rate_limit=api.rate_limit, per_ip=api.per_ip),
                )
                base_url = await simulator.start()
                stack.push_async_callback(simulator.close)
            settings = campaign.settings
            client = XtClient(
                base_url,
                settings.api,
                timeout=settings.timeout,
                recv_window_ms=settings.recv_window_ms,
                headers=settings.headers,
            )
            stack.push_async_callback(client.close)
            limits = local_limits(settings)
            pool = WorkerPool(
                campaign,
                client,
                collector,
                clock=options.clock,
                halted=lambda: signals.requested,
                limits=limits,
            )
            signals.attach(pool)
            watch = asyncio.create_task(watch_records(log, lock, collector, pool.stop))
            stack.callback(watch.cancel)
            if options.on_start is not None:
                options.on_start(collector.stats)
            reader = Reader(client, limits, settings, halted=lambda: signals.requested)
            if options.preflight and jobs and not signals.requested:
                await _preflight(client, reader, campaign, jobs, pool)
            work = await _settle_uncertain(reader, campaign, jobs, uncertain, collector, options)
            stats = await pool.serve(MemorySource(work, options.clock))
            stats.interrupted = signals.requested
            return stats
    finally:
        log.close()
        lock.release()


async def read_exchange(campaign: Campaign, work: Callable[[Reader], Awaitable[T]]) -> T:
    """``work`` done with a ``Reader`` of the campaign's exchange, limited as a run is."""
    settings = campaign.settings
    async with XtClient(
        campaign.base_url,
        settings.api,
        timeout=settings.timeout,
        recv_window_ms=settings.recv_window_ms,
        headers=settings.headers,
    ) as client:
        return await work(Reader(client, local_limits(settings), settings))


async def _preflight(
    client: XtClient, reader: Reader, campaign: Campaign, jobs: list[FollowJob], pool: WorkerPool
) -> None:
    """Check XT's clock and the accounts of ``jobs``; the jobs of an account that fails fail
    unsent, with the reason said once here."""
    from engine.preflight import preflight

    names = dict.fromkeys(job.account for job in jobs)
    report = await preflight(client, reader, (campaign.accounts[name] for name in names))
    if (note := report.clock_note()) is not None:
        print(f"check: {note}", file=sys.stderr, flush=True)
    for item in report.accounts:
        if item.unchecked is not None:
            note = f"could not check account {item.account} ({item.unchecked}): going ahead"
            print(f"check: {note}", file=sys.stderr, flush=True)
    for account, problem in report.problems.items():
        print(f"check: {problem.removeprefix('not sent: ')}", file=sys.stderr, flush=True)
        pool.disable_account(account, problem)


async def _settle_uncertain(
    reader: Reader,
    campaign: Campaign,
    jobs: list[FollowJob],
    uncertain: set[str],
    collector: Collector,
    options: LaunchOptions,
) -> list[FollowJob | JobProgress]:
    """The work of the run: ``jobs``, the exchange asked first where the API can say (v1)
    about those an earlier run left uncertain, and about every unfollow (a leader no longer
    followed needs no request). The ones found in place go on record as ok, unsent. Under
    v4, uncertain jobs are sent again, flagged ambiguous."""
    api = campaign.settings.api

    def ask(job: FollowJob) -> bool:
        return job.id in uncertain or (api.readable and job.action == "unfollow")

    settled = [job for job in jobs if ask(job)]
    work: list[FollowJob | JobProgress] = [job for job in jobs if not ask(job)]
    if not settled:
        return work
    if not api.readable:
        return work + [JobProgress(job, sent=True, ambiguous=True) for job in settled]
    found = await reconcile(reader, settled, campaign.accounts)
    for account, reason in found.unread.items():
        print(f"warning: {unread_note(account, reason)}", file=sys.stderr, flush=True)
    collector.stats.reconciled = len(found.in_place)
    for job in found.in_place:
        line = reconciled_line(job, api.leader_field, iso_utc(options.clock(), "milliseconds"))
        if not collector.finish(line):
            break
    return work + list(found.again)


async def watch_records(
    log: ResultLog, lock: CampaignLock, collector: Collector, stop: Callable[[], None]
) -> None:
    """``stop`` within ``WATCH_INTERVAL`` of the results file or the campaign's lock file
    being deleted or replaced, even while no result comes to be written: what the exchange
    accepts from then on could not be recorded, or a second run could start."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        if not log.still_there():
            lost = f"{log.path}: the results file was deleted or replaced"
        elif not lock.held():
            lost = f"{lock.path}: the campaign's lock file was deleted or replaced"
        else:
            continue
        collector.lost(lost)
        stop()
        return


async def launch_and_report(
    campaign: Campaign, options: LaunchOptions, console: Console | None, stream: TextIO
) -> int:
    """One run as a person sees it, for ``run`` and for each firing of ``schedule``: progress
    on ``stream``, the summary on ``console`` (None: one on stdout, made for the summary);
    the exit code. Raises ``ResultsFileError``, as ``launch_campaign`` does, before anything
    is sent."""
    display: ProgressDisplay | None = None

    def on_start(stats: CampaignStats) -> None:
        nonlocal display
        display = show_progress(stats, options.results, stream)

    def on_result(result: JobResult) -> None:
        if display is not None:
            display.on_result(result)

    options = replace(options, on_start=on_start, on_result=on_result)
    try:
        stats = await launch_campaign(campaign, options)
    finally:
        if display is not None:
            display.close()
    return report(stats, campaign.settings.rate_limit, options.results, console, stream)


def show_progress(stats: CampaignStats, results: Path, stream: TextIO) -> ProgressDisplay:
    """The progress display of a campaign starting, after a word on the jobs skipped."""
    if stats.skipped:
        print(f"skipping {stats.skipped} jobs already ok in {results}", file=stream, flush=True)
    display = ProgressDisplay(stats, stream)
    display.start()
    return display


def report(
    stats: CampaignStats, rate_limit: float, results: Path, console: Console | None, stream: TextIO
) -> int:
    """The summary of a campaign that ended, what went wrong, and the exit code. Rich is
    imported here, after the last answer, not before the first request."""
    from rich.console import Console

    from engine.report import print_summary

    console = console or Console(highlight=False)
    print_summary(stats, rate_limit, console)
    console.print(f"results: {results}", markup=False, highlight=False, soft_wrap=True)
    if stats.write_error:
        print(
            f"error: {stats.write_error}; stopped sending. Unrecorded results follow:", file=stream
        )
        for result in stats.unrecorded:
            print(result.to_json(), file=stream)
        return EXIT_FAILED
    for reason in (stats.stopped_by, stats.internal_error):
        if reason:
            print(f"error: {reason}", file=stream)
    if stats.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if stats.ok == stats.total else EXIT_FAILED
