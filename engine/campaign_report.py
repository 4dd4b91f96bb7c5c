"""``follow-engine report RESULTS.jsonl``: a campaign's outcome read back from its results file,
each job by its last line (as a resume reads it).

One ``CampaignReport`` is shown on a terminal, printed as JSON or CSV, and drawn as an HTML
page (``engine.html_report``): the same counts and tables everywhere. The counting is the run
summary's own (``CampaignStats.count``), and so are the tables (``engine.report``).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.collector import CampaignStats
from engine.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from engine.past import read_results
from engine.profiles import LEADER_FIELDS, PROFILES, V4, ApiProfile
from engine.report import Row, ambiguous_note, error_rows, job_rows, outcome_rows, print_rows
from engine.results import JobResult, ResultsFileError

#: Jobs listed on a terminal unless a listing option asks for all of them.
TERMINAL_LISTED = 20
#: The label of the one limiter of a per-IP API.
ALL_KEYS = "all keys (per IP)"
TABLE_TITLES = {
    "by_status": "jobs by status",
    "by_rc_mc": "outcomes",
    "by_error": "failures by reason",
    "by_account": "jobs by account",
}
CSV_COLUMNS = ("job", "account", "leader_id", "status", "rc", "mc", "http_status", "attempts",
               "ambiguous", "sent", "error", "latency_ms", "finished_at", "sent_at")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listing:
    """Which jobs are listed: failed and ambiguous ones, unless the options say otherwise."""

    failed: bool = False
    ambiguous: bool = False
    every: bool = False

    @property
    def only(self) -> bool:
        """The listing is all that is asked for: no totals or tables on a terminal."""
        return self.failed or self.ambiguous or self.every

    def picks(self, result: JobResult) -> bool:
        if self.every:
            return True
        failed, ambiguous = result.status == "failed", result.ambiguous
        if self.failed or self.ambiguous:
            return (self.failed and failed) or (self.ambiguous and ambiguous)
        return failed or ambiguous

    def describe(self) -> str:
        if self.every:
            return "every job"
        if self.failed != self.ambiguous:
            return "failed jobs" if self.failed else "ambiguous jobs"
        return "failed or ambiguous jobs"


@dataclass
class CampaignReport:
    path: Path
    #: Each job's last line, in the order of the file.
    results: list[JobResult]
    warnings: list[str]
    api: ApiProfile
    stats: CampaignStats = field(default_factory=CampaignStats)

    @cached_property
    def sends(self) -> dict[str, list[float]]:
        return sends_by_limiter(self.results, per_ip=self.api.per_ip)

    def busiest(self) -> tuple[str, int] | None:
        """The limiter that sent the most requests within one second, and how many."""
        found = [(busiest_second(times), key) for key, times in self.sends.items() if times]
        if not found:
            return None
        count, key = max(found)
        return key, count

    def limit_words(self) -> str:
        scope = "per IP, all keys together" if self.api.per_ip else "per API key"
        return f"{self.api.rate_limit:g} requests/s {scope} (api {self.api.name})"

    def tables(self) -> dict[str, list[Row]]:
        stats = self.stats
        accounts: dict[str, Row] = {}
        for r in self.results:
            counts = dict.fromkeys(("jobs", "ok", "failed", "ambiguous", "requests"), 0)
            row = accounts.setdefault(r.account, {"account": r.account, **counts})
            row["jobs"] += 1
            row[r.status] += 1
            row["ambiguous"] += r.ambiguous
            row["requests"] += len(r.sent_at)
        by_status = [{"status": "ok", "jobs": stats.ok}, {"status": "failed", "jobs": stats.failed}]
        return {
            "by_status": by_status,
            "by_rc_mc": outcome_rows(stats),
            "by_error": error_rows(stats),
            "by_account": sorted(accounts.values(), key=lambda r: (-r["failed"], r["account"])),
        }

    def totals(self) -> dict[str, Any]:
        stats = self.stats
        busiest = self.busiest()
        return {
            "jobs": len(self.results),
            "ok": stats.ok,
            "failed": stats.failed,
            "ambiguous": stats.ambiguous,
            "ambiguous_failed": stats.ambiguous_failed,
            "attempts": stats.attempts,
            "retries": stats.retries,
            "api": self.api.name,
            "rate_limit": self.api.rate_limit,
            "per_ip": self.api.per_ip,
            "busiest_second": busiest and {"key": busiest[0], "requests": busiest[1]},
        }


def sends_by_limiter(results: Iterable[JobResult], *, per_ip: bool) -> dict[str, list[float]]:
    """When requests left (epoch seconds, sorted), by limiter: by account (each its own API
    key) or, under a per-IP API, all together."""
    by: defaultdict[str, list[float]] = defaultdict(list)
    for result in results:
        add_sends(by, result, per_ip=per_ip)
    return {key: sorted(times) for key, times in by.items()}


def add_sends(by: defaultdict[str, list[float]], result: JobResult, *, per_ip: bool) -> None:
    """Add when ``result``'s requests left (epoch seconds) to its limiter's in ``by``."""
    key = ALL_KEYS if per_ip else result.account
    by[key] += (t for t in map(epoch, result.sent_at) if t is not None)


def epoch(moment: str) -> float | None:
    """``2026-11-25T17:05:41.397Z`` as seconds since the epoch; None if it is not a time."""
    try:
        return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    except (ValueError, TypeError):
        return None


def busiest_second(times: list[float]) -> int:
    """The most of sorted ``times`` within any one second (a sliding window, as XT counts)."""
    most = start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def read_report(path: Path) -> CampaignReport:
    """The report of the results file at ``path``. Raises ``FileNotFoundError`` or
    ``ResultsFileError``."""
    past = read_results(path)
    results = [_result(line) for line in past.last.values()]
    apis = [r.leader_field for r in results]
    # A file another API's runs wrote to as well (a schedule that changed API) is drawn by
    # the API most of its jobs were sent under.
    leader = max(set(apis), key=apis.count) if apis else V4.leader_field
    api = next(p for p in PROFILES.values() if p.leader_field == leader)
    report = CampaignReport(path, results, past.warnings, api)
    for result in results:
        report.stats.count(result)
    report.stats.total = len(results)
    return report


def _scalar(value: object) -> Any:
    """A value of a line as it can be counted and shown, whatever a hand-edited file holds."""
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


def _result(line: Mapping[str, Any]) -> JobResult:
    """A results line read back; fields a line lacks (written by an older version) are empty."""
    leader_field = next((f for f in sorted(LEADER_FIELDS) if f in line), V4.leader_field)
    sent_at = line.get("sent_at")
    attempts = line.get("attempts")
    return JobResult(
        job=line["job"],
        account=str(_scalar(line.get("account")) or "-"),
        leader_field=leader_field,
        leader_id=_scalar(line.get(leader_field)),
        status="ok" if line.get("status") == "ok" else "failed",
        rc=_scalar(line.get("rc")),
        mc=_scalar(line.get("mc")),
        http_status=_scalar(line.get("http_status")),
        attempts=attempts if type(attempts) is int else 0,
        error=_scalar(line.get("error")),
        latency_ms=_scalar(line.get("latency_ms")),
        finished_at=str(_scalar(line.get("finished_at")) or ""),
        ambiguous=line.get("ambiguous") is True,
        sent=line.get("sent") is not False,
        sent_at=tuple(t for t in sent_at if isinstance(t, str))
        if isinstance(sent_at, list)
        else (),
    )


def show(path: Path, listing: Listing, fmt: str | None, html: Path | None) -> int:
    """Print the report of ``path`` (``fmt``: None for a terminal, "json" or "csv"), write the
    HTML page to ``html`` if given; the exit code."""
    try:
        report = read_report(path)
    except FileNotFoundError:
        return _error(f"{path}: no such results file")
    except ResultsFileError as exc:
        return _error(str(exc))
    for warning in report.warnings[:5]:
        print(f"warning: {warning}", file=sys.stderr)
    listed = [r for r in report.results if listing.picks(r)]
    if fmt == "json":
        print(json.dumps(to_json(report, listing, listed), indent=2))
    elif fmt == "csv":
        write_csv(listed, sys.stdout)
    else:
        print_report(report, listing, listed, Console(highlight=False))
    if html is not None:
        from engine.html_report import write_page

        try:
            write_page(report, html)
        except OSError as exc:
            return _error(f"{html}: cannot write the page: {exc.strerror}")
        print(f"wrote {html}", file=sys.stderr)
    return EXIT_FAILED if report.stats.failed else EXIT_OK


def _error(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_USAGE


def to_json(report: CampaignReport, listing: Listing, listed: list[JobResult]) -> dict[str, Any]:
    return {
        "results": str(report.path),
        "totals": report.totals(),
        **report.tables(),
        "listed": listing.describe(),
        "jobs": [json.loads(r.to_json()) for r in listed],
        "warnings": report.warnings,
    }


def write_csv(results: Iterable[JobResult], stream: Any) -> None:
    writer = csv.DictWriter(stream, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = {name: getattr(r, name) for name in CSV_COLUMNS}
        writer.writerow({**row, "sent_at": " ".join(r.sent_at)})


def print_report(
    report: CampaignReport, listing: Listing, listed: list[JobResult], console: Console
) -> None:
    stats = report.stats
    shown = listed if listing.only else listed[:TERMINAL_LISTED]
    title = f"{listing.describe()}: {len(listed)}"
    if len(shown) < len(listed):
        title += f" (the first {len(shown)}; --failed, --ambiguous or --all list every one)"
    if not listing.only:
        console.print(
            f"{report.path}: {len(report.results)} jobs: {stats.ok} ok, {stats.failed} failed "
            f"(each job's last line); attempts {stats.attempts} ({stats.retries} retries)",
            highlight=False,
            soft_wrap=True,
        )
        if stats.ambiguous:
            console.print(ambiguous_note(stats.ambiguous, stats.ambiguous_failed))
        busiest = report.busiest()
        if busiest is not None:
            within = "within" if busiest[1] <= report.api.rate_limit else "OVER"
            console.print(
                f"busiest second: {busiest[1]} requests from {busiest[0]}; {within} the limit "
                f"of {report.limit_words()}",
                highlight=False,
            )
        tables = report.tables()
        for name, rows in tables.items():
            print_rows(console, TABLE_TITLES[name], rows)
    print_rows(console, title, job_rows(shown))
    if not listed:
        console.print(f"no {listing.describe()}", highlight=False)
