"""The worker pool: every job through its key's limiter, as fast as allowed.

Jobs come from a ``JobSource`` as they fall due. One dispatcher per limit takes that
limit's jobs in order, waits for a concurrency slot and for its limiter, and starts the
attempt without waiting for it, so a key keeps several requests in flight and a slow or
throttled key never holds up another. After each attempt ``policy`` says what the outcome
means and what comes next (a ``Step``); the pool only carries steps out: a retry goes back
to the source and comes round through the limiter again, signed afresh. Finished jobs go
to the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial

from engine.aio import Turns, first_of
from engine.campaign import Account, Campaign, FollowJob, Settings
from engine.client import AmbiguousError, Answer, XtClient
from engine.clock import Clock, iso_utc, wall_clock
from engine.collector import CampaignStats, Collector, KeyStats
from engine.gctune import collector_tuned
from engine.limiter import Limiter, Limits, LocalLimits
from engine.policy import Decision, Step, Verdict, escalate, judge, scrub
from engine.profiles import ACCOUNT_ENDPOINTS_RATE
from engine.results import JobResult
from engine.sources import JobProgress, JobSource, MemorySource

#: Seconds that requests in flight get to finish after a stop.
GRACE_SECONDS = 5.0
#: Keys that start requests in one turn of the event loop at most (each starts what its
#: limiter lets go at once): those started before leave while more start, rather than all
#: after all of them have started (``aio.Turns``).
STARTS_PER_TURN = 8
#: A clock measured this recently is not measured again.
CLOCK_SYNC_INTERVAL = 5.0


@dataclass(slots=True, eq=False)
class _Key:
    """One limit's share of the work."""

    limiter: Limiter
    queue: asyncio.Queue[_Job]
    stats: KeyStats
    #: Set when the limit's remaining jobs are to fail unsent, and why.
    disabled: str | None = None
    #: Loop time the limiter's margin was last widened: a 429 to a request admitted before
    #: then tells of the old margin only, already widened.
    widened_at: float = float("-inf")


@dataclass(slots=True, eq=False)
class _Job:
    """A job the pool holds: its progress, and what it knows of the current attempt."""

    progress: JobProgress
    account: Account
    key: _Key
    in_flight: bool = False
    #: Loop time the limiter admitted the current attempt.
    admitted_at: float = 0.0
    #: The current attempt's request was written to the connection.
    left: bool = False
    latency: float | None = None
    answer: Answer | None = None
    decision: Decision | None = None


class WorkerPool:
    def __init__(
        self,
        campaign: Campaign,
        client: XtClient,
        collector: Collector,
        *,
        rng: random.Random | None = None,
        grace: float = GRACE_SECONDS,
        clock: Clock = wall_clock,
        halted: Callable[[], bool] = lambda: False,
        limits: Limits | None = None,
    ) -> None:
        """``halted`` says, synchronously, that a stop was asked for (a signal handler may
        have seen it before the loop did): no request starts once it is true."""
        self.campaign = campaign
        self.settings = settings = campaign.settings
        self.client = client
        self.collector = collector
        self.grace = grace
        self.clock = clock
        self.limits = limits or local_limits(settings)
        self._halted = halted
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._turns = Turns(STARTS_PER_TURN)
        self._keys: dict[str, _Key] = {}
        self._open: dict[str, _Job] = {}
        self._disabled: dict[str, str] = {}
        self._risk_strikes: Counter[str] = Counter()
        self._source: JobSource = MemorySource(())
        self._dispatchers: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._last_clock_sync = -CLOCK_SYNC_INTERVAL

    @property
    def stats(self) -> CampaignStats:
        return self.collector.stats

    async def process(self, jobs: Iterable[FollowJob | JobProgress]) -> CampaignStats:
        """Run ``jobs`` until each is finished or the pool is stopped."""
        source = MemorySource(jobs, self.clock)
        self.stats.total = len(source.progress)
        return await self.serve(source)

    async def serve(self, source: JobSource) -> CampaignStats:
        """Run what ``source`` delivers until it is exhausted or the pool is stopped."""
        self._source = source
        with collector_tuned():
            if not (self._stopping.is_set() or self._halted()):
                source.start(self._deliver)
                await first_of(source.exhausted(), self._stopping.wait())
            await self._wind_down()
        self.stats.ended = time.monotonic()
        return self.stats

    def disable_account(self, account: str, reason: str) -> None:
        """Fail ``account``'s jobs unsent from now on, for ``reason``."""
        self._disabled.setdefault(account, reason)

    def stop(self) -> None:
        """Stop dispatching; requests in flight get the grace period to finish."""
        self._stopping.set()

    def abort(self) -> None:
        """Stop at once: requests in flight are recorded as interrupted, unanswered."""
        self._stopping.set()
        self._aborting.set()

    def _deliver(self, progress: JobProgress) -> None:
        """A job fell due (again): onto its limit's queue, whose dispatcher starts with it."""
        if self._stopping.is_set():
            return
        job = self._open.get(progress.job.id)
        if job is None:
            account = self.campaign.accounts[progress.job.account]
            job = self._open[progress.job.id] = _Job(progress, account, self._key_for(account))
        job.key.queue.put_nowait(job)

    def _key_for(self, account: Account) -> _Key:
        name, label = self.limits.key_of(account.api_key, account.name)
        key = self._keys.get(name)
        if key is None:
            limiter = self.limits.limiter(name)
            key = _Key(limiter, asyncio.Queue(), KeyStats(label, limiter.period))
            self._keys[name] = key
            self.stats.keys[name] = key.stats
            self._spawn(self._dispatch(key), self._dispatchers)
        return key

    def _spawn(self, work: Coroutine[None, None, None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(partial(self._reap, tasks))

    def _reap(self, tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
        """A task ended: an error nobody expected stops the run, named, never silently."""
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.stats.internal_error = self.stats.internal_error or f"internal error: {exc!r}"
            self.stop()

    async def _dispatch(self, key: _Key) -> None:
        loop = asyncio.get_running_loop()
        turn: int | None = None
        while not self._stopping.is_set():
            job = await key.queue.get()
            if self._drop_if_disabled(key, job):
                continue
            await self._slots.acquire()
            try:
                lane = await key.limiter.acquire()
            except BaseException:
                self._slots.release()
                raise
            try:
                turn = await self._turns.take(turn)
            except BaseException:
                key.limiter.release(lane)
                self._slots.release()
                raise
            # The account may have been rejected, or the run stopped, while this one waited.
            if self._stopping.is_set() or self._halted() or self._drop_if_disabled(key, job):
                key.limiter.release(lane)
                self._slots.release()
                continue
            job.admitted_at = loop.time()
            key.stats.sent_at(job.admitted_at)
            job.in_flight = True
            self._spawn(self._attempt(key, job, lane), self._in_flight)

    def _drop_if_disabled(self, key: _Key, job: _Job) -> bool:
        """Fail ``job`` unsent if its account or its limit was given up; True if so."""
        reason = key.disabled or self._disabled.get(job.account.name)
        if reason is not None:
            self._finish(key, job, Decision(Verdict.FAIL, reason))
        return reason is not None

    async def _attempt(self, key: _Key, job: _Job, lane: int) -> None:
        loop = asyncio.get_running_loop()
        progress, account = job.progress, job.account
        if self._halted():  # a stop came since this was dispatched: it never starts
            key.limiter.release(lane)
            self._slots.release()
            job.in_flight = False
            return
        if progress.attempts == 0 and not self.collector.intend(self._line(job, "sending")):
            # Not even its intent could be recorded: it must not leave.
            key.limiter.release(lane)
            self._slots.release()
            job.in_flight = False
            self.stop()
            return
        progress.attempts += 1
        job.left = False
        started = loop.time()
        outcome: Answer | Exception | None = None
        try:
            on_sent = partial(self._left, key, job, lane)
            if progress.job.action == "unfollow":
                outcome = await self.client.unfollow(
                    account.api_key, account.secret_key, progress.job.leader_id, on_sent
                )
            else:
                outcome = await self.client.follow(
                    account.api_key, account.secret_key, progress.job.params, on_sent
                )
        except Exception as exc:  # a TransportError, or anything: no job is ever left open
            outcome = exc
        finally:
            if isinstance(outcome, Answer):  # it had arrived: its lane may count from now
                key.limiter.answered(lane)
            key.limiter.release(lane)
            self._slots.release()
        assert outcome is not None
        job.in_flight = False
        job.latency = loop.time() - started
        reached = job.left or isinstance(outcome, (Answer, AmbiguousError))
        progress.sent |= reached
        job.answer = outcome if isinstance(outcome, Answer) else None
        decision = job.decision = judge(outcome, left=reached)
        progress.ambiguous |= decision.ambiguous
        progress.skews += decision.resync_clock
        self._risk_strikes[account.name] += decision.risk_control
        step = escalate(
            decision,
            account=account.name,
            attempts=progress.attempts,
            max_attempts=self.settings.max_attempts,
            skews=progress.skews,
            risk_strikes=self._risk_strikes[account.name],
            stopping=self._stopping.is_set(),
            max_retry_after=self.settings.max_retry_after,
            period=key.limiter.period,
            rng=self._rng,
        )
        await self._carry_out(key, job, step)

    def _left(self, key: _Key, job: _Job, lane: int) -> None:
        """``job``'s request is leaving now: its lane counts from here."""
        job.left = True
        job.progress.sent_at.append(iso_utc(self.clock(), "milliseconds"))
        key.limiter.sent(lane)

    async def _carry_out(self, key: _Key, job: _Job, step: Step) -> None:
        if step.widen_margin and job.admitted_at > key.widened_at:
            key.stats.margin = key.limiter.widen()
            key.widened_at = asyncio.get_running_loop().time()
        if step.pause_key:
            key.limiter.pause(step.pause_key)
        if step.disable_account:
            self.disable_account(job.account.name, step.disable_account)
        if step.disable_key and key.disabled is None:
            key.disabled = step.disable_key
        if step.stop_run:
            self.stats.stopped_by = self.stats.stopped_by or step.stop_run
            self.stop()
        if step.sync_clock:
            await self._sync_clock()
        if step.finish is None:
            self._source.retry(job.progress, step.retry_in)
        else:
            self._finish(key, job, step.finish)

    async def _sync_clock(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_clock_sync < CLOCK_SYNC_INTERVAL:
            return
        self._last_clock_sync = loop.time()
        # A failed sync is no new failure: the retry will say what is wrong.
        with contextlib.suppress(Exception):
            await self.client.sync_clock()

    def _finish(self, key: _Key, job: _Job, decision: Decision) -> None:
        self._open.pop(job.progress.job.id, None)
        status = "ok" if decision.verdict is Verdict.OK else "failed"
        result = self._line(job, status, decision.error)
        self._source.finish(job.progress)
        if not self.collector.finish(result):
            self.stop()

    def _line(self, job: _Job, status: str, error: str | None = None) -> JobResult:
        """``job``'s results line as it stands: its intent (``sending``) or its outcome."""
        progress, answer = job.progress, job.answer
        envelope = answer.envelope if answer is not None else None
        return JobResult(
            job=progress.job.id,
            account=job.account.name,
            leader_field=self.settings.api.leader_field,
            leader_id=progress.job.leader_id,
            status=status,  # type: ignore[arg-type]
            rc=envelope.rc if envelope is not None else None,
            mc=envelope.mc if envelope is not None else None,
            http_status=answer.http_status if answer is not None else None,
            attempts=progress.attempts,
            error=scrub(error, job.account.secret_key) if error else None,
            latency_ms=round(job.latency * 1000, 1) if job.latency is not None else None,
            finished_at=iso_utc(self.clock(), "milliseconds"),
            ambiguous=progress.ambiguous,
            sent=progress.sent,
            sent_at=tuple(progress.sent_at),
            result=envelope.result if envelope is not None else None,
        )

    async def _wind_down(self) -> None:
        """After a stop: let requests in flight finish, then record what was left open."""
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        if self._in_flight:
            in_flight = asyncio.gather(*self._in_flight, return_exceptions=True)
            await first_of(in_flight, self._aborting.wait(), timeout=self.grace)
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for job in list(self._open.values()):
            attempts = job.progress.attempts
            if attempts == 0:
                continue  # never attempted: nothing to record, a resume sends it
            if job.in_flight and job.left:
                job.progress.ambiguous = job.progress.sent = True
                error = "interrupted with the request in flight: the exchange may have accepted it"
            elif job.in_flight:
                error = "interrupted before the request left: not sent"
            else:
                last = job.decision.error if job.decision else "none"
                error = f"interrupted after {attempts} attempts; last error: {last}"
            self._finish(job.key, job, Decision(Verdict.FAIL, error))


def local_limits(settings: Settings) -> LocalLimits:
    """This process's limits for ``settings``: follows at ``rate_limit``, account reads at
    XT's 2/s per IP."""
    return LocalLimits(
        settings.rate_limit,
        settings.margin,
        per_ip=settings.api.per_ip,
        read_rate=ACCOUNT_ENDPOINTS_RATE,
    )
