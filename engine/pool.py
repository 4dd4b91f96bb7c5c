"""The worker pool: every job through its key's limiter, as fast as allowed.

One dispatcher per limiter key takes that key's jobs in order, waits for a
concurrency slot and for its limiter, and starts the attempt without waiting for
it, so a key keeps several requests in flight and a slow or throttled key never
holds up another. An attempt's outcome is judged by ``policy.judge``; a retry goes
back on its key's queue after its backoff, through the limiter again, signed
afresh. Finished jobs go to the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from engine.campaign import Account, Campaign, FollowJob
from engine.client import Answer, NotSentError, TransportError, XtClient
from engine.clock import Clock, iso_utc, wall_clock
from engine.collector import CampaignStats, Collector, KeyStats
from engine.limiter import KeyLimiter
from engine.policy import Decision, Verdict, backoff, judge
from engine.results import JobResult

#: Seconds that requests in flight get to finish after a stop.
GRACE_SECONDS = 5.0
#: A clock measured this recently is not measured again.
CLOCK_SYNC_INTERVAL = 5.0
#: Allocations between collections of the youngest generation while a run goes on.
GC_YOUNG_THRESHOLD = 10_000


@dataclass(slots=True, eq=False)
class _JobProgress:
    """One job's progress through its attempts."""

    job: FollowJob
    account: Account
    attempts: int = 0
    sent: bool = False
    ambiguous: bool = False
    in_flight: bool = False
    skewed: bool = False
    latency: float | None = None
    #: When each attempt's request left (ISO 8601 UTC, ms), for the campaign's picture.
    sent_at: list[str] = field(default_factory=list)
    answer: Answer | None = None
    decision: Decision | None = None


@dataclass(slots=True, eq=False)
class _Key:
    """One limiter's share of the campaign."""

    limiter: KeyLimiter
    queue: asyncio.Queue[_JobProgress | None]
    stats: KeyStats
    pending: int = 0


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
    ) -> None:
        """``halted`` says, synchronously, that a stop was asked for (a signal handler may
        have seen it before the loop did): no request starts once it is true."""
        self.campaign = campaign
        self.settings = campaign.settings
        self.client = client
        self.collector = collector
        self.grace = grace
        self.clock = clock
        self._halted = halted
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._keys: dict[str, _Key] = {}
        self._open: dict[str, _JobProgress] = {}
        self._disabled: dict[str, str] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dispatchers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._last_clock_sync = -CLOCK_SYNC_INTERVAL

    @property
    def stats(self) -> CampaignStats:
        return self.collector.stats

    async def process(self, jobs: Iterable[FollowJob]) -> CampaignStats:
        """Run ``jobs`` until each is finished or the run is stopped."""
        for job in jobs:
            key = self._key_for(self.campaign.accounts[job.account])
            key.pending += 1
            key.queue.put_nowait(_JobProgress(job, self.campaign.accounts[job.account]))
        self._dispatchers = [asyncio.create_task(self._dispatch(k)) for k in self._keys.values()]
        with _collector_tuned():
            await _first_of(asyncio.gather(*self._dispatchers), self._stopping.wait())
            await self._wind_down()
        self.stats.ended = time.monotonic()
        return self.stats

    def stop(self) -> None:
        """Stop dispatching; requests in flight get the grace period to finish."""
        self._stopping.set()

    def abort(self) -> None:
        """Stop at once: requests in flight are recorded as interrupted, unanswered."""
        self._stopping.set()
        self._aborting.set()

    def _key_for(self, account: Account) -> _Key:
        name = "*" if self.settings.api.per_ip else account.api_key
        key = self._keys.get(name)
        if key is None:
            label = "all keys (per IP)" if name == "*" else account.name
            limiter = KeyLimiter(self.settings.rate_limit, track_sends=True)
            key = _Key(limiter, asyncio.Queue(), KeyStats(label, limiter.period))
            self._keys[name] = key
            self.stats.keys[name] = key.stats
        return key

    async def _dispatch(self, key: _Key) -> None:
        loop = asyncio.get_running_loop()
        while key.pending and not self._stopping.is_set():
            run = await key.queue.get()
            if run is None:
                continue
            if self._drop_if_disabled(key, run):
                continue
            not_before = run.job.not_before
            if not_before is not None and (wait := (not_before - self.clock()).total_seconds()) > 0:
                loop.call_later(wait, key.queue.put_nowait, run)
                continue
            await self._slots.acquire()
            try:
                lane = await key.limiter.acquire()
            except BaseException:
                self._slots.release()
                raise
            # The account may have been rejected, or the run stopped, while this one waited.
            if self._stopping.is_set() or self._halted() or self._drop_if_disabled(key, run):
                key.limiter.release(lane)
                self._slots.release()
                continue
            key.stats.sent_at(loop.time())
            run.in_flight = True
            task = asyncio.create_task(self._attempt(key, run, lane))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _drop_if_disabled(self, key: _Key, run: _JobProgress) -> bool:
        """Fail ``run`` unsent if its account was rejected; True if so."""
        reason = self._disabled.get(run.account.name)
        if reason is not None:
            self._finish(key, run, Decision(Verdict.FAIL, reason))
        return reason is not None

    async def _attempt(self, key: _Key, run: _JobProgress, lane: int) -> None:
        loop = asyncio.get_running_loop()
        run.attempts += 1
        self._open[run.job.id] = run
        started = loop.time()
        account = run.account
        try:
            on_sent = partial(self._left, key, run, lane)
            outcome: Answer | TransportError = await self.client.follow(
                account.api_key, account.secret_key, run.job.params, on_sent
            )
        except TransportError as exc:
            outcome = exc
        finally:
            key.limiter.release(lane)
            self._slots.release()
        run.in_flight = False
        run.latency = loop.time() - started
        run.sent |= not isinstance(outcome, NotSentError)
        run.answer = outcome if isinstance(outcome, Answer) else None
        decision = run.decision = judge(outcome)
        run.ambiguous |= decision.ambiguous
        if decision.slow_key:
            key.limiter.pause(decision.retry_after or key.limiter.period)
        if decision.resync_clock:
            if run.skewed:
                await self._sync_clock()
            run.skewed = True
        retry = decision.verdict is Verdict.RETRY
        if retry and run.attempts < self.settings.max_attempts and not self._stopping.is_set():
            delay = backoff(run.attempts, self._rng, decision.retry_after)
            loop.call_later(delay, key.queue.put_nowait, run)
            return
        if decision.verdict is Verdict.DISABLE_ACCOUNT and run.answer and run.answer.envelope:
            mc = run.answer.envelope.mc
            self._disabled.setdefault(
                account.name, f"not sent: account {account.name} rejected with {mc}"
            )
        if retry and run.attempts >= self.settings.max_attempts:
            decision = Decision(
                Verdict.FAIL, f"gave up after {run.attempts} attempts: {decision.error}"
            )
        self._finish(key, run, decision)

    def _left(self, key: _Key, run: _JobProgress, lane: int) -> None:
        """``run``'s request is leaving now: its lane counts from here."""
        run.sent_at.append(iso_utc(self.clock(), "milliseconds"))
        key.limiter.sent(lane)

    async def _sync_clock(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_clock_sync < CLOCK_SYNC_INTERVAL:
            return
        self._last_clock_sync = loop.time()
        # A failed sync is no new failure: the retry will say what is wrong.
        with contextlib.suppress(Exception):
            await self.client.sync_clock()

    def _finish(self, key: _Key, run: _JobProgress, decision: Decision) -> None:
        self._open.pop(run.job.id, None)
        envelope = run.answer.envelope if run.answer is not None else None
        result = JobResult(
            job=run.job.id,
            account=run.account.name,
            leader_field=self.settings.api.leader_field,
            leader_id=run.job.leader_id,
            status="ok" if decision.verdict is Verdict.OK else "failed",
            rc=envelope.rc if envelope is not None else None,
            mc=envelope.mc if envelope is not None else None,
            http_status=run.answer.http_status if run.answer is not None else None,
            attempts=run.attempts,
            error=decision.error,
            latency_ms=round(run.latency * 1000, 1) if run.latency is not None else None,
            finished_at=iso_utc(self.clock(), "milliseconds"),
            ambiguous=run.ambiguous,
            sent=run.sent,
            sent_at=tuple(run.sent_at),
        )
        key.pending -= 1
        if key.pending == 0:
            key.queue.put_nowait(None)
        if not self.collector.finish(result):
            self.stop()

    async def _wind_down(self) -> None:
        """After a stop: let requests in flight finish, then record what was left open."""
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        if self._in_flight:
            in_flight = asyncio.gather(*self._in_flight, return_exceptions=True)
            await _first_of(in_flight, self._aborting.wait(), timeout=self.grace)
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for run in list(self._open.values()):
            key = self._key_for(run.account)
            if run.in_flight:
                run.ambiguous = run.sent = True
                error = "interrupted with the request in flight: the exchange may have accepted it"
            else:
                last = run.decision.error if run.decision else "none"
                error = f"interrupted after {run.attempts} attempts; last error: {last}"
            self._finish(key, run, Decision(Verdict.FAIL, error))


_tuned_runs = 0
_saved_threshold = gc.get_threshold()


@contextmanager
def _collector_tuned() -> Iterator[None]:
    """While runs go on: what exists when the first starts (modules, campaigns) is frozen, so
    no full collection walks it again and stalls the loop for tens of ms; and the youngest
    generation is collected less often, since a request's objects die before a collection
    sees them. At CPython's defaults collections took ~12% of a run's CPU (bench/RESULTS.md)."""
    global _tuned_runs, _saved_threshold
    if _tuned_runs == 0:
        _saved_threshold = gc.get_threshold()
        gc.freeze()
        if _saved_threshold[0]:
            gc.set_threshold(max(_saved_threshold[0], GC_YOUNG_THRESHOLD), *_saved_threshold[1:])
    _tuned_runs += 1
    try:
        yield
    finally:
        _tuned_runs -= 1
        if _tuned_runs == 0:
            gc.set_threshold(*_saved_threshold)
            gc.unfreeze()


async def _first_of(*awaitables: Awaitable[object], timeout: float | None = None) -> None:
    """Wait until any of ``awaitables`` is done (or ``timeout``), then drop the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
