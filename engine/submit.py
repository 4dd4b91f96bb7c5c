"""Queuing a campaign in Redis: ``follow-engine submit``, and the first half of ``run --redis``.

A campaign is known by its name: the job file's absolute path unless ``--campaign`` names it.
Each job is queued once: one already ok, queued or taken by a worker is left as it is, and
one that failed is queued again, so submitting the same file twice queues nothing twice. What
goes to Redis is what a worker needs to send a job and nothing secret: the settings, the base
URL, each job's account name, its API key's hash and its body.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.campaign import Account, Campaign, FollowJob, Settings
from engine.profiles import PROFILES
from engine.redis_store import Store, campaign_id, encode_job, key_hash


def name_of(jobs_file: Path, given: str | None) -> str:
    """A campaign's name in Redis: ``given``, else the job file's absolute path."""
    return given or str(jobs_file.resolve())


def encode_spec(campaign: Campaign) -> str:
    """How the campaign's jobs are sent: its settings and base URL."""
    settings = dataclasses.asdict(campaign.settings)
    settings["api"] = campaign.settings.api.name
    return json.dumps({"base_url": campaign.base_url, "settings": settings})


def decode_spec(name: str, text: str, accounts: dict[str, Account]) -> Campaign:
    """The campaign a worker runs: the submitted settings with its own ``accounts``."""
    data = json.loads(text)
    given = data["settings"]
    known = {f.name for f in dataclasses.fields(Settings)}
    fields = {k: v for k, v in given.items() if k in known}
    fields["api"] = PROFILES[given["api"]]
    return Campaign(Path(name), data["base_url"], Settings(**fields), accounts, ())


@dataclass(frozen=True, slots=True)
class Submitted:
    campaign: str
    name: str
    queued: int
    #: Jobs already ok in Redis, left alone.
    ok: int
    #: Jobs already queued or taken by a worker, left alone.
    busy: int
    #: Of ``queued``, jobs that had failed.
    again: int
    #: The outcome log's last entry as the last job was queued: what follows is news.
    after: str


def _due_ms(job: FollowJob, start: datetime | None) -> int:
    moments = [m for m in (job.not_before, start) if m is not None]
    return int(max(moments).timestamp() * 1000) if moments else 0


async def submit(
    store: Store,
    campaign: Campaign,
    jobs: list[FollowJob],
    name: str,
    start: datetime | None = None,
) -> Submitted:
    """Queue ``jobs`` of ``campaign`` under ``name``; none sent before ``start`` (and each not
    before its own ``not_before``)."""
    cid = campaign_id(name)
    hashes = {a.name: key_hash(a.api_key) for a in campaign.accounts.values()}
    rows = [
        (
            job.id,
            hashes[job.account],
            job.account,
            encode_job(job, hashes[job.account]),
            _due_ms(job, start),
        )
        for job in jobs
    ]
    (queued, ok, busy, again), after = await store.submit(cid, name, encode_spec(campaign), rows)
    return Submitted(cid, name, queued, ok, busy, again, after)
