"""The results file: one JSON line per finished job, the only record of a run.

``ResultLog`` is its only writer. Each line is handed to the OS the moment a job
ends, so a kill loses nothing already decided; a job's state is its last line.
The file is locked while a run holds it, so two runs cannot both send the same
follows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from io import FileIO
from pathlib import Path
from typing import Any, Literal

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
    #: When each attempt that left did so (ISO 8601 UTC, ms): what the campaign's picture plots.
    sent_at: tuple[str, ...] = ()

    def to_json(self) -> str:
        # Not dataclasses.asdict: its deep copy is most of a line's cost, and fields are flat.
        line: dict[str, Any] = {name: getattr(self, name) for name in _LINE_FIELDS}
        line[self.leader_field] = self.leader_id
        return json.dumps(line, separators=(",", ":"))


_LINE_FIELDS = tuple(
    f.name for f in fields(JobResult) if f.name not in ("leader_field", "leader_id")
)


@dataclass(frozen=True, slots=True)
class PastResults:
    #: Each job's whole last line.
    last: dict[str, dict[str, Any]]
    warnings: list[str]

    def ok_jobs(self) -> set[str]:
        return {job for job, line in self.last.items() if line.get("status") == "ok"}


#: The ``status`` values resume tells apart; any other reads as "failed": send the job again.
STATUSES = ("ok", "failed")


@dataclass(frozen=True, slots=True)
class JobState:
    """What resume keeps of a job's last line: its status and flags, nothing else.

    A status is one word in ``STATUSES``, a flag one field here (read true only when the line
    says ``true``). There are few distinct states, and each is one shared instance, so a job
    costs its id and a dict entry whatever its lines hold and however many there are.
    """

    status: str = "failed"
    #: Some attempt may have been acted on by the exchange without an answer saying so.
    ambiguous: bool = False

    @classmethod
    def of(cls, line: dict[str, Any]) -> JobState:
        status = line.get("status")
        flags = {name: line.get(name) is True for name in _FLAGS}
        state = cls(status if status in STATUSES else "failed", **flags)
        return _SHARED.setdefault(state, state)


_FLAGS = tuple(f.name for f in fields(JobState) if f.name != "status")
#: A job whose last line is a plain failure is sent again like a job never run: no record.
_UNREMARKABLE = JobState()
_SHARED = {_UNREMARKABLE: _UNREMARKABLE}


@dataclass(frozen=True, slots=True)
class PastStates:
    """What a results file tells resume: the state of every job whose last line is not a
    plain failure (those are sent again, like jobs never run)."""

    states: dict[str, JobState]
    warnings: list[str]

    def ok_jobs(self) -> set[str]:
        return {job for job, state in self.states.items() if state.status == "ok"}


def _whole_lines(lines: Iterable[str], name: str, warnings: list[str]) -> Iterator[dict[str, Any]]:
    """Each line that is a whole result. A torn or foreign line (a kill mid-write) is skipped
    with a warning."""
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("job"), str):
            warnings.append(f"{name}:{number}: skipped a line that is not a whole result")
            continue
        yield line


def parse_results(lines: Iterable[str], name: str) -> PastResults:
    """Each job's whole last line, to look at a campaign."""
    warnings: list[str] = []
    last = {line["job"]: line for line in _whole_lines(lines, name, warnings)}
    return PastResults(last, warnings)


def parse_states(lines: Iterable[str], name: str) -> PastStates:
    """Each job's state, for resume: memory grows with the jobs worth remembering, never
    with the lines read, so ``lines`` may be a file read as it goes."""
    warnings: list[str] = []
    states: dict[str, JobState] = {}
    for line in _whole_lines(lines, name, warnings):
        state = JobState.of(line)
        if state is _UNREMARKABLE:
            states.pop(line["job"], None)
        else:
            states[line["job"]] = state
    return PastStates(states, warnings)


class ResultLog:
    """Appends results to ``path``, holding an exclusive lock on it while open.

    Lines go straight to the file descriptor, unbuffered: a line the OS took is on
    record even if the process is killed the next instant, and a line it refused leaves
    nothing queued behind to fail again at close. A line the disk took only part of is
    cut off again, so the file holds whole lines only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: FileIO | None = None

    def open(self, *, fresh: bool = False) -> PastStates:
        """Lock the file and read what earlier runs recorded (nothing when ``fresh``), a line
        at a time. Raises ``ResultsFileError`` when a run could not record what it sends."""
        try:
            file = FileIO(self.path, "a+")
        except OSError as exc:
            raise ResultsFileError(
                f"{self.path}: cannot open results file: {exc.strerror}"
            ) from None
        try:
            self._check(file)
            self._file = file
            if fresh:
                file.truncate(0)
                return PastStates({}, [])
            past = self._read(file.fileno())
        except OSError as exc:
            self.close()
            file.close()
            message = f"{self.path}: cannot use results file: {exc.strerror}"
            raise ResultsFileError(message) from None
        except BaseException:
            self.close()
            file.close()
            raise
        return past

    def _read(self, fd: int) -> PastStates:
        # A duplicate of the locked descriptor: the very file locked, read with a buffer.
        with open(os.dup(fd), "rb") as reader:
            reader.seek(0)
            lines = (raw.decode("utf-8", "replace") for raw in reader)
            past = parse_states(lines, str(self.path))
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A torn last line (a kill mid-write) must not glue itself to the next record.
            self._append(b"\n")
        return past

    def _check(self, file: FileIO) -> None:
        """Lock ``file`` and make sure it can take lines, else ``ResultsFileError``."""
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            # A device or a FIFO: read never ends (/dev/zero) or blocks, or lines vanish.
            raise ResultsFileError(f"{self.path}: not a regular file; not starting")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ResultsFileError(
                f"{self.path}: results file is in use by another run; not starting"
            ) from None
        free = shutil.disk_usage(self.path.parent).free
        if free < MIN_FREE_BYTES:
            raise ResultsFileError(f"{self.path}: only {free} bytes free; not starting")
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        room = limit - os.fstat(file.fileno()).st_size
        if limit != resource.RLIM_INFINITY and room < MIN_FREE_BYTES:
            raise ResultsFileError(
                f"{self.path}: the file size limit (ulimit -f) leaves room for "
                f"{max(room, 0)} bytes; not starting"
            )

    def record(self, result: JobResult) -> None:
        """Write one line. Raises ``ResultsFileError`` when it cannot be kept."""
        self._append((result.to_json() + "\n").encode())

    def _append(self, data: bytes) -> None:
        file = self._file
        assert file is not None, "ResultLog.open() first"
        fd = file.fileno()
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise ResultsFileError(f"{self.path}: cannot write results: {exc.strerror}") from None
        view = memoryview(data)
        try:
            while view:
                written = file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[written:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # whole lines only: take back the part written
            raise ResultsFileError(f"{self.path}: cannot write results: {exc.strerror}") from None

    def close(self) -> None:
        """Close, the lines pushed to the disk first. Never raises: nothing is pending."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                os.fsync(file.fileno())
            with contextlib.suppress(OSError):
                file.close()
