"""The ``follow-engine`` command. Exit codes: 0 every job ok, 1 some job failed,
2 invalid input or usage (nothing sent), 130 interrupted.

Each command imports what it needs when it runs (see ``engine.target``): ``--help``,
``validate`` and ``schema`` never load the HTTP client, the simulator, rich or croniter.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from engine.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from engine.stdout import PipeSafeStdout
from engine.target import (
    Target,
    allow_over_limit_option,
    api_option,
    env_file_option,
    fail,
    jobs_argument,
    load_checked,
    read_options,
    target_options,
)

if TYPE_CHECKING:
    from engine.campaign import Campaign


def _execute(work: Coroutine[Any, Any, int]) -> NoReturn:
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
def run(now: bool, fresh: bool, dry_run: bool, **target: Any) -> None:
    """Send every job of JOBS.yaml not already ok in the results file, at schedule.at if the
    file sets it. A file with schedule.cron is for `follow-engine schedule` (or --now)."""
    from engine.signals import StopSignals

    where = Target(**target)
    if dry_run:
        _print_dry_run(where.checked(sending=False), where.results_path, fresh)
        return
    from rich.console import Console

    from engine.schedule import start_at

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
        fail(
            f"{campaign.path}: schedule.cron {schedule.cron!r} repeats: run it with "
            "`follow-engine schedule` (or once now with `run --now`); nothing sent"
        )
    return schedule.at if schedule is not None else None


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
        f"dry run: {len(planned.requests)} requests shown, none sent"
        + (skipped if planned.skipped else ""),
        err=True,
    )


@main.command()
@read_options
@click.option("--strict", is_flag=True, help="Also report follows the file does not list.")
@click.option("--json", "as_json", is_flag=True, help="Print the drift as JSON.")
def verify(strict: bool, as_json: bool, **target: Any) -> None:
    """Compare what each account of JOBS.yaml follows on the exchange, and with which
    settings, with the file: exit 0 when they agree, 1 on drift, 2 on bad input (api v1)."""
    import asyncio

    from engine.launch import read_exchange
    from engine.verify import verify as read_drift
    from engine.yamlread import printable

    campaign = Target(**target).checked()
    if not campaign.settings.api.readable:
        fail(
            f"{campaign.path}: verify reads follows back by leader account id, which only "
            "api v1 has: set settings.api to v1 (or --api v1)"
        )
    found = asyncio.run(read_exchange(campaign, lambda r: read_drift(r, campaign, strict=strict)))
    if as_json:
        body = {"drift": [d.as_json() for d in found.drift], "unread": found.unread}
        click.echo(json.dumps(body, indent=2))
    else:
        for d in found.drift:
            job = f" (job {printable(d.job)})" if d.job else ""
            click.echo(f"account {printable(d.account)}, leader {d.leader}: {d.kind}{job}")
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
    import asyncio

    from engine.launch import read_exchange
    from engine.preflight import preflight
    from engine.yamlread import printable

    campaign = Target(**target).checked()
    accounts = campaign.accounts.values()
    report = asyncio.run(read_exchange(campaign, lambda r: preflight(r.client, r, accounts)))
    if (note := report.clock_note()) is not None:
        click.echo(f"clock: {note}")
    unchecked = False
    for item in report.accounts:
        verdict = item.problem.removeprefix("not sent: ") if item.problem else "ok"
        if item.unchecked is not None:
            verdict, unchecked = f"could not be checked: {item.unchecked}", True
        click.echo(f"account {printable(item.account)}: {item.role or '?'}: {verdict}")
    sys.exit(EXIT_FAILED if report.problems or unchecked else EXIT_OK)


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
    _execute(scheduler.run(once=once))


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


if __name__ == "__main__":
    main()
