"""Asking the exchange what already took, before sending again.

XT has no idempotency key, but under api v1 its account endpoints can say what an account
holds: ``my-leaders`` lists whom it follows (by leader account id) and
``follow-leader-config`` with which settings. ``Reader`` makes those calls signed, through
the run's limits, and retried as follows are (``policy``). ``reconcile`` uses them for the
jobs an earlier run left uncertain (an intent line, or an ambiguous failure): a follow in
place with the job's settings, or a leader no longer followed for an unfollow, is on
record as ok without sending; anything else is sent again, flagged ambiguous when the
exchange could not be read, never silently ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from engine.campaign import Account, FollowJob, FollowValue, Settings
from engine.client import Answer, XtClient
from engine.clock import iso_utc, wall_clock
from engine.limiter import Limits
from engine.policy import Verdict, escalate, judge, scrub
from engine.profiles import LEADER_CONFIG_PATH, MY_LEADERS_PATH
from engine.results import JobResult
from engine.sources import JobProgress

#: my-leaders pages of this many, and no more pages than this (a loop guard).
PAGE = 100
MAX_PAGES = 1000
_NUMBERS = ("followVal", "followLoss", "triggerStopRate", "triggerProfitRate")


class ReadError(Exception):
    """An account endpoint could not be read; ``code`` is XT's ``mc`` when it answered."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Reader:
    """Signed reads of XT's account endpoints, limited and retried as follows are."""

    def __init__(
        self,
        client: XtClient,
        limits: Limits,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        halted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client, self.limits, self.settings = client, limits, settings
        self.rng = rng or random.Random()
        self.halted = halted

    async def read(
        self, account: Account, path: str, query: Mapping[str, object] | None = None
    ) -> Any:
        """The ``result`` of ``GET path?query`` for ``account``. Raises ``ReadError``."""
        name, _ = self.limits.key_of(account.api_key, account.name, read=True)
        limiter = self.limits.limiter(name)
        skews = 0
        attempt = 0
        while True:
            if self.halted():
                raise ReadError(f"{path}: stopped before it was read")
            attempt += 1
            lane = await limiter.acquire()
            outcome: Answer | Exception
            try:
                key, secret = account.api_key, account.secret_key
                request = self.client.prepare_read(key, secret, path, query)
                outcome = await self.client.send(request, partial(limiter.sent, lane))
            except Exception as exc:  # a TransportError, or anything: named, never raised raw
                outcome = exc
            finally:
                limiter.release(lane)
            decision = judge(outcome)
            if decision.verdict is Verdict.OK and isinstance(outcome, Answer):
                assert outcome.envelope is not None
                return outcome.envelope.result
            skews += decision.resync_clock
            step = escalate(
                decision,
                account=account.name,
                attempts=attempt,
                max_attempts=self.settings.max_attempts,
                skews=skews,
                risk_strikes=0,
                stopping=self.halted(),
                max_retry_after=self.settings.max_retry_after,
                period=limiter.period,
                rng=self.rng,
            )
            if step.widen_margin:
                limiter.widen()
            if step.pause_key:
                limiter.pause(step.pause_key)
            if step.sync_clock:
                with contextlib.suppress(Exception):
                    await self.client.sync_clock()
            if step.finish is not None:
                error = scrub(step.finish.error or "refused", account.secret_key)
                raise ReadError(f"{path}: {error}", decision.code)
            await asyncio.sleep(step.retry_in)


async def followed(reader: Reader, account: Account) -> set[int]:
    """The leader account ids ``account`` follows now (``my-leaders``, every page)."""
    leaders: set[int] = set()
    start: object = None
    for _ in range(MAX_PAGES):
        query: dict[str, object] = {"type": 1, "direction": "NEXT", "limit": PAGE}
        if start is not None:
            query["id"] = start
        result = await reader.read(account, MY_LEADERS_PATH, query)
        items = result.get("items") if isinstance(result, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ReadError(f"{MY_LEADERS_PATH}: an answer without a list of items")
        leaders.update(i["accountId"] for i in items if isinstance(i.get("accountId"), int))
        if not result.get("hasNext") or not items:
            return leaders
        start = items[-1].get("id")
    raise ReadError(f"{MY_LEADERS_PATH}: more than {MAX_PAGES} pages")


@dataclass(frozen=True, slots=True)
class Difference:
    """One follow setting the file and the exchange disagree on."""

    field: str
    wanted: FollowValue
    found: Any


def drift(params: Mapping[str, FollowValue], config: Any) -> list[Difference]:
    """The settings of ``params`` (a follow job's) that ``config`` (follow-leader-config's
    result) does not hold; the fields the job leaves out are not compared."""
    config = config if isinstance(config, dict) else {}
    found: list[Difference] = []
    for field, wanted in params.items():
        if field in ("leaderAccountId", "leaderOrderId"):
            continue
        if field == "symbols":
            have = config.get("followSymbols")
            same = isinstance(have, list) and set(have) == set(str(wanted).split(","))
        elif field in _NUMBERS:
            have = config.get(field)
            same = _number(have) == wanted
        else:
            have = config.get(field)
            same = have == wanted and type(have) is type(wanted)
        if not same:
            found.append(Difference(field, wanted, have))
    return found


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    with contextlib.suppress(InvalidOperation):
        return Decimal(str(value))
    return None


@dataclass(frozen=True, slots=True)
class Reconciled:
    #: Jobs found in place: on record as ok without sending.
    in_place: tuple[FollowJob, ...]
    #: Jobs to send again, each with what its progress already says.
    again: tuple[JobProgress, ...]
    #: Accounts that could not be read, and why: their jobs go again, flagged ambiguous.
    unread: Mapping[str, str]


async def reconcile(
    reader: Reader, jobs: Iterable[FollowJob], accounts: Mapping[str, Account]
) -> Reconciled:
    """Ask the exchange about each of ``jobs`` (uncertain after an earlier run), account by
    account, the accounts side by side."""
    by_account: dict[str, list[FollowJob]] = {}
    for job in jobs:
        by_account.setdefault(job.account, []).append(job)
    in_place: list[FollowJob] = []
    again: list[JobProgress] = []
    unread: dict[str, str] = {}

    async def one(name: str, mine: list[FollowJob]) -> None:
        account = accounts[name]
        try:
            leaders = await followed(reader, account)
            for job in mine:
                if await _in_place(reader, account, job, leaders):
                    in_place.append(job)
                else:  # the exchange says it did not take: sent again, not ambiguous
                    again.append(JobProgress(job))
        except ReadError as exc:
            unread[name] = str(exc)
            done = {j.id for j in in_place} | {p.job.id for p in again}
            unknown = (j for j in mine if j.id not in done)
            again.extend(JobProgress(j, sent=True, ambiguous=True) for j in unknown)

    await asyncio.gather(*(one(name, mine) for name, mine in by_account.items()))
    return Reconciled(tuple(in_place), tuple(again), unread)


async def _in_place(reader: Reader, account: Account, job: FollowJob, leaders: set[int]) -> bool:
    if job.action == "unfollow":
        return job.leader_id not in leaders
    if job.leader_id not in leaders:
        return False
    query = {"leaderAccountId": job.leader_id}
    return not drift(job.params, await reader.read(account, LEADER_CONFIG_PATH, query))


def reconciled_line(job: FollowJob, leader_field: str, finished_at: str) -> JobResult:
    """The results line of a job found in place: ok, sent by an earlier run, not again."""
    return JobResult(
        job=job.id,
        account=job.account,
        leader_field=leader_field,
        leader_id=job.leader_id,
        status="ok",
        rc=None,
        mc=None,
        http_status=None,
        attempts=0,
        error=None,
        latency_ms=None,
        finished_at=finished_at,
        sent=True,
        reconciled=True,
    )


async def settle_taken(
    reader: Reader,
    accounts: Mapping[str, Account],
    finish: Callable[[JobResult], object],
    warn: Callable[[str], None],
    taken: list[JobProgress],
) -> list[JobProgress]:
    """Jobs a worker took from one declared dead while their attempt was on the wire (sent,
    ambiguous): those the exchange holds in place go on record ok (``finish``), unsent; the
    rest are returned, to send, no longer ambiguous where the exchange said it had not taken
    them. Never raises: what could not be asked is sent again, flagged ambiguous, as it came."""
    by_id = {p.job.id: p for p in taken}
    try:
        found = await reconcile(reader, [p.job for p in taken], accounts)
    except Exception as exc:  # a bug, not the exchange (reconcile names what it could not read)
        warn(
            f"could not ask the exchange about {len(taken)} jobs taken from a dead worker "
            f"({exc!r}): sending them again, flagged ambiguous"
        )
        return taken
    for account, reason in found.unread.items():
        warn(unread_note(account, reason))
    leader_field = reader.settings.api.leader_field
    for job in found.in_place:
        finish(reconciled_line(job, leader_field, iso_utc(wall_clock(), "milliseconds")))
    again = []
    for fresh in found.again:
        progress = by_id[fresh.job.id]
        progress.ambiguous = fresh.ambiguous
        again.append(progress)
    return again


def unread_note(account: str, reason: str) -> str:
    return (
        f"could not ask the exchange about {account}'s jobs ({reason}): "
        "sending them again, flagged ambiguous"
    )
