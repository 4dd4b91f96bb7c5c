"""``follow-engine run JOBS.yaml --redis URL``: submit, then follow the outcomes into the file.

Workers send; this process writes what they record, through ``ResultLog`` and ``Collector``
as ``run`` does (the same lines, each naming its worker; a job's last line wins), with the
same progress, summary and exit codes, until every job it submitted has an outcome. Jobs ok
in the results file are skipped, as ``run`` skips them; jobs ok in Redis but not in the file
are written into it, not sent again. Ctrl-C stops following, not the workers: the next
``run --redis`` writes what they recorded meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import fields
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console

from engine.aio import first_of
from engine.campaign import Campaign, Settings
from engine.campaign_report import add_sends
from engine.collector import CampaignStats, Collector, KeyStats
from engine.launch import LaunchOptions, open_records, report, show_progress, watch_records
from engine.limiter import lane_span
from engine.profiles import LEADER_FIELDS
from engine.redis_store import Store
from engine.results import JobResult
from engine.submit import Submitted, submit

#: Milliseconds one read of the outcome log waits for news.
BLOCK_MS = 500
_FIELDS = tuple(f.name for f in fields(JobResult) if f.name not in ("leader_field", "leader_id"))


def result_from_line(line: str) -> JobResult:
    """The ``JobResult`` a worker recorded as ``line``; its ``to_json`` is ``line`` again."""
    data: dict[str, Any] = json.loads(line)
    leader_field = next(name for name in LEADER_FIELDS if name in data)
    given = {name: data[name] for name in _FIELDS if name in data}
    given["sent_at"] = tuple(given.get("sent_at", ()))
    return JobResult(leader_field=leader_field, leader_id=data[leader_field], **given)


def said_submitted(done: Submitted) -> str:
    line = f"campaign {done.name}: {done.queued} jobs queued"
    if done.again:
        line += f" ({done.again} of them had failed)"
    if done.ok or done.busy:
        line += f"; {done.ok} already ok, {done.busy} already queued or with a worker"
    return line


async def run_followed(
    campaign: Campaign,
    options: LaunchOptions,
    store: Store,
    name: str,
    start: datetime | None,
    console: Console,
    stream: TextIO,
) -> int:
    """Submit the jobs of ``campaign`` not ok in the results file, and write their outcomes
    there as workers record them; the exit code. Raises ``ResultsFileError`` before
    submitting anything when the results file cannot be used."""
    assert options.signals is not None
    lock, log, past = open_records(campaign.path, options.results, options.fresh)
    try:
        ok_here = past.ok_jobs()
        jobs = [job for job in campaign.jobs if job.id not in ok_here]
        done = await submit(store, campaign, jobs, name, start)
        print(said_submitted(done), file=stream, flush=True)
        sends: defaultdict[str, list[float]] = defaultdict(list)

        def on_result(result: JobResult) -> None:
            add_sends(sends, result, per_ip=False)
            display.on_result(result)

        collector = Collector(log, on_result=on_result)
        stats = collector.stats
        stats.skipped, stats.total = len(campaign.jobs) - len(jobs), len(jobs)
        display = show_progress(stats, options.results, stream)
        lost = asyncio.Event()
        watch = asyncio.create_task(watch_records(log, lock, collector, lost.set))
        try:
            waiting = {job.id for job in jobs}
            await _follow(store, done, waiting, collector, options.signals.stopped(), lost)
        finally:
            watch.cancel()
            display.close()
        if lost.is_set():
            print(
                "stopped following; the workers go on, and Redis keeps their outcomes: "
                "run this again to write them",
                file=stream,
            )
        stats.ended = time.monotonic()
        stats.interrupted = options.signals.requested
        _rates_into(stats, sends, campaign.settings)
    finally:
        log.close()
        lock.release()
    return report(stats, campaign.settings.rate_limit, options.results, console, stream)


def _rates_into(stats: CampaignStats, sends: dict[str, list[float]], settings: Settings) -> None:
    """The summary's rate per key, as a run on one machine gives it, from when the workers'
    requests left (``sends``, by account). Under a per-IP limit there is none: the workers'
    addresses are not in the lines."""
    if settings.api.per_ip:
        return
    period = lane_span(settings.rate_limit, 1.0) * (1 + settings.margin)
    for account, times in sends.items():
        counted = stats.keys[account] = KeyStats(account, period)
        for moment in sorted(times):
            counted.sent_at(moment)


async def _follow(
    store: Store,
    done: Submitted,
    waiting: set[str],
    collector: Collector,
    stopped: asyncio.Event,
    lost: asyncio.Event,
) -> None:
    """Record each waiting job's outcome once: those Redis holds now, then those to come,
    until ``stopped``, or the results file or lock ``lost`` (the outcomes stay in Redis)."""

    def record(job: str, line: str) -> None:
        if job in waiting:
            waiting.discard(job)
            collector.finish(result_from_line(line))

    for job, line in (await store.done_lines(done.campaign, sorted(waiting))).items():
        record(job, line)
    after = done.after
    stop = asyncio.ensure_future(first_of(stopped.wait(), lost.wait()))
    try:
        while waiting and not stop.done() and collector.stats.write_error is None:
            news = asyncio.ensure_future(store.outcomes(done.campaign, after, BLOCK_MS))
            await asyncio.wait({news, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not news.done():
                news.cancel()
                break
            for entry, job, line in news.result():
                after = entry
                record(job, line)
    finally:
        stop.cancel()
