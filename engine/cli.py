"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click
from rich.console import Console

from engine import jobfile
from engine.campaign import Campaign, Settings
from engine.launch import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    InsecureTransportError,
    LaunchOptions,
    check_transport,
    default_results_path,
    dry_run,
    fit_open_files,
    read_exchange,
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
        "--max-retry-after",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds: a longer Retry-After fails the job instead [300].",
    ),
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
    click.option(
        "--no-preflight",
        is_flag=True,
        help="Skip the check of XT's clock and every account's key and role before sending.",
    ),
)
#: What ``verify`` and ``check``, which only read from the exchange, take.
_READ_OPTIONS = (
    jobs_argument,
    api_option,
    click.option("--base-url", help="Exchange URL; overrides base_url."),
    click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per request."
    ),
    click.option("--insecure", is_flag=True, help="Allow plain http:// beyond loopback."),
)
_SETTINGS_OPTIONS = ("rate_limit", "concurrency", "max_attempts", "max_retry_after", "timeout")


def target_options(command: F) -> F:
    """Decorate ``command`` with the options ``run`` and ``schedule`` share."""
    for option in reversed(_TARGET_OPTIONS):
        command = option(command)
    return command


def read_options(command: F) -> F:
    """Decorate ``command`` with the options ``verify`` and ``check`` share."""
    for option in reversed(_READ_OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class _Target:
    """The job file and how to send it, as the command line says."""

    jobs_file: Path
    api: str | None
    base_url: str | None
    insecure: bool
    timeout: float | None
    rate_limit: float | None = None
    concurrency: int | None = None
    max_attempts: int | None = None
    max_retry_after: float | None = None
    results: Path | None = None
    simulate: bool = False
    sim_latency: float = 0.02
    no_preflight: bool = False

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
        return LaunchOptions(
            results=results,
            fresh=fresh,
            simulate=sim,
            signals=signals,
            preflight=not self.no_preflight,
        )


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
@read_options
@click.option("--strict", is_flag=True, help="Also report follows the file does not list.")
@click.option("--json", "as_json", is_flag=True, help="Print the drift as JSON.")
def verify(strict: bool, as_json: bool, **target: Any) -> None:
    """Compare what each account of JOBS.yaml follows on the exchange, and with which
    settings, with the file: exit 0 when they agree, 1 on drift, 2 on bad input (api v1)."""
    from engine.verify import verify as read_drift

    campaign = _Target(**target).checked()
    if not campaign.settings.api.readable:
        _fail(
            f"{campaign.path}: verify reads follows back by leader account id, which only "
            "api v1 has: set settings.api to v1 (or --api v1)"
        )
    found = asyncio.run(read_exchange(campaign, lambda r: read_drift(r, campaign, strict=strict)))
    if as_json:
        body = {"drift": [d.as_json() for d in found.drift], "unread": found.unread}
        click.echo(json.dumps(body, indent=2))
    else:
        for d in found.drift:
            where = f"account {printable(d.account)}, leader {d.leader}"
            job = f" (job {printable(d.job)})" if d.job else ""
            click.echo(f"{where}: {d.kind}{job}")
            for diff in d.differences:
                click.echo(f"    {diff.field}: file {diff.wanted} / exchange {diff.found}")
        for account, reason in found.unread.items():
            click.echo(f"account {printable(account)}: could not be read: {reason}")
        if not found.drift and not found.unread:
            click.echo(f"{campaign.path}: no drift over {len(campaign.accounts)} accounts")
    sys.exit(EXIT_FAILED if found.drift or found.unread else EXIT_OK)


@main.command()
@read_options
def check(**target: Any) -> None:
    """Check XT's clock and, for every account of JOBS.yaml, its key and its role, sending
    no follow: exit 0 when every account may follow, 1 when one may not."""
    from engine.preflight import preflight

    campaign = _Target(**target).checked()
    accounts = campaign.accounts.values()
    report = asyncio.run(read_exchange(campaign, lambda r: preflight(r.client, r, accounts)))
    if (note := report.clock_note()) is not None:
        click.echo(f"clock: {note}")
    for item in report.accounts:
        verdict = item.problem.removeprefix("not sent: ") if item.problem else "ok"
        click.echo(f"account {printable(item.account)}: {item.role or '?'}: {verdict}")
    sys.exit(EXIT_FAILED if report.problems else EXIT_OK)


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
