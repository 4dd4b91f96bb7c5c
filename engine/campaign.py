"""The validated campaign: plain data the engine runs, made by ``jobfile.load``.

Nothing here knows YAML or pydantic; by the time a ``Campaign`` exists every
value has been checked and every ``${VAR}`` resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from engine.profiles import V4, ApiProfile

#: A follow parameter as it goes on the wire. ``Decimal`` keeps the digits the user wrote.
FollowValue = bool | int | Decimal | str

DEFAULT_BASE_URL = "https://sapi.xt.com"


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    api_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class FollowJob:
    id: str
    account: str
    #: The leader id (``leaderOrderId`` under v4, ``leaderAccountId`` under v1), exact.
    leader_id: int
    #: The request body's fields, leader id first, optional ones left out when absent.
    params: Mapping[str, FollowValue]
    #: Line of the job in the job file, for messages.
    line: int = 0
    not_before: datetime | None = None
    #: ``follow``, or ``unfollow``: stop following the leader (``params`` is then its id).
    action: str = "follow"


@dataclass(frozen=True, slots=True)
class Settings:
    """How a run behaves: the job file's ``settings:`` with command-line flags applied."""

    api: ApiProfile = V4
    #: Requests per second per API key (per IP under a ``per_ip`` profile).
    rate_limit: float = 10
    #: Requests in flight at most, all keys together. High, so that it does not hold back
    #: what the limiters release at once on wide campaigns (500 keys x 4 jobs: 2,000).
    concurrency: int = 2048
    max_attempts: int = 5
    #: Seconds per request.
    timeout: float = 10
    recv_window_ms: int = 5000
    #: How much longer than the window a limiter slot waits (0.05: 5 %), for network jitter;
    #: a key that still draws a 429 has its own margin doubled.
    margin: float = 0.05
    #: A ``Retry-After`` longer than this fails the job (and its key's other jobs) instead.
    max_retry_after: float = 300
    #: The validate headers' spelling: ``xt-validate`` (ccxt, pyxt) or ``validate`` (XT's
    #: current documentation and Java SDK).
    headers: str = "xt-validate"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a campaign runs: once ``at`` a time, or on a ``cron`` expression."""

    at: datetime | None = None
    cron: str | None = None
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Campaign:
    path: Path
    base_url: str
    settings: Settings
    accounts: Mapping[str, Account]
    jobs: tuple[FollowJob, ...]
    schedule: Schedule | None = None
    #: Things worth telling the user that do not stop the run (a literal secret, say).
    warnings: tuple[str, ...] = ()
