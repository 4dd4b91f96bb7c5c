"""The results file: one JSON line per finished job, the only record of a run.

``ResultLog`` is its only writer. Each line is written and flushed the moment a
job ends, so a crash loses nothing already decided; a job's state is its last
line. The file is locked while a run holds it, so two runs cannot both send the
same follows.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

#: Below this much free space a run refuses to start: it could not record what it sends.
MIN_FREE_BYTES = 1 << 20


class ResultsFileError(Exception):
    """The results file cannot be used; nothing may be sent."""


@dataclass(frozen=True, slots=True)
class JobResult:
    job: str
    account: str
    #: ``leaderOrderId`` or ``leaderAccountId``, by API profile; the line's key.
    leader_field: str
    leader_id: int
    status: Literal["ok", "failed"]
    rc: int | None
    mc: str | None
    http_status: int | None
    attempts: int
    error: str | None
    latency_ms: float | None
    finished_at: str
    #: Some attempt may have been acted on by the exchange without an answer saying so.
    ambiguous: bool = False
    #: Whether any attempt left this machine.
    sent: bool = True

    def to_json(self) -> str:
        line: dict[str, Any] = asdict(self)
        line[line.pop("leader_field")] = line.pop("leader_id")
        return json.dumps(line, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PastResults:
    #: Each job's last line.
    last: dict[str, dict[str, Any]]
    warnings: list[str]

    def ok_jobs(self) -> set[str]:
        return {job for job, line in self.last.items() if line.get("status") == "ok"}


def parse_results(lines: list[str], name: str) -> PastResults:
    """Each job's last line. A torn or foreign line (a kill mid-write) is skipped with a warning."""
    last: dict[str, dict[str, Any]] = {}
    warnings = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("job"), str):
            warnings.append(f"{name}:{number}: skipped a line that is not a whole result")
            continue
        last[line["job"]] = line
    return PastResults(last, warnings)


class ResultLog:
    """Appends results to ``path``, holding an exclusive lock on it while open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self, *, fresh: bool = False) -> PastResults:
        """Lock the file and read what earlier runs recorded (nothing when ``fresh``)."""
        try:
            file = self.path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise ResultsFileError(
                f"{self.path}: cannot open results file: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise ResultsFileError(
                f"{self.path}: results file is in use by another run; not starting"
            ) from None
        self._file = file
        free = shutil.disk_usage(self.path.parent).free
        if free < MIN_FREE_BYTES:
            self.close()
            raise ResultsFileError(f"{self.path}: only {free} bytes free; not starting")
        if fresh:
            file.truncate(0)
            return PastResults({}, [])
        file.seek(0)
        text = file.read()
        if text and not text.endswith("\n"):
            # A torn last line (a kill mid-write) must not glue itself to the next record.
            file.write("\n")
            file.flush()
        return parse_results(text.splitlines(), str(self.path))

    def record(self, result: JobResult) -> None:
        """Write and flush one line. Raises ``ResultsFileError`` when it cannot be kept."""
        assert self._file is not None, "ResultLog.open() first"
        try:
            self._file.write(result.to_json() + "\n")
            self._file.flush()
        except OSError as exc:
            raise ResultsFileError(f"{self.path}: cannot write results: {exc.strerror}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
