"""One campaign run from start to end: results file, simulator, client, runner, signals.

The CLI and the scheduler both run campaigns through ``run_campaign``; nothing
here prints except the stop notice a person needs when pressing Ctrl-C.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from yarl import URL

from engine.campaign import Campaign
from engine.client import PreparedRequest, XtClient
from engine.clock import Clock, wall_clock
from engine.collector import Collector, RunStats
from engine.results import JobResult, ResultLog
from engine.runner import Runner
from engine.simulator import SimConfig, Simulator

#: Skipped lines of the results file named one by one; a file full of them gets a count.
MAX_LINE_WARNINGS = 20
#: Open files a run needs besides its connections: standard streams, the results file,
#: the event loop's own, the simulator's listening socket.
SPARE_FILES = 64


class InsecureTransportError(Exception):
    """Credentials would cross a network in clear text."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    results: Path
    fresh: bool = False
    #: Run against a built-in simulator on loopback, configured so; the limit it enforces
    #: is always that of the campaign's API (read afresh at each firing of a schedule).
    simulate: SimConfig | None = None
    on_result: Callable[[JobResult], None] | None = None
    on_start: Callable[[RunStats], None] | None = None
    #: What time it is: for ``schedule.at``, cron firings, ``not_before`` and ``finished_at``.
    clock: Clock = wall_clock


def default_results_path(jobs_file: Path) -> Path:
    return jobs_file.with_suffix(".results.jsonl")


def check_transport(base_url: str, insecure: bool) -> str | None:
    """Refuse plain http:// beyond loopback unless ``insecure``; return a warning if allowed.

    The host is read as aiohttp will read it (yarl), not by a second parser that might
    see loopback where aiohttp sees another host. A URL yarl cannot read is refused.
    """
    try:
        url = URL(base_url)
        host = url.host
    except ValueError:
        host = None
    if host is None or url.scheme not in ("http", "https"):
        raise InsecureTransportError(
            f"{base_url!r}: not an http(s) URL with a host, such as https://sapi.xt.com"
        )
    if url.scheme == "https" or _is_loopback(host):
        return None
    if not insecure:
        raise InsecureTransportError(
            f"{base_url}: refusing to send API keys and signatures over plain http:// to a "
            "host that is not loopback; use https:// or pass --insecure"
        )
    return f"warning: sending credentials over plain http:// to {host} (--insecure)"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dry_run(campaign: Campaign) -> list[PreparedRequest]:
    """The requests a run would send first, signed now, sent never."""
    settings = campaign.settings
    client = XtClient(campaign.base_url, settings.api, recv_window_ms=settings.recv_window_ms)
    accounts = campaign.accounts
    return [
        client.prepare(accounts[j.account].api_key, accounts[j.account].secret_key, j.params)
        for j in campaign.jobs
    ]


def fit_open_files(concurrency: int, per_request: int = 1) -> tuple[int, str | None]:
    """The concurrency this process can hold open, and a warning when it is less than asked.

    Every request in flight holds a connection, so the open-files soft limit (often 1024)
    is raised towards the hard one as far as needed. Where even that is too low the run
    goes on with fewer requests in flight rather than fail to connect once it runs out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SPARE_FILES + concurrency * per_request
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency, None
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):  # macOS: not above kern.maxfilesperproc, whatever the hard
        raised = soft
    if raised >= need:
        return concurrency, None
    fits = max(1, (raised - SPARE_FILES) // per_request)
    return fits, (
        f"warning: {fits} requests in flight at most instead of {concurrency}: this process "
        f"may open {raised} files (ulimit -n); raise the limit to run {concurrency}"
    )


async def run_campaign(campaign: Campaign, options: RunOptions) -> RunStats:
    """Run every job not already ok in the results file. Raises ``ResultsFileError``
    before sending anything when the results file cannot be used."""
    log = ResultLog(options.results)
    past = log.open(fresh=options.fresh)
    try:
        for warning in past.warnings[:MAX_LINE_WARNINGS]:
            print(f"warning: {warning}", file=sys.stderr)
        if (more := len(past.warnings) - MAX_LINE_WARNINGS) > 0:
            print(f"warning: {options.results}: {more} more lines skipped", file=sys.stderr)
        done = past.ok_jobs()
        jobs = [job for job in campaign.jobs if job.id not in done]
        # Never more in flight than jobs to run; an in-process simulator holds the other end
        # of every connection.
        wanted = min(campaign.settings.concurrency, max(1, len(jobs)))
        fits, warning = fit_open_files(wanted, 1 if options.simulate is None else 2)
        if warning is not None:
            print(warning, file=sys.stderr)
            campaign = replace(campaign, settings=replace(campaign.settings, concurrency=fits))
        collector = Collector(log, on_result=options.on_result)
        collector.stats.skipped = len(campaign.jobs) - len(jobs)
        async with AsyncExitStack() as stack:
            # Entered first so that it is left last: no moment of the run without a handler.
            signals = stack.enter_context(_StopOnSignals(collector.stats))
            base_url = campaign.base_url
            if options.simulate is not None:
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
            )
            stack.push_async_callback(client.close)
            runner = Runner(campaign, client, collector, clock=options.clock)
            signals.attach(runner)
            if options.on_start is not None:
                options.on_start(collector.stats)
            return await runner.run(jobs)
    finally:
        log.close()


class _StopOnSignals:
    """First SIGINT/SIGTERM: stop dispatching, let requests in flight finish.
    Second: stop at once. Either way every recorded line stays recorded. A signal
    that comes before the runner exists stops it as soon as it does."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats
        self.runner: Runner | None = None
        self.aborting = False
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> _StopOnSignals:
        for sig in self.SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in self.SIGNALS:
            self.loop.remove_signal_handler(sig)

    def attach(self, runner: Runner) -> None:
        self.runner = runner
        if self.stats.interrupted:
            self._stop()

    def _on_signal(self) -> None:
        if self.stats.interrupted:
            print("stopping now", file=sys.stderr, flush=True)
            self.aborting = True
        else:
            self.stats.interrupted = True
            print(
                "stopping: no new requests; requests in flight get a few seconds to finish "
                "(interrupt again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
        self._stop()

    def _stop(self) -> None:
        if self.runner is None:
            return
        if self.aborting:
            self.runner.abort()
        else:
            self.runner.stop()
