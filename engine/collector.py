"""The result collector: every finished job passes through here exactly once.

It writes the job's line (through ``ResultLog``, the results file's only
writer), keeps the counts the summary needs, and tells the progress display.
A line that cannot be written is kept in memory and the run is told to stop:
it must never send follows it cannot record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.results import JobResult, ResultLog, ResultsFileError


@dataclass(slots=True)
class KeyStats:
    """Requests one limiter let through, for the achieved rate."""

    label: str
    #: The limiter's period: the last burst of a key occupies one.
    period: float
    sent: int = 0
    #: The margin the key ended with, when a 429 made the limiter widen it.
    margin: float | None = None
    first: float = 0.0
    last: float = 0.0

    def sent_at(self, now: float) -> None:
        if not self.sent:
            self.first = now
        self.sent += 1
        self.last = now

    @property
    def rate(self) -> float | None:
        """Requests per second of the key's busy time, its last period included: a key
        that sent all it had in one burst did not go faster than its limit."""
        return self.sent / (self.last - self.first + self.period) if self.sent else None


@dataclass(slots=True)
class CampaignStats:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    ambiguous: int = 0
    attempts: int = 0
    retries: int = 0
    #: (status, rc, mc, http_status) -> jobs.
    outcomes: Counter[tuple[str, int | None, str | None, int | None]] = field(
        default_factory=Counter
    )
    keys: dict[str, KeyStats] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    interrupted: bool = False
    #: Results the file could not take, so the user still sees them.
    unrecorded: list[JobResult] = field(default_factory=list)
    write_error: str | None = None
    #: Why the run stopped sending on its own (a code every request would meet).
    stopped_by: str | None = None
    #: A failure of the engine itself that stopped the run.
    internal_error: str | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def wall_seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class Collector:
    def __init__(
        self, log: ResultLog, on_result: Callable[[JobResult], None] | None = None
    ) -> None:
        self.log = log
        self.stats = CampaignStats()
        self._on_result = on_result

    def intend(self, intent: JobResult) -> bool:
        """Record that a job's first request is about to leave (status ``sending``), before
        it does. False when it could not be written: the request must not leave."""
        if self.stats.write_error is None:
            try:
                self.log.record(intent)
                return True
            except ResultsFileError as exc:
                self.stats.write_error = str(exc)
        return False

    def lost(self, reason: str) -> None:
        """The results file can take no more lines: keep the rest for stderr."""
        self.stats.write_error = self.stats.write_error or reason

    def finish(self, result: JobResult) -> bool:
        """Record one job's outcome. False when it could not be written."""
        stats = self.stats
        if result.status == "ok":
            stats.ok += 1
        else:
            stats.failed += 1
        stats.ambiguous += result.ambiguous
        stats.attempts += result.attempts
        stats.retries += max(result.attempts - 1, 0)
        stats.outcomes[(result.status, result.rc, result.mc, result.http_status)] += 1
        written = stats.write_error is None
        if written:
            try:
                self.log.record(result)
            except ResultsFileError as exc:
                stats.write_error = str(exc)
                written = False
        if not written:
            stats.unrecorded.append(result)
        if self._on_result is not None:
            self._on_result(result)
        return written
