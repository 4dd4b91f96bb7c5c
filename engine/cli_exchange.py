"""The commands that only read from the exchange: ``verify`` (what each account follows
against the file) and ``check`` (the preflight alone). Nothing here sends a follow."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from engine.exits import EXIT_FAILED, EXIT_OK
from engine.target import Target, fail, read_options


@click.command()
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


@click.command()
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
