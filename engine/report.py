"""What a person sees: a countdown before a start, progress while a campaign runs, a summary
and an exit code when it ends. Every time shown is ISO 8601 UTC."""

from __future__ import annotations

import math
import statistics
import sys
import time
from datetime import datetime
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from engine.clock import iso_utc
from engine.collector import CampaignStats
from engine.results import JobResult

#: Seconds between plain progress lines when output is not a terminal.
PLAIN_INTERVAL = 5.0
#: Seconds between plain countdown lines when output is not a terminal: a log needs few.
PLAIN_COUNTDOWN_INTERVAL = 600.0
#: Busiest keys listed in the summary.
TOP_KEYS = 5


class ProgressDisplay:
    """A bar on a terminal; a plain line every few seconds anywhere else."""

    def __init__(self, stats: CampaignStats, stream: TextIO = sys.stderr) -> None:
        self.stats = stats
        self.stream = stream
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = time.monotonic()

    def start(self) -> None:
        console = Console(file=self.stream)
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("following"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("jobs", total=self.stats.total, ok=0, failed=0)
            self._bar.start()

    def on_result(self, result: JobResult) -> None:
        stats = self.stats
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=stats.finished, ok=stats.ok, failed=stats.failed)
        elif (now := time.monotonic()) - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            print(_progress_line(stats), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _progress_line(stats: CampaignStats) -> str:
    return (
        f"progress: {stats.finished}/{stats.total} finished (ok {stats.ok}, "
        f"failed {stats.failed}) in {stats.wall_seconds:.1f} s"
    )


def print_summary(stats: CampaignStats, rate_limit: float, console: Console) -> None:
    head = f"{stats.total} jobs: {stats.ok} ok, {stats.failed} failed"
    if stats.ambiguous:
        head += f" ({stats.ambiguous} ambiguous: check them on the exchange)"
    if stats.skipped:
        head += f"; {stats.skipped} skipped, already ok"
    not_started = stats.total - stats.finished
    if not_started:
        head += f"; {not_started} not started"
    console.print(head, highlight=False)
    console.print(
        f"attempts {stats.attempts} ({stats.retries} retries), "
        f"wall time {stats.wall_seconds:.2f} s",
        highlight=False,
    )
    if stats.outcomes:
        outcomes = Table(
            "status", "rc", "mc", "http", "jobs", title="outcomes", title_justify="left"
        )
        for (status, rc, mc, http), count in stats.outcomes.most_common():
            outcomes.add_row(status, _cell(rc), _cell(mc), _cell(http), str(count))
        console.print(outcomes)
    rates = {label: r for label, r in ((k.label, k.rate) for k in stats.keys.values()) if r}
    if rates:
        values = sorted(rates.values())
        console.print(
            f"achieved rate per key (limit {rate_limit:g}/s): min {values[0]:.2f}, "
            f"median {statistics.median(values):.2f}, max {values[-1]:.2f} req/s "
            f"over {len(values)} keys",
            highlight=False,
        )
        busiest = sorted(stats.keys.values(), key=lambda k: k.sent, reverse=True)[:TOP_KEYS]
        table = Table("key", "requests", "req/s", title="busiest keys", title_justify="left")
        for key in busiest:
            table.add_row(key.label, str(key.sent), f"{key.rate:.2f}" if key.rate else "-")
        console.print(table)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def duration(seconds: float) -> str:
    """``1h 02m 03s``: whole seconds, rounded up so a countdown never shows 0 early."""
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


class Countdown:
    """Time left until ``moment``: one plain line first, then a live line on a terminal, or a
    plain line every ten minutes elsewhere (a log wants to know it is alive, not every second)."""

    def __init__(self, moment: datetime, what: str, stream: TextIO) -> None:
        self.moment = moment
        self.what = what
        self.stream = stream
        self._console = Console(file=stream, highlight=False)
        #: Seconds between updates; the waiter reads its clock this often.
        self.interval = 1.0 if self._console.is_terminal else 60.0
        self._live: Live | None = None
        self._last_line: float | None = None

    def update(self, left: float) -> None:
        line = f"{self.what} at {iso_utc(self.moment)}, in {duration(left)}"
        if self._last_line is None:
            print(f"{line} (interrupt to cancel)", file=self.stream, flush=True)
            self._last_line = left
            if self._console.is_terminal:
                self._live = Live(console=self._console, transient=True, auto_refresh=False)
                self._live.start()
        elif self._live is not None:
            self._live.update(Text(line), refresh=True)
        elif self._last_line - left >= PLAIN_COUNTDOWN_INTERVAL:
            print(line, file=self.stream, flush=True)
            self._last_line = left

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
