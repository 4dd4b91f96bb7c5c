"""The worker pool: every job through its key's limiter, as fast as allowed.

Jobs come from a ``JobSource`` as they fall due. One dispatcher per limit takes its jobs in
order and prepares each attempt ahead (signed, given a connection, its request waiting to be
written), so that it leaves the moment the limiter lets it go. After each attempt ``policy``
says what the outcome means and what comes next (a ``Step``); the pool only carries steps
out: a retry comes round through the limiter again, signed afresh. Finished jobs go to the
collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from functools import partial

from engine.aio import Slots, Turns, first_of
from engine.answers import Answer, Withheld
from engine.campaign import Account, Campaign, FollowJob
from engine.client import XtClient
from engine.clock import Clock, iso_utc, wall_clock
from engine.collector import CampaignStats, Collector, KeyStats
from engine.gctune import collector_tuned
from engine.limiter import Limits
from engine.policy import Decision, Step, Verdict
from engine.pooljobs import (
    BURST_PER_TURN,
    KEYS_PER_TURN,
    PREPARED_AHEAD,
    STALE_SHARE,
    HeldJob,
    KeyWork,
    job_line,
    local_limits,
    next_step,
)
from engine.results import JobResult
from engine.sources import JobProgress, JobSource, MemorySource

__all__ = ["WorkerPool", "local_limits"]

#: Seconds that requests in flight get to finish after a stop.
GRACE_SECONDS = 5.0
#: A clock measured this recently is not measured again.
CLOCK_SYNC_INTERVAL = 5.0


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
        shared_slots: asyncio.Semaphore | None = None,
    ) -> None:
        """``halted`` says, synchronously, that a stop was asked for (a signal handler may
        have seen it before the loop did): no request leaves once it is true.
        ``shared_slots``: requests in flight of every pool of this process together."""
        self.campaign = campaign
        self.settings = settings = campaign.settings
        self.client = client
        self.collector = collector
        self.grace = grace
        self.clock = clock
        self.limits = limits or local_limits(settings)
        self._halted = halted
        self._rng = rng or random.Random()
        self._slots = Slots(settings.concurrency, shared_slots)
        self._turns = Turns(KEYS_PER_TURN)
        self._stale_after = settings.recv_window_ms / 1000 * STALE_SHARE
        self._keys: dict[str, KeyWork] = {}
        self._open: dict[str, HeldJob] = {}
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
            job = self._open[progress.job.id] = HeldJob(progress, account, self._key_for(account))
        job.key.put(job)

    def _key_for(self, account: Account) -> KeyWork:
        name, label = self.limits.key_of(account.api_key, account.name)
        key = self._keys.get(name)
        if key is None:
            limiter = self.limits.limiter(name)
            stats = KeyStats(label, limiter.period)
            key = KeyWork(limiter, stats, ahead=PREPARED_AHEAD)
            self._keys[name] = key
            self.stats.keys[name] = key.stats
            self._spawn(self._prepare(key), self._dispatchers)
            admit = key.admit_in_turn(self._stale_after, self._hold_back, self._stopping)
            self._spawn(admit, self._dispatchers)
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

    async def _prepare(self, key: KeyWork) -> None:
        """Prepare the key's jobs in order, as far ahead as ``KeyWork.room`` allows."""
        turn, started = -1, 0
        try:
            while not self._stopping.is_set():
                if not key.room():
                    key.changed.clear()
                    await key.changed.wait()
                    continue
                await key.job_due()
                while (pause := key.paused_until - asyncio.get_running_loop().time()) > 1e-3:
                    await asyncio.sleep(pause)  # signed now, it would wait the pause out
                await self._slots.acquire()
                if turn != self._turns.turn or started == BURST_PER_TURN:
                    try:
                        turn, started = await self._turns.take(), 0
                    except BaseException:
                        self._slots.release()
                        raise
                started += 1
                if self._stopping.is_set() or self._halted():
                    self._slots.release()
                    continue
                job = key.next_job()
                if self._drop_if_disabled(key, job):
                    self._slots.release()
                    continue
                self._spawn(self._attempt(key, job, key.prepare(job)), self._in_flight)
        finally:
            key.withhold_prepared()

    def _hold_back(self, job: HeldJob) -> str | None:
        """Why ``job``, let go by its limiter, must not leave after all, if it must not (its
        account or limit given up: it fails unsent when next taken)."""
        if self._stopping.is_set() or self._halted():
            return "not sent: the run stopped"
        return self._given_up(job)

    def _given_up(self, job: HeldJob) -> str | None:
        return job.key.disabled or self._disabled.get(job.account.name)

    def _drop_if_disabled(self, key: KeyWork, job: HeldJob) -> bool:
        """Fail ``job`` unsent if its account or its limit was given up; True if so."""
        if (reason := self._given_up(job)) is not None:
            self._finish(key, job, Decision(Verdict.FAIL, reason))
        return reason is not None

    async def _attempt(self, key: KeyWork, job: HeldJob, gate: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        progress = job.progress
        attempts = progress.attempts
        outcome: Answer | Exception | None = None
        try:
            outcome = await self._send(key, job, gate)
        except Withheld:
            outcome = None
        except Exception as exc:  # a TransportError, or anything: no job is ever left open
            outcome = exc
        finally:
            key.done_with(gate, answered=isinstance(outcome, Answer))
            self._slots.release()
        if outcome is None:  # withheld: no attempt was made; whoever withheld it said what next
            if job.gate is gate:
                job.in_flight = False
            return
        job.in_flight = False
        if progress.attempts == attempts:  # failed before it could leave: an attempt still
            progress.attempts += 1
        job.latency = loop.time() - (job.departed_at or job.prepared_at)
        step = next_step(
            job,
            outcome,
            self.settings,
            self._risk_strikes,
            stopping=self._stopping.is_set(),
            period=key.limiter.period,
            rng=self._rng,
        )
        await self._carry_out(key, job, step)

    async def _send(self, key: KeyWork, job: HeldJob, gate: asyncio.Future[int]) -> Answer:
        """``job``'s request, written as its limiter lets it go; the answer."""
        on_sent, ready = partial(self._left, key, job), partial(self._ready, job, gate)
        spec, api_key, secret = job.progress.job, job.account.api_key, job.account.secret_key
        if spec.action == "unfollow":
            return await self.client.unfollow(api_key, secret, spec.leader_id, on_sent, ready=ready)
        return await self.client.follow(api_key, secret, spec.params, on_sent, ready=ready)

    async def _ready(self, job: HeldJob, gate: asyncio.Future[int]) -> None:
        """``job``'s request is about to be written: wait until the limiter lets it go, and
        put its intent on record first. Raises ``Withheld`` when it must not leave."""
        job.lane = await gate
        if self._halted():  # a stop asked for since it was let go
            raise Withheld("not sent: the run stopped")
        progress = job.progress
        if progress.attempts == 0 and not self.collector.intend(self._line(job, "sending")):
            self.stop()  # not even its intent could be recorded: it must not leave
            raise Withheld("not sent: its intent could not be recorded")
        progress.attempts += 1
        job.departed_at = asyncio.get_running_loop().time()

    def _left(self, key: KeyWork, job: HeldJob, opened: bool) -> None:
        """``job``'s request is leaving now (the first on its connection if ``opened``): its
        lane counts from here."""
        job.left = True
        job.progress.sent_at.append(iso_utc(self.clock(), "milliseconds"))
        key.limiter.sent(job.lane, opened=opened)

    async def _carry_out(self, key: KeyWork, job: HeldJob, step: Step) -> None:
        if step.widen_margin and job.admitted_at > key.widened_at:
            key.stats.margin = key.limiter.widen()
            key.widened_at = asyncio.get_running_loop().time()
        if step.pause_key:
            key.pause(step.pause_key)
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

    def _finish(self, key: KeyWork, job: HeldJob, decision: Decision) -> None:
        self._open.pop(job.progress.job.id, None)
        status = "ok" if decision.verdict is Verdict.OK else "failed"
        result = self._line(job, status, decision.error)
        self._source.finish(job.progress)
        if not self.collector.finish(result):
            self.stop()

    def _line(self, job: HeldJob, status: str, error: str | None = None) -> JobResult:
        finished_at = iso_utc(self.clock(), "milliseconds")
        return job_line(job, self.settings.api.leader_field, status, finished_at, error)

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
            if job.progress.attempts:  # else never attempted: nothing to record, a resume sends it
                self._finish(job.key, job, Decision(Verdict.FAIL, job.interrupted()))
