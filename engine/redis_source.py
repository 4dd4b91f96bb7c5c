"""A campaign's jobs for one worker, taken from Redis: the ``JobSource`` of ``worker``.

A worker takes only jobs of the API keys it holds credentials for, and only a few at a time:
per limit, at most ``TAKE_WINDOWS`` windows' worth (in flight, waiting for their lane or
for a retry), so that every worker sharing a limit stays busy, and a worker that dies leaves
little behind. A job taken is the worker's until its outcome is recorded: a retry stays with
it, its progress written to Redis first so that whoever takes the job over goes on from there.
A job taken over meanwhile (this worker was declared dead) is dropped here and never sent.
A job taken from a worker declared dead while its attempt was on the wire is first settled
(``settle``: the exchange asked, where it can say, whether it took it) before it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from engine.campaign import Account
from engine.redis_store import Arg, Store, decode_job, decode_progress, encode_progress
from engine.sources import Deliver, JobProgress

#: Jobs taken with an attempt on the wire -> those to send (the rest are on record already).
Settle = Callable[[list[JobProgress]], Awaitable[list[JobProgress]]]
#: Per limit, a worker holds at most this many windows' worth of jobs.
TAKE_WINDOWS = 2
#: Seconds between looks at a queue found empty, while this worker still holds jobs of it
#: (each of them finishing looks again at once): jobs come back when a worker dies.
POLL = 1.0


@dataclass(slots=True)
class _Held:
    """A job this worker took."""

    progress: JobProgress
    limit: str
    #: Its API key's hash.
    key: str
    #: Its attempts when taken: more now means this worker attempted it.
    attempts: int


class RedisSource:
    def __init__(
        self,
        store: Store,
        campaign: str,
        worker: str,
        queues: Mapping[str, list[str]],
        lanes: Mapping[str, int],
        credentials: Mapping[str, Account],
        accounts: dict[str, Account],
    ) -> None:
        """``queues``: limit name -> the key hashes whose jobs count against it; ``lanes``:
        limit name -> requests it allows per window; ``credentials``: key hash -> this
        worker's account of that key. Each job taken puts its account (named as the
        submitted campaign names it, with this worker's credentials) in ``accounts``."""
        self.store, self.campaign, self.worker = store, campaign, worker
        self._credentials, self._accounts = credentials, accounts
        self._queues = {name: list(keys) for name, keys in queues.items()}
        self._cap = {name: TAKE_WINDOWS * lanes[name] for name in queues}
        self._limit_of = {key: name for name, keys in queues.items() for key in keys}
        self._open: Counter[str] = Counter()
        self._jobs: dict[str, _Held] = {}
        #: (key hash, leader id) -> job id, for the jobs held.
        self._follows: dict[tuple[str, int], str] = {}
        self._wake = {name: asyncio.Event() for name in queues}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._feeders: list[asyncio.Task[None]] = []
        self._deliver: Deliver | None = None
        self._done = asyncio.Event()
        #: Set when Redis says this worker is no longer registered.
        self.fenced = False
        self._stopped = False
        #: TAKE calls so far: each has an id of its own, so that one retried after its reply
        #: was lost is answered the same and takes nothing twice.
        self._takes = 0
        #: Set where the exchange can say what it took (api v1): asked before re-sending.
        self.settle: Settle | None = None

    def job_id(self, key: str, leader_id: int) -> str | None:
        """The held job following ``leader_id`` with the key of hash ``key``."""
        return self._follows.get((key, leader_id))

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._feeders = [asyncio.create_task(self._feed(name)) for name in self._queues]
        self._spawn(self._all_fed())

    async def _all_fed(self) -> None:
        await asyncio.gather(*self._feeders, return_exceptions=True)
        self._done.set()

    async def _feed(self, limit: str) -> None:
        """Keep ``limit``'s share of jobs topped up until its queues are empty and it holds
        none; then this limit is done here (the worker looks again later)."""
        keys, wake = self._queues[limit], self._wake[limit]
        # The flag, not only the cancellation: wait_for may swallow one (Python < 3.12).
        while not (self.fenced or self._stopped):
            cap = self._cap[limit]
            want = cap - self._open[limit]
            timeout: float | None = None  # enough in hand: wait for one to finish
            # Topped up a window's worth at a time: one TAKE for many jobs.
            if want >= max(1, cap // TAKE_WINDOWS):
                keys.append(keys.pop(0))  # each key first in turn
                self._takes += 1
                take: tuple[Arg, ...] = (self.campaign, self.worker, f"{limit}#{self._takes}", want)
                take += tuple(keys)
                got = await self.store.persist("TAKE", *take)
                if got[0] == -2:
                    self.fenced = True
                    return
                uncertain = []
                for i in range(1, len(got), 3):
                    progress = self._take(limit, got[i], got[i + 1], got[i + 2])
                    if self.settle is not None and progress.sent and progress.ambiguous:
                        uncertain.append(progress)
                    else:
                        self._deliver_taken(progress)
                if uncertain:
                    self._spawn(self._settled(uncertain))
                if len(got) - 1 == 3 * want:
                    continue  # there may be more
                later = int(got[0])
                if self._open[limit] == 0 and later < 0:
                    return
                timeout = POLL if later < 0 else min(POLL, later / 1000)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()

    def _take(self, limit: str, job_id: str, body: str, progress_text: str) -> JobProgress:
        job, key = decode_job(job_id, body)
        if job.account not in self._accounts:
            mine = self._credentials[key]
            self._accounts[job.account] = Account(job.account, mine.api_key, mine.secret_key)
        progress = decode_progress(job, progress_text)
        self._jobs[job_id] = _Held(progress, limit, key, progress.attempts)
        self._follows[(key, job.leader_id)] = job_id
        self._open[limit] += 1
        return progress

    def _deliver_taken(self, progress: JobProgress) -> None:
        assert self._deliver is not None
        if progress.job.id in self._jobs:
            self._deliver(progress)

    async def _settled(self, uncertain: list[JobProgress]) -> None:
        """Send again what the exchange did not take (``settle``, which never raises); forget
        what it did: on record now."""
        assert self.settle is not None
        again = await self.settle(uncertain)
        kept = {progress.job.id for progress in again}
        for progress in uncertain:
            if progress.job.id not in kept:
                self._forget(progress.job.id)
        for progress in again:
            self._deliver_taken(progress)

    def retry(self, progress: JobProgress, delay: float) -> None:
        self._spawn(self._retry(progress, delay))

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        """``work`` in the background, cancelled by ``stop``."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, progress: JobProgress, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        job_id = progress.job.id
        ours = await self.store.persist(
            "PROGRESS", self.campaign, self.worker, job_id, encode_progress(progress)
        )
        if not ours:  # taken over: another worker goes on with it
            self._forget(job_id)
            return
        await asyncio.sleep(max(0.0, due - loop.time()))
        if self._deliver is not None and job_id in self._jobs:
            self._deliver(progress)

    def finish(self, progress: JobProgress) -> None:
        self._forget(progress.job.id)

    def _forget(self, job_id: str) -> None:
        held = self._jobs.pop(job_id, None)
        if held is not None:
            self._follows.pop((held.key, held.progress.job.leader_id), None)
            self._open[held.limit] -= 1
            self._wake[held.limit].set()

    async def exhausted(self) -> None:
        await self._done.wait()

    async def stop(self) -> list[str]:
        """Stop taking; the jobs held and never attempted here, to be handed back."""
        self._stopped = True
        for event in self._wake.values():
            event.set()
        for task in (*self._feeders, *self._tasks):
            task.cancel()
        await asyncio.gather(*self._feeders, *self._tasks, return_exceptions=True)
        left = [i for i, held in self._jobs.items() if held.progress.attempts == held.attempts]
        for job_id in left:
            self._forget(job_id)
        return left
