"""Where the worker pool's jobs come from, and go back to for a retry.

A ``JobSource`` hands each job to the pool as it falls due (``deliver``), takes it back
for a retry after a delay, and hears when it is finished. ``MemorySource`` is the
single-process one: a campaign's jobs, all known at the start, ``not_before`` held on the
campaign's clock. A source shared by many workers (Redis) implements the same calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from engine.campaign import FollowJob
from engine.clock import Clock, wall_clock


@dataclass(slots=True, eq=False)
class JobProgress:
    """One job's progress through its attempts: what travels with it between attempts."""

    job: FollowJob
    attempts: int = 0
    #: Some attempt's request left this machine.
    sent: bool = False
    #: Some attempt may have been acted on without an answer saying so.
    ambiguous: bool = False
    #: Clock-skew answers (``AUTH_105``) drawn so far.
    skews: int = 0
    #: When each attempt's request left (ISO 8601 UTC, ms), for the campaign's picture.
    sent_at: list[str] = field(default_factory=list)


Deliver = Callable[[JobProgress], None]


class JobSource(Protocol):
    def start(self, deliver: Deliver) -> None:
        """Hand every job to ``deliver`` as it falls due, from now on."""

    def retry(self, progress: JobProgress, delay: float) -> None:
        """Hand ``progress`` back to ``deliver`` in ``delay`` seconds."""

    def finish(self, progress: JobProgress) -> None:
        """``progress``'s outcome is recorded: no more attempts."""

    async def exhausted(self) -> None:
        """Return once every job is finished: nothing will be delivered again."""


class MemorySource:
    """A campaign's jobs, in the order given; each delivered once due (``not_before``)."""

    def __init__(self, jobs: Iterable[FollowJob], clock: Clock = wall_clock) -> None:
        self.jobs = list(jobs)
        self.clock = clock
        self._open = len(self.jobs)
        self._done = asyncio.Event()
        self._deliver: Deliver | None = None
        if not self._open:
            self._done.set()

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        for job in self.jobs:
            self._when_due(JobProgress(job))

    def _when_due(self, progress: JobProgress) -> None:
        """Deliver now, or check again at ``not_before``: a wall clock may jump meanwhile."""
        assert self._deliver is not None
        not_before = progress.job.not_before
        if not_before is not None and (wait := (not_before - self.clock()).total_seconds()) > 0:
            asyncio.get_running_loop().call_later(wait, self._when_due, progress)
        else:
            self._deliver(progress)

    def retry(self, progress: JobProgress, delay: float) -> None:
        assert self._deliver is not None, "start() first"
        asyncio.get_running_loop().call_later(delay, self._deliver, progress)

    def finish(self, progress: JobProgress) -> None:
        self._open -= 1
        if self._open == 0:
            self._done.set()

    async def exhausted(self) -> None:
        await self._done.wait()
