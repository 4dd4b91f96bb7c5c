"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
from engine.profiles import PROFILES
from engine.results import ResultsFileError
from engine.schedule import Scheduler, check_results, start_at
from engine.signals import StopSignals
from engine.simulator import SimConfig, serve

F = TypeVar("F", bound=Callable[..., Any])

jobs_argument = click.argument("jobs_file", metavar="JOBS.yaml", type=click.Path(path_type=Path))
api_option = click.option(
    "--api", type=click.Choice(sorted(PROFILES)), help="API profile; overrides settings.api."
)
#: What ``run`` and ``schedule`` both take, defined once; ``_Target`` holds the values.
_TARGET_OPTIONS = (
    jobs_argument,
    api_option,
    click.option("--base-url", help="Exchange URL; overrides base_url."),
    click.option(
        "--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Requests/s per key."
    ),
    click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight, all keys."),
    click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per job, at most."),
    click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per request."
    ),
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
    click.option("--insecure", is_flag=True, help="Allow plain http:// beyond loopback."),
)
_SETTINGS_OPTIONS = ("rate_limit", "concurrency", "max_attempts", "timeout")


def target_options(command: F) -> F:
    """Decorate ``command`` with the options ``run`` and ``schedule`` share."""
    for option in reversed(_TARGET_OPTIONS):
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


@main.command()
@target_options
@click.option("--now", is_flag=True, help="Start now, whatever schedule.at or schedule.cron say.")
@click.option("--fresh", is_flag=True, help="Start over: forget earlier results.")
@click.option("--dry-run", is_flag=True, help="Print the requests instead of sending them.")
def run(now: bool, fresh: bool, dry_run: bool, **target: Any) -> None:
    """Send every job of JOBS.yaml not already ok in the results file, at schedule.at if the
    file sets it. A file with schedule.cron is for `follow-engine schedule` (or --now)."""
    where = _Target(**target)
    if dry_run:
        _print_dry_run(where.checked(sending=False))
        return
    # Before the file is read: a stop asked for while it loads must stop the run unsent.
    signals = StopSignals().install()
    campaign = where.checked()
    start = None if now else _start(campaign)
    options = where.run_options(signals, fresh=fresh)
    if start is not None:
        _check_results(options.results)
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


def _check_results(results: Path) -> None:
    try:
        check_results(results)
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
    _check_results(options.results)
    scheduler = Scheduler(where.load, campaign, options, Console(highlight=False))
    _execute(scheduler.run(once=once))


def _print_dry_run(campaign: Campaign) -> None:
    for job, request in zip(campaign.jobs, dry_run(campaign), strict=True):
        headers = "".join(f"{name}: {value}\n" for name, value in request.redacted().items())
        # One echo per job: each echo costs more than the signing (it flushes).
        click.echo(
            f"# job {job.id} (account {job.account})\n{request.method} {request.url}\n"
            f"{headers}\n{request.body}\n"
        )
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
