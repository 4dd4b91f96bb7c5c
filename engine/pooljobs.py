"""What the worker pool holds of each limit and each job, and a job's results line.

A job's attempt is prepared (signed, given a connection) before its limiter lets it go; its
request then waits at its ``gate``, which the limit's dispatcher opens with the lane the
limiter gave it, or closes with ``Withheld`` when it must not go after all.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.answers import AmbiguousError, Answer, Withheld
from engine.campaign import Account, Settings
from engine.collector import KeyStats
from engine.limiter import Limiter, LocalLimits
from engine.policy import Decision, Step, escalate, judge, scrub
from engine.profiles import ACCOUNT_ENDPOINTS_RATE
from engine.results import JobResult
from engine.sources import JobProgress

#: Keys that start requests in one turn of the event loop at most, and requests one key
#: starts in a turn at most: those started before leave while more start, rather than all
#: after all have started (``aio.Turns``); a key's burst (XT: 10) goes together.
KEYS_PER_TURN = 8
BURST_PER_TURN = 10
#: Attempts of one key prepared ahead of the limiter letting them go: its next window.
PREPARED_AHEAD = 10
#: A prepared request signed longer ago than this share of the receive window when the
#: limiter lets it go (held back by a pause) is withheld and prepared again, signed afresh.
STALE_SHARE = 0.5


@dataclass(slots=True, eq=False)
class KeyWork:
    """One limit's share of the work."""

    limiter: Limiter
    stats: KeyStats
    #: Set when the limit's remaining jobs are to fail unsent, and why.
    disabled: str | None = None
    #: Loop time the limiter's margin was last widened: a 429 to a request admitted before
    #: then tells of the old margin only, already widened.
    widened_at: float = float("-inf")
    #: Loop time until which the pool paused the limiter: nothing is prepared meanwhile.
    paused_until: float = 0.0
    #: Jobs whose attempt is prepared (signed, given a connection) and waits for the limiter
    #: to let it go, in order.
    prepared: deque[HeldJob] = field(default_factory=deque)
    #: Prepared jobs at most.
    ahead: int = 1
    #: Jobs due, in order; before them, those withheld in their turn, in order.
    queue: deque[HeldJob] = field(default_factory=deque)
    again: deque[HeldJob] = field(default_factory=deque)
    #: Requests let go by the limiter and not yet done with.
    busy: int = 0
    #: Set when a job falls due, a prepared one is let go, or a request is done with: there
    #: may be room to prepare another.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a job is prepared.
    filled: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, job: HeldJob, *, again: bool = False) -> None:
        """``job`` is due: after the others, or ``again`` before them (withheld in its turn)."""
        (self.again if again else self.queue).append(job)
        self.changed.set()

    def has_next(self) -> bool:
        return bool(self.again or self.queue)

    async def job_due(self) -> None:
        """Return once a job is due."""
        while not self.has_next():
            self.changed.clear()
            await self.changed.wait()

    def next_job(self) -> HeldJob:
        """The first job due: taken as late as can be, so that one withheld meanwhile goes first."""
        return (self.again or self.queue).popleft()

    def room(self) -> bool:
        """Prepare one more job now: none is prepared (then wait for one), or the next is
        due and none of the key's requests is out, so it is prepared on a connection they
        have given back, not while they still leave."""
        if not self.prepared:
            return True
        return self.busy == 0 and len(self.prepared) < self.ahead and self.has_next()

    def prepare(self, job: HeldJob) -> asyncio.Future[int]:
        """``job``'s next attempt is being prepared: its gate, closed until it is let go."""
        loop = asyncio.get_running_loop()
        job.gate = gate = loop.create_future()
        job.in_flight, job.left, job.lane, job.departed_at = True, False, -1, None
        job.prepared_at = loop.time()
        self.prepared.append(job)
        self.filled.set()
        return gate

    async def admit(
        self, stale_after: float, hold_back: Callable[[HeldJob], str | None]
    ) -> list[HeldJob]:
        """Wait until the limiter lets the first prepared job go, then open its gate: its
        request leaves. It is withheld instead if ``hold_back`` says why, or if it was signed
        more than ``stale_after`` seconds ago (it waited out a pause, or its turn among the
        workers sharing the limit), and the lane goes to the next prepared job: a lane given
        back is lost to workers already waiting for a later one. Returns the jobs withheld."""
        head = self.prepared[0].gate
        assert head is not None
        if head.done():  # its attempt ended (it found no connection, say)
            self.prepared.popleft()
            self.changed.set()
            return []
        lane = await self.limiter.acquire()
        now = asyncio.get_running_loop().time()
        withheld = []
        while self.prepared:
            job = self.prepared.popleft()
            self.changed.set()
            gate = job.gate
            assert gate is not None
            if gate.done():  # ended, or withheld (a pause, a stop) while the lane was awaited
                continue
            reason = hold_back(job)
            if reason is None and now - job.prepared_at > stale_after:
                reason = "not sent: signed too long ago"
            if reason is not None:
                gate.set_exception(Withheld(reason))
                withheld.append(job)
                continue
            job.admitted_at = now
            self.stats.sent_at(now)
            self.busy += 1
            gate.set_result(lane)
            return withheld
        self.limiter.release(lane)
        return withheld

    async def admit_in_turn(
        self,
        stale_after: float,
        hold_back: Callable[[HeldJob], str | None],
        stopping: asyncio.Event,
    ) -> None:
        """Let the prepared jobs go, in order, as the limiter admits them (``admit``), until
        ``stopping``; those withheld come round again first."""
        while not stopping.is_set():
            if not self.prepared:
                self.filled.clear()
                await self.filled.wait()
                continue
            withheld = await self.admit(stale_after, hold_back)
            if not stopping.is_set():
                for job in withheld:
                    self.put(job, again=True)  # prepared afresh, or dropped, in its turn

    def done_with(self, gate: asyncio.Future[int], *, answered: bool) -> None:
        """An attempt ended: its lane given back if it was let go, the limiter told if it
        was ``answered`` (it had arrived: its lane may count from now)."""
        if not gate.done():
            gate.cancel()  # never let go: its turn is passed by
        if gate.cancelled() or gate.exception() is not None:
            return
        lane = gate.result()
        if answered:
            self.limiter.answered(lane)
        self.limiter.release(lane)
        self.busy -= 1
        self.changed.set()

    def pause(self, seconds: float) -> None:
        """Hold the limit back ``seconds``: nothing is prepared meanwhile, and what was
        prepared is withheld and comes round again, signed afresh, after."""
        self.limiter.pause(seconds)
        until = asyncio.get_running_loop().time() + seconds
        self.paused_until = max(self.paused_until, until)
        for job in self.withhold_prepared():
            self.put(job, again=True)

    def withhold_prepared(self) -> list[HeldJob]:
        """Hold back every prepared job not yet let go (a stop, a pause); those withheld."""
        withheld = []
        for job in self.prepared:
            if job.gate is not None and not job.gate.done():
                job.gate.set_exception(Withheld("not sent: held back before it left"))
                withheld.append(job)
        return withheld


@dataclass(slots=True, eq=False)
class HeldJob:
    """A job the pool holds: its progress, and what it knows of the current attempt."""

    progress: JobProgress
    account: Account
    key: KeyWork
    in_flight: bool = False
    #: Resolved with the lane the limiter let the current attempt go on, or with ``Withheld``
    #: when it must not go; the attempt's request waits for it before it is written.
    gate: asyncio.Future[int] | None = None
    #: The current attempt's lane, once let go (-1 before).
    lane: int = -1
    #: Loop times the current attempt was prepared, let go by the limiter, and written.
    prepared_at: float = 0.0
    admitted_at: float = 0.0
    departed_at: float | None = None
    #: The current attempt's request was written to the connection.
    left: bool = False
    latency: float | None = None
    answer: Answer | None = None
    decision: Decision | None = None

    def interrupted(self) -> str:
        """Why the job failed, when a stop left it open after an attempt."""
        if self.in_flight and self.left:
            self.progress.ambiguous = self.progress.sent = True
            return "interrupted with the request in flight: the exchange may have accepted it"
        if self.in_flight:
            return "interrupted before the request left: not sent"
        last = self.decision.error if self.decision else "none"
        return f"interrupted after {self.progress.attempts} attempts; last error: {last}"


def job_line(
    job: HeldJob, leader_field: str, status: str, finished_at: str, error: str | None = None
) -> JobResult:
    """``job``'s results line as it stands: its intent (``sending``) or its outcome."""
    progress, answer = job.progress, job.answer
    envelope = answer.envelope if answer is not None else None
    return JobResult(
        job=progress.job.id,
        account=job.account.name,
        leader_field=leader_field,
        leader_id=progress.job.leader_id,
        status=status,  # type: ignore[arg-type]
        rc=envelope.rc if envelope is not None else None,
        mc=envelope.mc if envelope is not None else None,
        http_status=answer.http_status if answer is not None else None,
        attempts=progress.attempts,
        error=scrub(error, job.account.secret_key) if error else None,
        latency_ms=round(job.latency * 1000, 1) if job.latency is not None else None,
        finished_at=finished_at,
        ambiguous=progress.ambiguous,
        sent=progress.sent,
        sent_at=tuple(progress.sent_at),
        result=envelope.result if envelope is not None else None,
    )


def next_step(
    job: HeldJob,
    outcome: Answer | Exception,
    settings: Settings,
    risk_strikes: Counter[str],
    *,
    stopping: bool,
    period: float,
    rng: random.Random,
) -> Step:
    """What ``outcome`` of ``job``'s attempt means (``policy.judge``) and, in the light of
    its history, what comes next (``policy.escalate``); the job's progress taken forward."""
    progress, account = job.progress, job.account.name
    reached = job.left or isinstance(outcome, (Answer, AmbiguousError))
    progress.sent |= reached
    job.answer = outcome if isinstance(outcome, Answer) else None
    decision = job.decision = judge(outcome, left=reached)
    progress.ambiguous |= decision.ambiguous
    progress.skews += decision.resync_clock
    risk_strikes[account] += decision.risk_control
    return escalate(
        decision,
        account=account,
        attempts=progress.attempts,
        max_attempts=settings.max_attempts,
        skews=progress.skews,
        risk_strikes=risk_strikes[account],
        stopping=stopping,
        max_retry_after=settings.max_retry_after,
        period=period,
        rng=rng,
    )


def local_limits(settings: Settings) -> LocalLimits:
    """This process's limits for ``settings``: follows at ``rate_limit``, account reads at
    XT's 2/s per IP."""
    return LocalLimits(
        settings.rate_limit,
        settings.margin,
        per_ip=settings.api.per_ip,
        read_rate=ACCOUNT_ENDPOINTS_RATE,
    )
