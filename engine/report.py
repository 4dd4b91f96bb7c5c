"""What a person sees: progress while a campaign runs, a summary when it ends."""

from __future__ import annotations

import statistics
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.collector import RunStats
from engine.results import JobResult

#: Seconds between plain progress lines when output is not a terminal.
PLAIN_INTERVAL = 5.0
#: Busiest keys listed in the summary.
TOP_KEYS = 5


class ProgressDisplay:
    """A bar on a terminal; a plain line every few seconds anywhere else."""

    def __init__(self, stats: RunStats, stream: TextIO = sys.stderr) -> None:
        self.stats = stats
        self.stream = stream
        self._bar: Progress | None = None
        self._task = None
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


def _progress_line(stats: RunStats) -> str:
    return (
        f"progress: {stats.finished}/{stats.total} finished (ok {stats.ok}, "
        f"failed {stats.failed}) in {stats.wall_seconds:.1f} s"
    )


def print_summary(stats: RunStats, rate_limit: float, console: Console) -> None:
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
