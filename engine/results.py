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
from dataclasses import dataclass, fields
from io import FileIO
from pathlib import Path
from typing import Any, Literal

from engine.past import BOM, PastStates, ResultsFileError, parse_states, without_bom

__all__ = ["CampaignLock", "JobResult", "ResultLog", "ResultsFileError"]

#: Below this much free space a run refuses to start: it could not record what it sends.
MIN_FREE_BYTES = 1 << 20


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
    #: The worker that sent it (distributed mode); left out of the line when None.
    worker: str | None = None

    def to_json(self) -> str:
        # Not dataclasses.asdict: its deep copy is most of a line's cost, and fields are flat.
        line: dict[str, Any] = {name: getattr(self, name) for name in _LINE_FIELDS}
        line[self.leader_field] = self.leader_id
        if self.worker is not None:
            line["worker"] = self.worker
        return _compact(line)


_LINE_FIELDS = tuple(
    f.name for f in fields(JobResult) if f.name not in ("leader_field", "leader_id", "worker")
)
#: ``json.dumps`` with options builds an encoder per call: a third of a line's encoding.
_compact = json.JSONEncoder(separators=(",", ":")).encode


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
                head = os.pread(file.fileno(), 4096, 0).removeprefix(BOM).lstrip()
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
            lines = (raw.decode("utf-8", "replace") for raw in without_bom(reader))
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
