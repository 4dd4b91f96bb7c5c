"""Run one client as a child process and take its own resource usage from the kernel.

``os.wait4`` returns the rusage of exactly that child (CPU seconds, peak RSS), so nothing the
bench or the simulator does is counted, and nothing needs polling while the client runs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Usage:
    returncode: int
    #: Wall seconds of the whole process, interpreter start-up included.
    wall: float
    #: ``time.monotonic()`` (the simulator's clock too) just before the process was started:
    #: the command's start, taken the same way for every client.
    started: float
    #: ``time.monotonic()`` when the process had exited.
    ended: float
    #: User + system CPU seconds of the process.
    cpu: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    #: The machine's 1-minute load average as the process ended: the machine is shared.
    load: float = 0.0


def run_measured(
    command: list[str],
    log_dir: Path,
    name: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> Usage:
    """Run ``command`` to its end; its output is kept in ``log_dir/name.{out,err}``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        start = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
        )
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, rusage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        ended = time.monotonic()
        wall = ended - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return Usage(
        returncode=process.returncode,
        wall=wall,
        started=start,
        ended=ended,
        cpu=rusage.ru_utime + rusage.ru_stime,
        peak_rss_mb=rusage.ru_maxrss / 1024,
        stdout=out_path.read_text(),
        stderr=err_path.read_text(),
        load=os.getloadavg()[0],
    )
