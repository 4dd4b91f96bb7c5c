"""A worker's collector: each outcome recorded in Redis, then the job let go of.

The pool hands ``finish`` each result synchronously; the result goes into the worker's
``Outbox``, which writes outcomes one after the other with ``FINISH``: the results line and
the outcome log entry first, then the job released, in one script, so a job is never let go
of unrecorded. While Redis is unreachable the outbox holds its few outcomes (nothing new is
sent meanwhile: every lane, every take and every send waits for Redis) and writes them once it
is back; a worker that dies holding them leaves their jobs to be taken over, marked ambiguous
when an attempt was on the wire.

A worker stopping (SIGTERM) records what ends ok; a job that ends otherwise meanwhile goes back
to its queue with its progress, for a worker that is not stopping to go on with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from engine.collector import Collector
from engine.redis_store import Store, encode_progress
from engine.results import JobResult, ResultLog


@dataclass(frozen=True, slots=True)
class _Record:
    campaign: str
    result: JobResult
    #: Hand the job back (with this progress) instead of recording it.
    give_back: str | None = None


class Outbox:
    """Outcomes on their way to Redis, written in order by one task."""

    def __init__(self, store: Store, worker: str) -> None:
        self.store, self.worker = store, worker
        self._records: deque[_Record] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        #: Outcomes Redis refused as not this worker's: the job was taken over.
        self.refused = 0

    def put(self, record: _Record) -> None:
        self._records.append(record)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write())

    @property
    def pending(self) -> list[JobResult]:
        return [r.result for r in self._records if r.give_back is None]

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._records:
                record = self._records[0]
                result = record.result
                if record.give_back is not None:
                    pair = (result.job, record.give_back)
                    await self.store.persist("GIVE_BACK", record.campaign, self.worker, *pair)
                else:
                    line, status = result.to_json(), result.status
                    done = await self.store.persist(
                        "FINISH", record.campaign, self.worker, result.job, line, status
                    )
                    self.refused += done == 0
                self._records.popleft()
            self._idle.set()

    async def flush(self, timeout: float) -> list[JobResult]:
        """Wait up to ``timeout`` for every outcome to be written; those still not."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._task is not None:
            self._task.cancel()
        return self.pending


class _CampaignLog:
    """What ``Collector`` writes to: the outbox, for one campaign. Never refuses a line."""

    def __init__(self, outbox: Outbox, campaign: str) -> None:
        self.outbox, self.campaign = outbox, campaign

    def record(self, result: JobResult) -> None:
        self.outbox.put(_Record(self.campaign, result))


class RedisCollector(Collector):
    """One campaign's outcomes at one worker, each line saying which worker sent it."""

    def __init__(self, outbox: Outbox, campaign: str, stopping: Callable[[], bool]) -> None:
        super().__init__(cast(ResultLog, _CampaignLog(outbox, campaign)))
        self.outbox, self.campaign, self._stopping = outbox, campaign, stopping

    def intend(self, intent: JobResult) -> bool:
        """A job's intent is its FLIGHT mark in Redis, made by the worker's client before each
        attempt leaves (and refused there when the job is no longer this worker's)."""
        return True

    def finish(self, result: JobResult) -> bool:
        result = dataclasses.replace(result, worker=self.outbox.worker)
        if result.status != "ok" and self._stopping():
            self.outbox.put(_Record(self.campaign, result, encode_progress(result)))
            return True
        return super().finish(result)
