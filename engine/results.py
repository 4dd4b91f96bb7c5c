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
#: A byte-order mark some editors put first: not part of the first line.
_BOM = b"\xef\xbb\xbf"


class ResultsFileError(Exception):
    """The results file cannot be used; nothing may be sent."""


@dataclass(frozen=True, slots=True)
class JobResult:
    job: str
    account: str
    #: ``leaderOrderId`` or ``leaderAccountId``, by API profile; the line's key.
    leader_field: str
    leader_id: int
    #: ``sending``: the intent line written before a job's first attempt; its state until
    #: the outcome's line follows.
    status: Literal["ok", "failed", "sending"]
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
    #: The envelope's ``result``, verbatim (``true`` for a follow that took).
    result: Any = None
    #: Found in place on the exchange on resume, so not sent again.
    reconciled: bool = False

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
#: ``sending`` is an intent line's: the job was cut off with its request maybe in flight.
STATUSES = ("ok", "failed", "sending")


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

    @property
    def uncertain(self) -> bool:
        """An earlier run may have had it accepted without knowing: cut off mid-request
        (``sending``), or failed after an attempt that got no clear answer."""
        return self.status == "sending" or (self.status == "failed" and self.ambiguous)


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

    def uncertain_jobs(self) -> set[str]:
        return {job for job, state in self.states.items() if state.uncertain}


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


class CampaignLock:
    """An exclusive lock on ``JOBS.yaml.lock`` beside the job file, held while a run sends:
    two runs of one campaign never both send, whatever happens to its results file (one
    deleted, or another named with ``--results``). The lock file is made once and left in
    place; a run whose lock file is deleted or replaced stops sending."""

    def __init__(self, jobs_file: Path) -> None:
        resolved = jobs_file.resolve()
        self.path = resolved.with_name(resolved.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises ``ResultsFileError`` when another run holds it or it cannot be made."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ResultsFileError(
                f"{self.path}: cannot make the campaign's lock file beside the job file: "
                f"{exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ResultsFileError(
                f"{self.path}: in use by another run of this campaign; not starting"
            ) from None
        self._fd = fd

    def held(self) -> bool:
        """The lock file at the path is still the one locked."""
        return self._fd is not None and _same_file(self._fd, self.path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _same_file(fd: int, path: Path, mine: os.stat_result | None = None) -> bool:
    """``fd`` (whose ``fstat`` is ``mine``, if at hand) is still the file at ``path``:
    neither deleted nor replaced since it was opened."""
    try:
        mine = mine or os.fstat(fd)
        there = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return mine.st_nlink > 0 and (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


class ResultLog:
    """Appends results to ``path``, holding an exclusive lock on it while open.

    Lines go straight to the file descriptor, unbuffered: a line the OS took is on
    record even if the process is killed the next instant, and a line it refused leaves
    nothing queued behind to fail again at close. A line the disk took only part of is
    cut off again, so the file holds whole lines only. A file deleted or replaced under
    the run stops taking lines (``still_there``), as a full disk does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: FileIO | None = None

    def open(self, *, fresh: bool = False, jobs_file: Path | None = None) -> PastStates:
        """Lock the file and read what earlier runs recorded (nothing when ``fresh``), a line
        at a time. Raises ``ResultsFileError`` when a run could not record what it sends, or
        when the path is not a results file to write: a symbolic link, the job file itself."""
        try:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            file = FileIO(os.open(self.path, flags, 0o644), "a+")
        except OSError as exc:
            reason = (
                "is a symbolic link; name the file itself"
                if exc.errno == errno.ELOOP
                else f"cannot open results file: {exc.strerror}"
            )
            raise ResultsFileError(f"{self.path}: {reason}") from None
        try:
            self._check(file, jobs_file)
            self._file = file
            if fresh:
                head = os.pread(file.fileno(), 4096, 0).removeprefix(_BOM).lstrip()
                if head and not head.startswith(b"{"):
                    raise ResultsFileError(
                        f"{self.path}: holds no results; --fresh would wipe it; not starting"
                    )
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
            lines = (raw.decode("utf-8", "replace") for raw in _without_bom(reader))
            past = parse_states(lines, str(self.path))
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A torn last line (a kill mid-write) must not glue itself to the next record.
            self._append(b"\n")
        return past

    def _check(self, file: FileIO, jobs_file: Path | None) -> None:
        """Lock ``file`` and make sure it can take lines, else ``ResultsFileError``."""
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            # A device or a FIFO: read never ends (/dev/zero) or blocks, or lines vanish.
            raise ResultsFileError(f"{self.path}: not a regular file; not starting")
        if jobs_file is not None and _same_file(file.fileno(), jobs_file):
            raise ResultsFileError(f"{self.path}: is the job file itself; not starting")
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

    def still_there(self) -> bool:
        """The file at the path is still the one written: not deleted, not replaced."""
        return self._file is not None and _same_file(self._file.fileno(), self.path)

    def _append(self, data: bytes) -> None:
        file = self._file
        assert file is not None, "ResultLog.open() first"
        fd = file.fileno()
        try:
            mine = os.fstat(fd)
        except OSError as exc:
            raise ResultsFileError(f"{self.path}: cannot write results: {exc.strerror}") from None
        if not _same_file(fd, self.path, mine):
            raise ResultsFileError(f"{self.path}: the results file was deleted or replaced")
        size = mine.st_size
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


def _without_bom(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` with a byte-order mark some editors put first taken off the first."""
    first = True
    for line in lines:
        yield line.removeprefix(_BOM) if first else line
        first = False


def read_results(path: Path) -> PastResults:
    """Each job's whole last line, read as the file is now, to look at a campaign
    (``report``): neither locked nor created, so it works beside a run. Raises
    ``FileNotFoundError`` for a missing file and ``ResultsFileError`` for one that cannot be
    read."""
    with _reading(path) as lines:
        return parse_results(lines, str(path))


def read_states(path: Path) -> PastStates:
    """Each job's state, as ``read_results`` reads (``run --dry-run``), at resume's memory."""
    with _reading(path) as lines:
        return parse_states(lines, str(path))


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[Iterator[str]]:
    """The lines of ``path``, read as they go, neither locked nor created."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, /dev/zero never end
            raise ResultsFileError(f"{path}: not a regular file")
        with path.open("rb") as file:
            yield (raw.decode("utf-8", "replace") for raw in _without_bom(file))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read results file: {exc.strerror}") from None
