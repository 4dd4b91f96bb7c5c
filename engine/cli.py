"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from engine import jobfile
from engine.campaign import Campaign
from engine.collector import RunStats
from engine.profiles import PROFILES
from engine.report import ProgressDisplay, print_summary
from engine.results import ResultsFileError
from engine.run import (
    InsecureTransportError,
    RunOptions,
    check_transport,
    default_results_path,
    dry_run,
    run_campaign,
)
from engine.simulator import SimConfig, serve

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

jobs_argument = click.argument("jobs_file", metavar="JOBS.yaml", type=click.Path(path_type=Path))
api_option = click.option(
    "--api", type=click.Choice(sorted(PROFILES)), help="API profile; overrides settings.api."
)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _load(jobs_file: Path, api: str | None) -> Campaign:
    try:
        campaign = jobfile.load(jobs_file, api=api)
    except jobfile.JobFileError as exc:
        _fail(f"{exc}\n{jobs_file}: {len(exc.problems)} problem(s); nothing sent")
    for warning in campaign.warnings:
        click.echo(f"warning: {warning}", err=True)
    return campaign


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
    campaign = _load(jobs_file, api)
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
@jobs_argument
@api_option
@click.option("--base-url", help="Exchange URL; overrides base_url.")
@click.option(
    "--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Requests/s per key."
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight, all keys.")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per job, at most.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per request.")
@click.option(
    "--results", type=click.Path(path_type=Path), help="Results file [JOBS.results.jsonl]."
)
@click.option("--fresh", is_flag=True, help="Start over: forget earlier results.")
@click.option("--dry-run", is_flag=True, help="Print the requests instead of sending them.")
@click.option("--simulate", is_flag=True, help="Run against the built-in simulated exchange.")
@click.option(
    "--sim-latency",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="With --simulate: seconds each answer takes.",
)
@click.option("--insecure", is_flag=True, help="Allow plain http:// beyond loopback.")
def run(
    jobs_file: Path,
    api: str | None,
    dry_run: bool,
    simulate: bool,
    sim_latency: float,
    results: Path | None,
    fresh: bool,
    insecure: bool,
    base_url: str | None,
    **overrides: Any,
) -> None:
    """Send every job of JOBS.yaml not already ok in the results file."""
    campaign = _load(jobs_file, api)
    campaign = _apply_overrides(campaign, base_url, overrides)
    if dry_run:
        _print_dry_run(campaign)
        return
    if not simulate:
        try:
            warning = check_transport(campaign.base_url, insecure)
        except InsecureTransportError as exc:
            _fail(str(exc))
        if warning:
            click.echo(warning, err=True)
    settings = campaign.settings
    sim = (
        SimConfig(
            latency=sim_latency, rate_limit=settings.api.rate_limit, per_ip=settings.api.per_ip
        )
        if simulate
        else None
    )
    options = RunOptions(
        results=results or default_results_path(jobs_file), fresh=fresh, simulate=sim
    )
    sys.exit(_run(campaign, options))


def _apply_overrides(
    campaign: Campaign, base_url: str | None, overrides: dict[str, Any]
) -> Campaign:
    given = {name: value for name, value in overrides.items() if value is not None}
    settings = dataclasses.replace(campaign.settings, **given)
    return dataclasses.replace(
        campaign, settings=settings, base_url=(base_url or campaign.base_url).rstrip("/")
    )


def _print_dry_run(campaign: Campaign) -> None:
    for job, request in zip(campaign.jobs, dry_run(campaign), strict=True):
        click.echo(f"# job {job.id} (account {job.account})")
        click.echo(f"{request.method} {request.url}")
        for name, value in request.redacted().items():
            click.echo(f"{name}: {value}")
        click.echo(f"\n{request.body}\n")
    click.echo(f"dry run: {len(campaign.jobs)} requests shown, none sent", err=True)


def _run(campaign: Campaign, options: RunOptions) -> int:
    """Run and summarise; the exit code."""
    display: ProgressDisplay | None = None

    def on_start(stats: RunStats) -> None:
        nonlocal display
        if stats.skipped:
            click.echo(f"skipping {stats.skipped} jobs already ok in {options.results}", err=True)
        display = ProgressDisplay(stats)
        display.start()

    def on_result(result: Any) -> None:
        if display is not None:
            display.on_result(result)

    options = dataclasses.replace(options, on_start=on_start, on_result=on_result)
    try:
        stats = asyncio.run(run_campaign(campaign, options))
    except ResultsFileError as exc:
        _fail(f"{exc}; nothing sent")
    finally:
        if display is not None:
            display.close()
    return _report(stats, campaign, options)


def _report(stats: RunStats, campaign: Campaign, options: RunOptions) -> int:
    print_summary(stats, campaign.settings.rate_limit, Console(highlight=False))
    click.echo(f"results: {options.results}")
    if stats.write_error:
        click.echo(
            f"error: {stats.write_error}; stopped sending. Unrecorded results follow:", err=True
        )
        for result in stats.unrecorded:
            click.echo(result.to_json(), err=True)
        return EXIT_FAILED
    if stats.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if stats.failed == 0 else EXIT_FAILED


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
        accounts = {a.api_key: a.secret_key for a in _load(jobs_file, None).accounts.values()}
    config = SimConfig(
        latency=latency, rate_limit=rate_limit, per_ip=per_ip, fault_rate=fault_rate, seed=seed
    )
    try:
        asyncio.run(serve(host, port, accounts, config))
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
