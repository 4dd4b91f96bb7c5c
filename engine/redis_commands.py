"""The distributed mode's commands, as the CLI calls them: each connects to Redis first and
exits 2 with one line when it cannot be used, before anything is queued or sent."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from rich.console import Console

from engine.campaign import Account, Campaign
from engine.exits import EXIT_OK, EXIT_USAGE
from engine.follow import run_followed, said_submitted
from engine.launch import LaunchOptions
from engine.redis_store import RedisUnavailable, Store, campaign_id, connect
from engine.signals import StopSignals
from engine.status import show_status
from engine.submit import submit
from engine.worker import Worker, WorkerOptions


async def _with_store(url: str, name: str, work: Callable[[Store], Awaitable[int]]) -> int:
    try:
        store = await connect(url, name)
    except RedisUnavailable as exc:
        print(f"error: {exc}; nothing sent", file=sys.stderr)
        return EXIT_USAGE
    try:
        return await work(store)
    finally:
        await store.close()


async def submit_command(url: str, campaign: Campaign, name: str, start: datetime | None) -> int:
    async def work(store: Store) -> int:
        done = await submit(store, campaign, list(campaign.jobs), name, start)
        print(said_submitted(done), file=sys.stderr)
        return EXIT_OK

    return await _with_store(url, "follow-engine-submit", work)


async def run_command(
    url: str, campaign: Campaign, options: LaunchOptions, name: str, start: datetime | None
) -> int:
    async def work(store: Store) -> int:
        console = Console(highlight=False)
        return await run_followed(campaign, options, store, name, start, console, sys.stderr)

    return await _with_store(url, "follow-engine-run", work)


async def worker_command(
    url: str, credentials: Mapping[str, Account], options: WorkerOptions, signals: StopSignals
) -> int:
    async def work(store: Store) -> int:
        return await Worker(store, credentials, options, signals).run()

    return await _with_store(url, "follow-engine-worker", work)


async def status_command(url: str, name: str | None) -> int:
    async def work(store: Store) -> int:
        # Piped or logged: tables as wide as they need, not cut at 80 columns.
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        await show_status(store, campaign_id(name) if name else None, console)
        return EXIT_OK

    return await _with_store(url, "follow-engine-status", work)
