"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click
from rich.console import Console

from engine import jobfile
from engine.campaign import Campaign, Settings
from engine.launch import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    InsecureTransportError,
    LaunchOptions,
    check_transport,
    default_results_path,
    dry_run,
    fit_open_files,
)
from engine.problems import MIN_SECRET
from engine.profiles import PROFILES
from engine.results import ResultsFileError
from engine.schedule import Scheduler, check_results, start_at
from engine.signals import StopSignals
from engine.simulator import SimConfig, serve
from engine.yamlread import printable

F = TypeVar("F", bound=Callable[..., Any])

jobs_argument = click.argument("jobs_file", metavar="JOBS.yaml", type=click.Path(path_type=Path))
api_option = click.option(
    "--api", type=click.Choice(sorted(PROFILES)), help="API profile; overrides settings.api."
)
#: How jobs are sent, as ``run``, ``schedule`` and ``submit`` take it, defined once.
_SEND_OPTIONS = (
    jobs_argument,
    api_option,
    click.option("--base-url", help="Exchange URL; overrides base_url."),
    click.option(
        "--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Requests/s per key."
    ),
    click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight, all keys."),
    click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per job, at most."),
    click.option(
        "--max-retry-after",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds: a longer Retry-After fails the job instead [300].",
    ),
    click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per request."
    ),
    click.option("--insecure", is_flag=True, help="Allow plain http:// beyond loopback."),
)
#: What ``run`` and ``schedule`` both take; ``_Target`` holds the values.
_TARGET_OPTIONS = (
    *_SEND_OPTIONS,
    click.option(
        "--results", type=click.Path(path_type=Path), help="Results file [JOBS.results.jsonl]."
    ),
    click.option("--simulate", is_flag=True, help="Run against the built-in simulated exchange."),
    click.option(
        "--sim-latency",
        type=click.FloatRange(min=0),
        default=0.02,
        show_default=True,
        help="With --simulate: seconds each answer takes.",
    ),
)
_SETTINGS_OPTIONS = ("rate_limit", "concurrency", "max_attempts", "max_retry_after", "timeout")


def target_options(command: F, options: tuple[Callable[[F], F], ...] = _TARGET_OPTIONS) -> F:
    """Decorate ``command`` with the options ``run`` and ``schedule`` share."""
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class _Target:
    """The job file and how to send it, as the command line says."""

    jobs_file: Path
    api: str | None
    base_url: str | None
    rate_limit: float | None
    concurrency: int | None
    max_attempts: int | None
    max_retry_after: float | None
    timeout: float | None
    results: Path | None
    simulate: bool
    sim_latency: float
    insecure: bool

    def load(self, *, sending: bool = True) -> Campaign:
        """The job file with the command line applied. Raises ``JobFileError``, and when
        ``sending`` to plain http:// beyond loopback without --insecure,
        ``InsecureTransportError``; an allowed one is among the campaign's warnings."""
        campaign = jobfile.load(self.jobs_file, api=self.api)
        given = {name: getattr(self, name) for name in _SETTINGS_OPTIONS}
        settings = dataclasses.replace(
            campaign.settings, **{name: value for name, value in given.items() if value is not None}
        )
        base_url = (self.base_url or campaign.base_url).rstrip("/")
        for account in campaign.accounts.values():
            if len(account.secret_key) >= MIN_SECRET and account.secret_key in base_url:
                raise jobfile.JobFileError(
                    [
                        f"--base-url: holds the secret key of account {account.name}; a secret "
                        "belongs in secret_key only"
                    ]
                )
        campaign = dataclasses.replace(campaign, settings=settings, base_url=base_url)
        if sending and not self.simulate:
            warning = check_transport(campaign.base_url, self.insecure)
            if warning:
                warnings = (*campaign.warnings, warning.removeprefix("warning: "))
                campaign = dataclasses.replace(campaign, warnings=warnings)
        return campaign

    def checked(self, *, sending: bool = True) -> Campaign:
        """``load``, or exit 2 with every problem; warnings shown."""
        return _checked(self.jobs_file, lambda: self.load(sending=sending))

    def run_options(self, signals: StopSignals, *, fresh: bool = False) -> LaunchOptions:
        sim = SimConfig(latency=self.sim_latency) if self.simulate else None
        results = self.results or default_results_path(self.jobs_file)
        return LaunchOptions(results=results, fresh=fresh, simulate=sim, signals=signals)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _checked(jobs_file: Path, load: Callable[[], Campaign]) -> Campaign:
    """The campaign ``load`` reads, or exit 2 with every problem; warnings shown."""
    try:
        campaign = load()
    except jobfile.JobFileError as exc:
        _fail(f"{exc}\n{jobs_file}: {len(exc.problems)} problem(s); nothing sent")
    except InsecureTransportError as exc:
        _fail(str(exc))
    for warning in campaign.warnings:
        click.echo(f"warning: {warning}", err=True)
    return campaign


def _execute(work: Coroutine[Any, Any, int]) -> NoReturn:
    """Run ``work`` and exit with its code."""
    try:
        code = asyncio.run(work)
    except ResultsFileError as exc:
        _fail(f"{exc}; nothing sent")
    except KeyboardInterrupt:  # a Ctrl-C between two handlers; every result is already written
        code = EXIT_INTERRUPTED
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="follow-engine")
def main() -> None:
    """Follow many XT.com copy-trading leader orders across many accounts, at the exchange's
    rate limit, recording every outcome."""
    if not isinstance(sys.stdout, PipeSafeStdout):
        sys.stdout = PipeSafeStdout(sys.stdout)


class PipeSafeStdout(io.TextIOBase):
    """Standard output whose reader may go away early (``run ... | head -1``): what it can
    no longer take is dropped, and the command runs on to its own exit code."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True
                # The interpreter flushes stdout at exit: give it somewhere to go.
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        return len(text)

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


@main.command()
@jobs_argument
@api_option
def validate(jobs_file: Path, api: str | None) -> None:
    """Check a job file and send nothing."""
    campaign = _checked(jobs_file, lambda: jobfile.load(jobs_file, api=api))
    settings = campaign.settings
    scope = "per IP" if settings.api.per_ip else "per key"
    click.echo(
        f"{jobs_file}: valid: {len(campaign.jobs)} jobs, {len(campaign.accounts)} accounts "
        f"(api {settings.api.name}, {settings.rate_limit:g} req/s {scope})"
    )


@main.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editor completion and checks)."""
    click.echo(json.dumps(jobfile.json_schema(), indent=2))


def redis_option(required: bool) -> Callable[[F], F]:
    """``--redis URL``; where required, ``FOLLOW_ENGINE_REDIS`` may give it instead (no password
    on the command line)."""
    return click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        required=required,
        envvar="FOLLOW_ENGINE_REDIS" if required else None,
        help="Redis of the distributed mode, e.g. redis://host:6379/0"
        + (" [FOLLOW_ENGINE_REDIS]." if required else "."),
    )


campaign_option = click.option(
    "--campaign", "name", metavar="NAME", help="The campaign's name in Redis [JOBS.yaml's path]."
)


@main.command()
@target_options
@click.option("--now", is_flag=True, help="Start now, whatever schedule.at or schedule.cron say.")
@click.option("--fresh", is_flag=True, help="Start over: forget earlier results.")
@click.option("--dry-run", is_flag=True, help="Print the requests instead of sending them.")
@redis_option(required=False)
@campaign_option
def run(
    now: bool,
    fresh: bool,
    dry_run: bool,
    redis_url: str | None,
    name: str | None,
    **target: Any,
) -> None:
    """Send every job of JOBS.yaml not already ok in the results file, at schedule.at if the
    file sets it. A file with schedule.cron is for `follow-engine schedule` (or --now). With
    --redis, workers send: the jobs are submitted and their outcomes followed into the file."""
    where = _Target(**target)
    if dry_run:
        _print_dry_run(where.checked(sending=False))
        return
    if redis_url and where.simulate:
        _fail("--simulate with --redis: the workers send; point them at `follow-engine simulate`")
    # Before the file is read: a stop asked for while it loads must stop the run unsent.
    signals = StopSignals().install()
    campaign = where.checked()
    start = None if now else _start(campaign)
    options = where.run_options(signals, fresh=fresh)
    if redis_url:
        from engine.redis_commands import run_command
        from engine.submit import name_of

        _execute(run_command(redis_url, campaign, options, name_of(where.jobs_file, name), start))
    if start is not None:
        _check_results(options.results, campaign.path)
    _execute(start_at(campaign, options, Console(highlight=False), start))


def _start(campaign: Campaign) -> datetime | None:
    """The file's ``schedule.at``; a ``cron`` file is refused, as ``run`` runs once."""
    schedule = campaign.schedule
    if schedule is not None and schedule.cron is not None:
        _fail(
            f"{campaign.path}: schedule.cron {schedule.cron!r} repeats: run it with "
            "`follow-engine schedule` (or once now with `run --now`); nothing sent"
        )
    return schedule.at if schedule is not None else None


def _check_results(results: Path, jobs_file: Path) -> None:
    try:
        check_results(results, jobs_file)
    except ResultsFileError as exc:
        _fail(f"{exc}; nothing sent")


@main.command()
@target_options
@click.option("--once", is_flag=True, help="Run the next firing (or one due this minute), exit.")
def schedule(once: bool, **target: Any) -> None:
    """Run JOBS.yaml's schedule.cron campaign until stopped: at each firing, re-read the file
    and send every job not already ok in the results file."""
    where = _Target(**target)
    signals = StopSignals().install()
    campaign = where.checked()
    if campaign.schedule is None or campaign.schedule.cron is None:
        hint = (
            "it has schedule.at, a single start: use `follow-engine run`"
            if campaign.schedule is not None
            else "add schedule: {cron: ...}"
        )
        _fail(f"{campaign.path}: no schedule.cron to run; {hint}; nothing sent")
    options = where.run_options(signals)
    _check_results(options.results, campaign.path)
    scheduler = Scheduler(where.load, campaign, options, Console(highlight=False))
    _execute(scheduler.run(once=once))


@main.command()
@partial(target_options, options=_SEND_OPTIONS)
@redis_option(required=True)
@campaign_option
@click.option("--now", is_flag=True, help="Due now, whatever schedule.at says.")
def submit(redis_url: str, name: str | None, now: bool, **target: Any) -> None:
    """Queue every job of JOBS.yaml not already ok in Redis, for workers to send. The file is
    checked as `run` checks it; submitting it again queues nothing twice."""
    where = _Target(results=None, simulate=False, sim_latency=0.0, **target)
    campaign = where.checked()
    start = None if now else _start(campaign)
    from engine.redis_commands import submit_command
    from engine.submit import name_of

    _execute(submit_command(redis_url, campaign, name_of(where.jobs_file, name), start))


@main.command()
@redis_option(required=True)
@click.option(
    "--jobs",
    "jobs_files",
    metavar="JOBS.yaml",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Send for the accounts of this job file, their secrets from this environment "
    "(repeatable). Secrets never go to Redis.",
)
@click.option("--source-ip", metavar="IP", help="Send from this local address (its egress IP).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight, per campaign.")
@click.option("--insecure", is_flag=True, help="Allow plain http:// beyond loopback.")
def worker(
    redis_url: str,
    jobs_files: tuple[Path, ...],
    source_ip: str | None,
    concurrency: int | None,
    insecure: bool,
) -> None:
    """Take jobs from Redis, send them and record their outcomes there, until stopped. Takes
    only jobs of accounts whose credentials its job files hold."""
    signals = StopSignals().install()
    if source_ip is not None:
        try:
            source_ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            _fail(f"--source-ip {source_ip!r}: not an IP address")
    from engine.redis_commands import worker_command
    from engine.redis_store import key_hash
    from engine.worker import WorkerOptions

    credentials = {
        key_hash(account.api_key): account
        for path in jobs_files
        for account in _checked(path, partial(jobfile.load, path)).accounts.values()
    }
    options = WorkerOptions(source_ip, concurrency, insecure)
    _execute(worker_command(redis_url, credentials, options, signals))


@main.command()
@redis_option(required=True)
@click.argument("jobs_file", metavar="[JOBS.yaml]", required=False, type=click.Path(path_type=Path))
@campaign_option
def status(redis_url: str, jobs_file: Path | None, name: str | None) -> None:
    """Jobs queued, in flight, ok and failed per campaign, account and worker; and accounts no
    live worker can serve. JOBS.yaml (or --campaign) shows that campaign only."""
    from engine.redis_commands import status_command
    from engine.submit import name_of

    only = name_of(jobs_file, name) if jobs_file is not None else name
    _execute(status_command(redis_url, only))


def _print_dry_run(campaign: Campaign) -> None:
    for job, request in zip(campaign.jobs, dry_run(campaign), strict=True):
        click.echo(f"# job {printable(job.id)} (account {printable(job.account)})")
        click.echo(f"{request.method} {request.url}")
        for name, value in request.redacted().items():
            click.echo(f"{name}: {value}")
        click.echo(f"\n{request.body}\n")
    click.echo(f"dry run: {len(campaign.jobs)} requests shown, none sent", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--jobs",
    "jobs_file",
    type=click.Path(path_type=Path),
    help="Check signatures against this job file's accounts.",
)
@click.option("--latency", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Requests per window per key.",
)
@click.option("--per-ip", is_flag=True, help="One limit for all keys (the v1 rule).")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def simulate(
    host: str,
    port: int,
    jobs_file: Path | None,
    latency: float,
    rate_limit: float,
    per_ip: bool,
    fault_rate: float,
    seed: int,
) -> None:
    """Serve the simulated exchange until interrupted."""
    accounts = None
    if jobs_file is not None:
        campaign = _checked(jobs_file, lambda: jobfile.load(jobs_file))
        accounts = {a.api_key: a.secret_key for a in campaign.accounts.values()}
    config = SimConfig(
        latency=latency, rate_limit=rate_limit, per_ip=per_ip, fault_rate=fault_rate, seed=seed
    )
    # Room for everything an engine with the default concurrency has in flight.
    wanted = Settings().concurrency
    fits, _ = fit_open_files(wanted)
    if fits < wanted:
        click.echo(
            f"warning: {fits} connections at most (ulimit -n), fewer than an engine's default "
            f"{wanted} requests in flight",
            err=True,
        )
    try:
        asyncio.run(serve(host, port, accounts, config))
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
