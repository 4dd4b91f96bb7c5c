"""What a run would send: the jobs not already ok, and (``run --dry-run``) their requests."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.campaign import Campaign, FollowJob
from engine.client import PreparedRequest, XtClient
from engine.past import read_states


def pending(jobs: Iterable[FollowJob], done: Container[str]) -> list[FollowJob]:
    """The jobs a run sends: those not already ok (``done``)."""
    return [job for job in jobs if job.id not in done]


@dataclass(frozen=True, slots=True)
class DryRun:
    """What a run would send now: each job with its request, signed as it is read (never
    all of them held signed at once), sent never."""

    requests: Iterator[tuple[FollowJob, PreparedRequest]]
    #: How many ``requests`` yields.
    count: int
    #: Jobs left out because the results file has them ok already.
    skipped: int


def dry_run(campaign: Campaign, results: Path, fresh: bool = False) -> DryRun:
    """The requests a run would send first. ``results`` is only read: neither locked (a run
    may hold it) nor created. Raises ``ResultsFileError`` when it cannot be read."""
    try:
        done = set() if fresh else read_states(results).ok_jobs()
    except FileNotFoundError:
        done = set()
    jobs = pending(campaign.jobs, done)
    settings = campaign.settings
    client = XtClient(
        campaign.base_url,
        settings.api,
        recv_window_ms=settings.recv_window_ms,
        headers=settings.headers,
    )

    def request(job: FollowJob) -> PreparedRequest:
        account = campaign.accounts[job.account]
        if job.action == "unfollow":
            return client.prepare_cancel(account.api_key, account.secret_key, job.leader_id)
        return client.prepare(account.api_key, account.secret_key, job.params)

    skipped = len(campaign.jobs) - len(jobs)
    return DryRun(((job, request(job)) for job in jobs), len(jobs), skipped)
