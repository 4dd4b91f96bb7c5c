"""Reading a results file: what resume needs of it (each job's state, at the memory of the
jobs worth remembering) and what a person looking at a campaign needs (each job's whole last
line). A job's state is its last line; a torn or foreign line is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ResultsFileError(Exception):
    """The results file cannot be used; nothing may be sent."""


#: A byte-order mark some editors put first: not part of the first line.
BOM = b"\xef\xbb\xbf"


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


def without_bom(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` with a byte-order mark some editors put first taken off the first."""
    first = True
    for line in lines:
        yield line.removeprefix(BOM) if first else line
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
            yield (raw.decode("utf-8", "replace") for raw in without_bom(file))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read results file: {exc.strerror}") from None
