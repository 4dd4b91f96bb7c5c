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


#: Failed jobs kept by name for the summary: for each reason, and ambiguous ones.
LISTED_FAILURES = 3


@dataclass(slots=True)
class CampaignStats:
    #: Jobs this run was given, known before the first is sent.
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
    #: Failed jobs by ``error``, and the first few of each.
    errors: Counter[str] = field(default_factory=Counter)
    error_jobs: dict[str, list[str]] = field(default_factory=dict)
    #: Failed jobs that were ambiguous (the exchange may have taken one of their attempts),
    #: and the first few of them.
    ambiguous_failed: int = 0
    first_ambiguous_failed: list[JobResult] = field(default_factory=list)
    keys: dict[str, KeyStats] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    interrupted: bool = False
    #: Results the file could not take, so the user still sees them.
    unrecorded: list[JobResult] = field(default_factory=list)
    write_error: str | None = None
    #: Jobs an earlier run left uncertain, found in place on the exchange: ok, not sent.
    reconciled: int = 0
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

    def count(self, result: JobResult) -> None:
        """Add one job's outcome to the counts the summary and ``report`` show."""
        if result.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            error = result.error or "-"
            self.errors[error] += 1
            named = self.error_jobs.setdefault(error, [])
            if len(named) < LISTED_FAILURES:
                named.append(result.job)
            if result.ambiguous:
                self.ambiguous_failed += 1
                if len(self.first_ambiguous_failed) < LISTED_FAILURES:
                    self.first_ambiguous_failed.append(result)
        self.ambiguous += result.ambiguous
        self.attempts += result.attempts
        self.retries += max(result.attempts - 1, 0)
        self.outcomes[(result.status, result.rc, result.mc, result.http_status)] += 1


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
        stats.count(result)
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
