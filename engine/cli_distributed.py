"""The commands of the distributed mode (README "Many machines"): ``submit`` queues a
campaign's jobs in Redis, ``worker`` sends them, ``status`` says where they stand; ``run
--redis`` (in ``engine.cli``) submits and follows. Redis is imported only when one runs."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from engine.target import Target, execute, fail, load_checked, send_options, start_of

F = TypeVar("F", bound=Callable[..., Any])


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


@click.command()
@send_options
@redis_option(required=True)
@campaign_option
@click.option("--now", is_flag=True, help="Due now, whatever schedule.at says.")
def submit(redis_url: str, name: str | None, now: bool, **target: Any) -> None:
    """Queue every job of JOBS.yaml not already ok in Redis, for workers to send. The file is
    checked as `run` checks it; submitting it again queues nothing twice."""
    from engine.redis_commands import submit_command
    from engine.submit import name_of

    where = Target(**target)
    campaign = where.checked()
    start = None if now else start_of(campaign)
    execute(submit_command(redis_url, campaign, name_of(where.jobs_file, name), start))


@click.command()
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
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Requests in flight at most, over every campaign served.",
)
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
    from engine import jobfile
    from engine.redis_commands import worker_command
    from engine.redis_store import key_hash
    from engine.signals import StopSignals
    from engine.worker import WorkerOptions

    signals = StopSignals().install()
    if source_ip is not None:
        try:
            source_ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            fail(f"--source-ip {source_ip!r}: not an IP address")
    credentials = {
        key_hash(account.api_key): account
        for path in jobs_files
        for account in load_checked(path, partial(jobfile.load, path)).accounts.values()
    }
    options = WorkerOptions(source_ip, concurrency, insecure)
    execute(worker_command(redis_url, credentials, options, signals))


@click.command()
@redis_option(required=True)
@click.argument("jobs_file", metavar="[JOBS.yaml]", required=False, type=click.Path(path_type=Path))
@campaign_option
def status(redis_url: str, jobs_file: Path | None, name: str | None) -> None:
    """Jobs queued, in flight, ok and failed per campaign, account and worker; and accounts no
    live worker can serve. JOBS.yaml (or --campaign) shows that campaign only."""
    from engine.redis_commands import status_command
    from engine.submit import name_of

    only = name_of(jobs_file, name) if jobs_file is not None else name
    execute(status_command(redis_url, only))
