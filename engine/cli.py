"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted.

Each command imports what it needs when it runs (see ``engine.target``): ``--help``,
``validate`` and ``schema`` never load the HTTP client, the simulator, rich or croniter.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli_distributed import campaign_option, redis_option, status, submit, worker
from engine.cli_exchange import check, verify
from engine.exits import EXIT_OK
from engine.stdout import PipeSafeStdout
from engine.target import (
    Target,
    allow_over_limit_option,
    api_option,
    env_file_option,
    execute,
    fail,
    jobs_argument,
    load_checked,
    start_of,
    target_options,
)

if TYPE_CHECKING:
    from engine.campaign import Campaign


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="follow-engine")
def main() -> None:
    """Follow many XT.com copy-trading leader orders across many accounts, at the exchange's
    rate limit, recording every outcome."""
    if not isinstance(sys.stdout, PipeSafeStdout):
        sys.stdout = PipeSafeStdout(sys.stdout)


@main.command()
@jobs_argument
@api_option
@env_file_option
@allow_over_limit_option
def validate(
    jobs_file: Path, api: str | None, env: Mapping[str, str] | None, allow_over_limit: bool
) -> None:
    """Check a job file and send nothing."""
    from engine import jobfile

    campaign = load_checked(
        jobs_file,
        lambda: jobfile.load(jobs_file, api=api, env=env, allow_over_limit=allow_over_limit),
    )
    settings = campaign.settings
    scope = "per IP" if settings.api.per_ip else "per key"
    click.echo(
        f"{jobs_file}: valid: {len(campaign.jobs)} jobs, {len(campaign.accounts)} accounts "
        f"(api {settings.api.name}, {settings.rate_limit:g} req/s {scope})"
    )


@main.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editor completion and checks)."""
    from engine import jobfile

    click.echo(json.dumps(jobfile.json_schema(), indent=2))


@main.command()
@target_options
@click.option("--now", is_flag=True, help="Start now, whatever schedule.at or schedule.cron say.")
@click.option("--fresh", is_flag=True, help="Start over: forget earlier results.")
@click.option("--dry-run", is_flag=True, help="Print the requests a run would send, and send none.")
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
    from engine.signals import StopSignals

    where = Target(**target)
    if dry_run:
        _print_dry_run(where.checked(sending=False), where.results_path, fresh)
        return
    if redis_url and where.simulate:
        fail("--simulate with --redis: the workers send; point them at `follow-engine simulate`")
    from engine.schedule import start_at

    # Before the file is read: a stop asked for while it loads must stop the run unsent.
    signals = StopSignals().install()
    campaign = where.checked()
    start = None if now else start_of(campaign)
    options = where.run_options(signals, fresh=fresh)
    if redis_url:
        from engine.redis_commands import run_command
        from engine.submit import name_of

        execute(run_command(redis_url, campaign, options, name_of(where.jobs_file, name), start))
    if start is not None:
        _check_results(options.results, campaign.path)
    execute(start_at(campaign, options, None, start))


def _check_results(results: Path, jobs_file: Path) -> None:
    from engine.results import ResultsFileError
    from engine.schedule import check_results

    try:
        check_results(results, jobs_file)
    except ResultsFileError as exc:
        fail(f"{exc}; nothing sent")


def _print_dry_run(campaign: Campaign, results: Path, fresh: bool) -> None:
    from engine.launch import dry_run
    from engine.results import ResultsFileError

    try:
        planned = dry_run(campaign, results, fresh)
    except ResultsFileError as exc:
        fail(f"{exc}; nothing sent")
    from engine.yamlread import printable

    for job, request in planned.requests:
        headers = "".join(f"{name}: {value}\n" for name, value in request.redacted().items())
        # One echo per job: each echo costs more than the signing (it flushes).
        click.echo(
            f"# job {printable(job.id)} (account {printable(job.account)})\n"
            f"{request.method} {request.url}\n{headers}\n{request.body}\n"
        )
    skipped = f"; {planned.skipped} jobs skipped, already ok in {results}"
    click.echo(
        f"dry run: {planned.count} requests shown, none sent"
        + (skipped if planned.skipped else ""),
        err=True,
    )


@main.command()
@target_options
@click.option("--once", is_flag=True, help="Run the next firing (or one due this minute), exit.")
def schedule(once: bool, **target: Any) -> None:
    """Run JOBS.yaml's schedule.cron campaign until stopped: at each firing, re-read the file
    and send every job not already ok in the results file."""
    from rich.console import Console

    from engine.schedule import Scheduler
    from engine.signals import StopSignals

    where = Target(**target)
    signals = StopSignals().install()
    campaign = where.checked()
    if campaign.schedule is None or campaign.schedule.cron is None:
        hint = (
            "it has schedule.at, a single start: use `follow-engine run`"
            if campaign.schedule is not None
            else "add schedule: {cron: ...}"
        )
        fail(f"{campaign.path}: no schedule.cron to run; {hint}; nothing sent")
    options = where.run_options(signals)
    _check_results(options.results, campaign.path)
    scheduler = Scheduler(where.load, campaign, options, Console(highlight=False))
    execute(scheduler.run(once=once))


@main.command()
@click.argument("results", metavar="RESULTS.jsonl", type=click.Path(path_type=Path))
@click.option("--failed", is_flag=True, help="List only failed jobs.")
@click.option("--ambiguous", is_flag=True, help="List only ambiguous jobs.")
@click.option("--all", "every", is_flag=True, help="List every job.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, for scripts.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the jobs listed as CSV.")
@click.option(
    "--html",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the report, with a picture of the campaign, as one HTML page.",
)
def report(
    results: Path,
    failed: bool,
    ambiguous: bool,
    every: bool,
    as_json: bool,
    as_csv: bool,
    html: Path | None,
) -> None:
    """Show a campaign's outcome from its results file.

    Each job counts by its last line: totals, jobs by status, rc/mc, error and account, and
    the failed and ambiguous jobs. Exit 0 when no job failed, 1 when some did, 2 when the
    file cannot be read."""
    from engine.campaign_report import Listing, show

    if as_json and as_csv:
        raise click.UsageError("--json and --csv: one at a time")
    listing = Listing(failed=failed, ambiguous=ambiguous, every=every)
    sys.exit(show(results, listing, "json" if as_json else "csv" if as_csv else None, html))


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
    import asyncio

    from engine import jobfile
    from engine.campaign import Settings
    from engine.launch import fit_open_files
    from engine.simulator import SimConfig, serve

    accounts = None
    if jobs_file is not None:
        campaign = load_checked(jobs_file, lambda: jobfile.load(jobs_file))
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
    except OSError as exc:  # the port is taken, or the host is not this machine's
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        fail(f"simulate: cannot listen on {host}:{port}: {reason}")


for command in (verify, check, submit, worker, status):
    main.add_command(command)

if __name__ == "__main__":
    main()
