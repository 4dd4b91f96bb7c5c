"""What a person sees: a countdown before a start, the progress bar while a campaign runs on a
terminal (``engine.progress`` decides), a summary and an exit code when it ends. Every time
shown is ISO 8601 UTC.

The summary's tables are lists of rows (dicts) so that ``follow-engine report`` shows, writes
as JSON and draws in HTML the very same ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from engine.clock import iso_utc
from engine.collector import CampaignStats
from engine.progress import duration
from engine.results import JobResult

#: Seconds between plain countdown lines when output is not a terminal: a log needs few.
PLAIN_COUNTDOWN_INTERVAL = 600.0
#: Busiest keys listed in the summary.
TOP_KEYS = 5
#: Failure reasons listed in the summary; the rest are counted.
TOP_ERRORS = 10

Row = dict[str, Any]


class _RateColumn(ProgressColumn):
    """Jobs finished per second, over rich's recent samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- jobs/s" if speed is None else f"{speed:.1f} jobs/s")


def progress_bar(stream: TextIO, clock: Callable[[], float]) -> Progress | None:
    """The bar of ``engine.progress.ProgressDisplay``; None where rich sees no terminal."""
    console = Console(file=stream)
    if not console.is_terminal:
        return None
    return Progress(
        TextColumn("following"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        get_time=clock,
    )


#: What "ambiguous" means, for a person deciding what to do.
AMBIGUOUS_MEANS = (
    "An ambiguous job had a request that left but got no clear answer (a timeout, a dropped "
    "connection): the exchange may have acted on it, and the engine asked again."
)


def ambiguous_note(ambiguous: int, ambiguous_failed: int) -> str:
    """``ambiguous`` jobs, ``ambiguous_failed`` of them failed, in words a person acts on."""
    ok = ambiguous - ambiguous_failed
    note = f"{ambiguous} ambiguous ({ok} ok, {ambiguous_failed} failed). {AMBIGUOUS_MEANS}"
    if ok:
        note += " Those that ended ok need nothing."
    if ambiguous_failed:
        note += (
            " Check those that failed on XT before sending them again: they may be in place"
            " already."
        )
    return note


def outcome_rows(stats: CampaignStats) -> list[Row]:
    """Jobs by status, ``rc``, ``mc`` and HTTP status, most common first."""
    return [
        {"status": status, "rc": rc, "mc": mc, "http_status": http, "jobs": count}
        for (status, rc, mc, http), count in stats.outcomes.most_common()
    ]


def error_rows(stats: CampaignStats, limit: int | None = None) -> list[Row]:
    """Failed jobs by reason, most common first, with the first few of each."""
    return [
        {"error": error, "jobs": count, "first_jobs": stats.error_jobs[error]}
        for error, count in stats.errors.most_common(limit)
    ]


def job_rows(results: Iterable[JobResult], *, outcome: bool = True) -> list[Row]:
    """One row per job, for a person: who, how it ended (unless the title says: not
    ``outcome``) and why."""
    rows = []
    for r in results:
        row: Row = {"job": r.job, "account": r.account}
        if outcome:
            row |= {"status": r.status, "ambiguous": "yes" if r.ambiguous else "no"}
        rows.append(row | {"attempts": r.attempts, "error": r.error})
    return rows


def print_rows(console: Console, title: str, rows: Sequence[Row]) -> None:
    """``rows`` as a table, their keys as its head; nothing when there are none."""
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for name in rows[0]:
        # Folded, never cut short: a job id or a reason is copied from here; a job id whole.
        width = min(_widest(rows, name), 40) if name == "job" else None
        table.add_column(name.replace("_", " "), overflow="fold", min_width=width)
    for row in rows:
        table.add_row(*(cell(value) for value in row.values()))
    console.print(table)


def print_outcomes(console: Console, stats: CampaignStats) -> None:
    """The outcome tables the run summary and ``report`` share."""
    if stats.ambiguous:
        console.print(ambiguous_note(stats.ambiguous, stats.ambiguous_failed), highlight=False)
    print_rows(console, "outcomes", outcome_rows(stats))
    reasons = error_rows(stats, TOP_ERRORS)
    more = len(stats.errors) - len(reasons)
    print_rows(console, "failures by reason" + (f" ({more} more)" if more > 0 else ""), reasons)
    count = stats.ambiguous_failed
    shown = len(stats.first_ambiguous_failed)
    print_rows(
        console,
        f"failed after an ambiguous attempt: {count}"
        + (f" (the first {shown})" if shown < count else "")
        + "; check them on XT before sending them again",
        job_rows(stats.first_ambiguous_failed, outcome=False),
    )


def print_summary(stats: CampaignStats, rate_limit: float, console: Console) -> None:
    head = f"{stats.total} jobs: {stats.ok} ok, {stats.failed} failed"
    if stats.ambiguous:
        head += f" ({stats.ambiguous} ambiguous, see below)"
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
    print_outcomes(console, stats)
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
    widened = [key for key in stats.keys.values() if key.margin is not None]
    if widened:
        margins = ", ".join(f"{key.label} {key.margin:.0%}" for key in widened[:TOP_KEYS])
        more = f" and {len(widened) - TOP_KEYS} more" if len(widened) > TOP_KEYS else ""
        console.print(
            f"margin widened after HTTP 429 (network jitter?): {margins}{more}",
            highlight=False,
        )


def _widest(rows: Sequence[Row], name: str) -> int:
    return max(len(name), *(len(cell(row[name])) for row in rows))


def cell(value: object) -> str:
    """A table cell as text: ``-`` for nothing, a list joined."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


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
