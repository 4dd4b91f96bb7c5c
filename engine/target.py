"""What the commands that read a job file share: the options naming it and how to send it,
the environment its ``${VAR}`` come from (``--env-file``), and loading it with every problem
shown.

Only click and light modules load with the CLI; the job file's models, the HTTP client, the
simulator and rich are imported by the code that uses them, so that ``--help``, ``validate``
and ``schema`` start fast (``bench/startup.py``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from engine.exits import EXIT_INTERRUPTED, EXIT_USAGE
from engine.profiles import PROFILES
from engine.urls import base_url_problem

if TYPE_CHECKING:
    from datetime import datetime

    from engine.campaign import Campaign
    from engine.launch import LaunchOptions
    from engine.signals import StopSignals

F = TypeVar("F", bound=Callable[..., Any])

#: An env file larger than this is no env file (a mistyped path to a log, say).
MAX_ENV_FILE_BYTES = 1 << 20


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a dotenv file sets (python-dotenv's syntax: ``KEY=value``, quotes,
    ``export``, comments), or exit 2 naming the file when it cannot be read. Values are
    never shown: they hold API keys."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            fail(f"{path}: cannot read env file: not a regular file; nothing sent")
        if path.stat().st_size > MAX_ENV_FILE_BYTES:
            fail(f"{path}: cannot read env file: larger than {MAX_ENV_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{path}: cannot read env file: {exc.strerror}; nothing sent")
    except UnicodeDecodeError:
        fail(f"{path}: cannot read env file: not UTF-8 text; nothing sent")
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    bad = [str(b.original.line) for b in parse_stream(io.StringIO(text)) if b.error]
    if bad:
        fail(f"{path}: line {', '.join(bad)}: not a KEY=value line; nothing sent")
    values = dotenv_values(stream=io.StringIO(text))
    return {name: value for name, value in values.items() if value is not None}


def _environment(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    """``--env-file``: the environment ``${VAR}`` are read from, the file's values winning
    over the process's (as ``set -a; . ./xt.env`` did); None without the option."""
    return None if value is None else {**os.environ, **read_env_file(value)}


def _base_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--base-url`` is held to the rule of the job file's ``base_url``."""
    if value is not None and (problem := base_url_problem(value)) is not None:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


jobs_argument = click.argument("jobs_file", metavar="JOBS.yaml", type=click.Path(path_type=Path))
api_option = click.option(
    "--api", type=click.Choice(sorted(PROFILES)), help="API profile; overrides settings.api."
)
env_file_option = click.option(
    "--env-file",
    "env",
    type=click.Path(path_type=Path),
    callback=_environment,
    help="Read ${VAR} values from this dotenv file (KEY=value lines) too; its values win.",
)
allow_over_limit_option = click.option(
    "--allow-over-limit",
    is_flag=True,
    help="A rate limit above the API's own (XT raised yours) is a warning, not an error.",
)
base_url_option = click.option(
    "--base-url", callback=_base_url, help="Exchange URL; overrides base_url."
)
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per request."
)
insecure_option = click.option(
    "--insecure", is_flag=True, help="Allow plain http:// beyond loopback."
)
#: How jobs are sent, as ``run``, ``schedule`` and ``submit`` take it, defined once.
_SEND_OPTIONS = (
    jobs_argument,
    api_option,
    env_file_option,
    base_url_option,
    click.option(
        "--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Requests/s per key."
    ),
    allow_over_limit_option,
    click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight, all keys."),
    click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per job, at most."),
    click.option(
        "--max-retry-after",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds: a longer Retry-After fails the job instead [300].",
    ),
    timeout_option,
    insecure_option,
)
#: What ``run`` and ``schedule`` both take; ``Target`` holds the values.
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
    env_file_option,
    base_url_option,
    timeout_option,
    insecure_option,
)
_SETTINGS_OPTIONS = ("concurrency", "max_attempts", "max_retry_after", "timeout")


def _decorated(command: F, options: tuple[Callable[[F], F], ...]) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def target_options(command: F) -> F:
    """Decorate ``command`` with the options ``run`` and ``schedule`` share."""
    return _decorated(command, _TARGET_OPTIONS)


def send_options(command: F) -> F:
    """Decorate ``command`` with the options that say how jobs are sent (``submit``)."""
    return _decorated(command, _SEND_OPTIONS)


def read_options(command: F) -> F:
    """Decorate ``command`` with the options ``verify`` and ``check`` share."""
    return _decorated(command, _READ_OPTIONS)


def load_checked(jobs_file: Path, load: Callable[[], Campaign]) -> Campaign:
    """The campaign ``load`` reads, or exit 2 with every problem; warnings shown."""
    from engine.jobfile import JobFileError
    from engine.urls import InsecureTransportError

    try:
        campaign = load()
    except JobFileError as exc:
        fail(f"{exc}\n{jobs_file}: {len(exc.problems)} problem(s); nothing sent")
    except InsecureTransportError as exc:
        fail(str(exc))
    for warning in campaign.warnings:
        click.echo(f"warning: {warning}", err=True)
    return campaign


@dataclass(frozen=True, slots=True)
class Target:
    """The job file and how to send it, as the command line says."""

    jobs_file: Path
    api: str | None
    env: Mapping[str, str] | None
    base_url: str | None
    timeout: float | None
    insecure: bool
    rate_limit: float | None = None
    allow_over_limit: bool = False
    concurrency: int | None = None
    max_attempts: int | None = None
    max_retry_after: float | None = None
    results: Path | None = None
    simulate: bool = False
    sim_latency: float = 0.02
    no_preflight: bool = False

    @property
    def results_path(self) -> Path:
        from engine.launch import default_results_path

        return self.results or default_results_path(self.jobs_file)

    def load(self, *, sending: bool = True) -> Campaign:
        """The job file with the command line applied. Raises ``JobFileError``, and when
        ``sending`` to plain http:// beyond loopback without --insecure,
        ``InsecureTransportError``; an allowed one is among the campaign's warnings."""
        from engine import jobfile
        from engine.problems import MIN_SECRET
        from engine.urls import check_transport

        campaign = jobfile.load(
            self.jobs_file,
            api=self.api,
            env=self.env,
            rate_limit=self.rate_limit,
            allow_over_limit=self.allow_over_limit,
        )
        given = {name: getattr(self, name) for name in _SETTINGS_OPTIONS}
        settings = dataclasses.replace(
            campaign.settings, **{name: value for name, value in given.items() if value is not None}
        )
        base_url = (self.base_url or campaign.base_url).rstrip("/")
        for account in campaign.accounts.values():
            if len(account.secret_key) >= MIN_SECRET and account.secret_key in base_url:
                message = f"--base-url: holds the secret key of account {account.name}"
                raise jobfile.JobFileError([f"{message}; a secret belongs in secret_key only"])
        campaign = dataclasses.replace(campaign, settings=settings, base_url=base_url)
        if sending and not self.simulate:
            warning = check_transport(campaign.base_url, self.insecure)
            if warning:
                warnings = (*campaign.warnings, warning.removeprefix("warning: "))
                campaign = dataclasses.replace(campaign, warnings=warnings)
        return campaign

    def checked(self, *, sending: bool = True) -> Campaign:
        """``load``, or exit 2 with every problem; warnings shown."""
        return load_checked(self.jobs_file, lambda: self.load(sending=sending))

    def run_options(self, signals: StopSignals, *, fresh: bool = False) -> LaunchOptions:
        from engine.launch import LaunchOptions

        sim = None
        if self.simulate:  # aiohttp's server, 60 ms of imports: only when simulating
            from engine.simulator import SimConfig

            sim = SimConfig(latency=self.sim_latency)
        return LaunchOptions(
            results=self.results_path,
            fresh=fresh,
            simulate=sim,
            signals=signals,
            preflight=not self.no_preflight,
        )


def execute(work: Coroutine[Any, Any, int]) -> NoReturn:
    """Run ``work`` and exit with its code."""
    import asyncio
    import gc

    from engine.results import ResultsFileError

    try:
        code = asyncio.run(work)
    except ResultsFileError as exc:
        fail(f"{exc}; nothing sent")
    except KeyboardInterrupt:  # a Ctrl-C between two handlers; every result is already written
        code = EXIT_INTERRUPTED
    gc.freeze()  # nothing left worth collecting: spares the exit a walk of every object (0.1 s)
    sys.exit(code)


def start_of(campaign: Campaign) -> datetime | None:
    """The file's ``schedule.at``; a ``cron`` file is refused, as ``run`` runs once."""
    schedule = campaign.schedule
    if schedule is not None and schedule.cron is not None:
        fail(
            f"{campaign.path}: schedule.cron {schedule.cron!r} repeats: run it with "
            "`follow-engine schedule` (or once now with `run --now`); nothing sent"
        )
    return schedule.at if schedule is not None else None
