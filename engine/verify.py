"""What the exchange holds against what the job file says: ``follow-engine verify``.

For every account of the file, the leaders it follows (``my-leaders``) and, for those the
file names, its settings (``follow-leader-config``), read through the same limits and
retries as a run's. The drift: a follow the file asks for that is missing, a leader an
unfollow job names that is still followed, settings that differ field by field, and with
``strict`` a follow the file does not list at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine.campaign import Campaign, FollowJob, FollowValue
from engine.profiles import LEADER_CONFIG_PATH
from engine.reconcile import Difference, Reader, ReadError, drift, followed


@dataclass(frozen=True, slots=True)
class Drift:
    account: str
    leader: int
    #: ``missing``, ``still followed``, ``settings differ`` or ``not in the file``.
    kind: str
    job: str | None = None
    differences: tuple[Difference, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "leader": self.leader,
            "kind": self.kind,
            "job": self.job,
            "differences": [
                {"field": d.field, "file": _plain(d.wanted), "exchange": _plain(d.found)}
                for d in self.differences
            ],
        }


@dataclass
class Verification:
    drift: list[Drift] = field(default_factory=list)
    #: Accounts that could not be read, and why.
    unread: dict[str, str] = field(default_factory=dict)


async def verify(reader: Reader, campaign: Campaign, *, strict: bool = False) -> Verification:
    """The drift between ``campaign`` and what the exchange holds, every account at once."""
    found = Verification()
    jobs: dict[str, list[FollowJob]] = {name: [] for name in campaign.accounts}
    for job in campaign.jobs:
        jobs[job.account].append(job)

    async def one(name: str) -> list[Drift]:
        account = campaign.accounts[name]
        drifted: list[Drift] = []
        leaders = await followed(reader, account)
        for job in jobs[name]:
            if job.action == "unfollow":
                if job.leader_id in leaders:
                    drifted.append(Drift(name, job.leader_id, "still followed", job.id))
            elif job.leader_id not in leaders:
                drifted.append(Drift(name, job.leader_id, "missing", job.id))
            else:
                query = {"leaderAccountId": job.leader_id}
                config = await reader.read(account, LEADER_CONFIG_PATH, query)
                if differences := drift(job.params, config):
                    kind = "settings differ"
                    drifted.append(Drift(name, job.leader_id, kind, job.id, tuple(differences)))
        if strict:
            listed = {job.leader_id for job in jobs[name]}
            extra = sorted(leaders - listed)
            drifted.extend(Drift(name, leader, "not in the file") for leader in extra)
        return drifted

    async def guarded(name: str) -> None:
        try:
            found.drift.extend(await one(name))
        except ReadError as exc:
            found.unread[name] = str(exc)

    await asyncio.gather(*(guarded(name) for name in campaign.accounts))
    found.drift.sort(key=lambda d: (d.account, d.leader))
    return found


def _plain(value: FollowValue | Any) -> Any:
    """A value for JSON: exact numbers written as the user wrote them."""
    return format(value, "f") if isinstance(value, Decimal) else value
