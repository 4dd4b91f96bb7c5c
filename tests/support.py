"""Campaigns built in code, run against the simulated exchange on loopback."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.campaign import Account, Campaign, FollowJob, FollowValue, Settings
from engine.client import XtClient
from engine.collector import CampaignStats, Collector
from engine.pool import WorkerPool
from engine.profiles import V4
from engine.results import JobResult, ResultLog
from engine.simulator import Simulator

BASE_LEADER = 7302994413592166401


FOLLOW: dict[str, FollowValue] = {
    "followType": "RATE",
    "followVal": Decimal("0.5"),
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}


def make_campaign(jobs_per_account: Mapping[str, int], tmp_path: Path, **settings: Any) -> Campaign:
    """Accounts named as given, each with its own key and that many jobs; leader ids unique."""
    accounts = {
        name: Account(name, f"key-{name}", f"secret-{name}-s3cr3t") for name in jobs_per_account
    }
    leader_field = settings.get("api", V4).leader_field
    jobs = []
    leader = BASE_LEADER
    for name, count in jobs_per_account.items():
        for _ in range(count):
            params = {leader_field: leader, **FOLLOW}
            jobs.append(FollowJob(f"{name}:{leader}", name, leader, params))
            leader += 1
    return Campaign(
        path=tmp_path / "jobs.yaml",
        base_url="http://unused",
        settings=Settings(**settings),
        accounts=accounts,
        jobs=tuple(jobs),
    )


@dataclass
class Outcome:
    stats: CampaignStats
    results: dict[str, JobResult] = field(default_factory=dict)


def accounts_of(campaign: Campaign) -> dict[str, str]:
    """The simulator's key -> secret table for ``campaign``."""
    return {a.api_key: a.secret_key for a in campaign.accounts.values()}


async def run_against(
    sim: Simulator,
    campaign: Campaign,
    *,
    results: Path | None = None,
    on_runner: Callable[[WorkerPool], None] | None = None,
) -> Outcome:
    """Run the jobs of ``campaign`` not yet ok in ``results`` against the started ``sim``."""
    assert sim.base_url is not None
    log = ResultLog(results or campaign.path.with_suffix(".results.jsonl"))
    done = log.open().ok_jobs()
    outcome = Outcome(CampaignStats())
    collector = Collector(log, on_result=lambda r: outcome.results.__setitem__(r.job, r))
    settings = campaign.settings
    try:
        async with XtClient(sim.base_url, settings.api, timeout=settings.timeout) as client:
            runner = WorkerPool(campaign, client, collector, rng=random.Random(7))
            if on_runner is not None:
                on_runner(runner)
            jobs = [j for j in campaign.jobs if j.id not in done]
            collector.stats.total = len(jobs)
            outcome.stats = await runner.process(jobs)
    finally:
        log.close()
    return outcome
