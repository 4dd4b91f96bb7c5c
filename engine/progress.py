"""Progress while a campaign runs: a bar on a terminal, a plain line every few seconds
anywhere else.

Kept apart from ``engine.report`` so that a run off a terminal never imports rich before its
first request leaves: rich costs about 25 ms of CPU to import, and the summary that needs it
is printed after the last answer.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from engine.collector import CampaignStats
from engine.results import JobResult

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

#: Seconds between plain progress lines when output is not a terminal.
PLAIN_INTERVAL = 5.0


class ProgressDisplay:
    """A bar on a terminal; a plain line every few seconds anywhere else. Both show the
    jobs finished of the run's total, ok and failed, the rate, elapsed time and time left."""

    def __init__(
        self,
        stats: CampaignStats,
        stream: TextIO = sys.stderr,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.stream = stream
        self.clock = clock
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = self._last_line = clock()

    def start(self) -> None:
        self._started = self._last_line = self.clock()
        if self._on_terminal() and self.stats.total:
            from engine.report import progress_bar

            self._bar = progress_bar(self.stream, self.clock)
        if self._bar is not None:
            self._task = self._bar.add_task("jobs", total=self.stats.total, ok=0, failed=0)
            self._bar.start()

    def _on_terminal(self) -> bool:
        """Whether ``stream`` is a terminal; a closed stream, or none at all (``2>&-`` leaves
        ``sys.stderr`` None), is not."""
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def on_result(self, result: JobResult) -> None:
        stats = self.stats
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=stats.finished, ok=stats.ok, failed=stats.failed)
        elif (now := self.clock()) - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            print(progress_line(stats, now - self._started), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def progress_line(stats: CampaignStats, elapsed: float) -> str:
    line = (
        f"progress: {stats.finished}/{stats.total} finished (ok {stats.ok}, "
        f"failed {stats.failed}) in {elapsed:.1f} s"
    )
    if stats.finished and elapsed > 0:
        rate = stats.finished / elapsed
        left = (stats.total - stats.finished) / rate
        line += f", {rate:.1f} jobs/s, about {duration(left)} left"
    return line


def duration(seconds: float) -> str:
    """``1h 02m 03s``: whole seconds, rounded up so a countdown never shows 0 early."""
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
