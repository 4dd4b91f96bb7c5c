"""What a person sees while a campaign runs, read back from what the display wrote: the bar on
a terminal (a stream rich takes for one, and a real pseudo-terminal around the command), the
plain line elsewhere, and the summary at the end."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import shutil
import socket
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from engine.cli import main
from engine.collector import CampaignStats
from engine.progress import ProgressDisplay, progress_line
from engine.report import print_summary
from engine.results import JobResult
from tests.support import ENGINE, PROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jobs.yaml"
#: Escape sequences a terminal acts on rather than shows: cursor moves, colours.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class Terminal(io.StringIO):
    """A stream rich takes for a terminal; what is written to it can be read back."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frames(written: str) -> list[str]:
    """The bar's frames as a person saw them, oldest first."""
    text = ESCAPES.sub("", written)
    return [line.strip() for line in re.split(r"[\r\n]", text) if "following" in line]


def result(job: str, status: str = "ok", *, error: str | None = None, ambiguous: bool = False,
           account: str = "alice") -> JobResult:  # fmt: skip
    return JobResult(
        job=job,
        account=account,
        leader_field="leaderOrderId",
        leader_id=1,
        status=status,  # type: ignore[arg-type]
        rc=0 if status == "ok" else None,
        mc="SUCCESS" if status == "ok" else None,
        http_status=200 if status == "ok" else None,
        attempts=1 if status == "ok" else 3,
        error=error,
        latency_ms=20.0,
        finished_at="2026-11-25T17:05:41.397Z",
        ambiguous=ambiguous,
    )


def test_the_bar_shows_the_total_from_the_start_then_elapsed_time_left_and_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    stats, clock, screen = CampaignStats(total=10), FakeClock(), Terminal()
    display = ProgressDisplay(stats, screen, clock=clock)
    display.start()
    for n in range(5):
        clock.now += 1.0
        done = result(f"j{n}", "failed" if n == 2 else "ok", error="HTTP 500")
        stats.count(done)
        display.on_result(done)
    display.close()
    shown = frames(screen.getvalue())
    assert "0/10" in shown[0]
    last = shown[-1]
    assert "5/10" in last and "ok 4 failed 1" in last
    # 5 s elapsed at one job a second: 1.0 jobs/s, 5 s left.
    assert re.search(r"1\.0 jobs/s\s+0:00:05\s+ETA\s+0:00:05", last), last
    assert not any(re.search(r"\d+/0\b", frame) for frame in shown)


def test_off_a_terminal_a_plain_line_says_as_much_every_few_seconds() -> None:
    stats, clock, log = CampaignStats(total=4), FakeClock(), io.StringIO()
    display = ProgressDisplay(stats, log, clock=clock)
    display.start()
    for n in range(2):
        clock.now += 3.0
        stats.count(result(f"j{n}"))
        display.on_result(result(f"j{n}"))
    display.close()
    assert log.getvalue() == (
        "progress: 2/4 finished (ok 2, failed 0) in 6.0 s, 0.3 jobs/s, about 0m 06s left\n"
    )
    assert progress_line(CampaignStats(total=3), 0.0) == (
        "progress: 0/3 finished (ok 0, failed 0) in 0.0 s"
    )


def _read_until_exit(master: int, process: subprocess.Popen[bytes]) -> str:
    """Everything the command wrote on its terminal, up to its exit."""
    chunks, deadline = [], time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command exited and closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=5)
    return b"".join(chunks).decode(errors="replace")


def test_run_on_a_terminal_counts_the_whole_campaign_and_its_time(tmp_path: Path) -> None:
    """The command in a pseudo-terminal, 80 columns wide, as a person starts it: the first
    frame already knows all 12 jobs, and the last one has counted the second the run took."""
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(SAMPLE, jobs)
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm", "LC_ALL": "C.UTF-8"}
    process = subprocess.Popen(
        [*ENGINE, "run", str(jobs), "--simulate", "--sim-latency", "1.2", "--no-preflight"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    try:
        written = _read_until_exit(master, process)
    finally:
        os.close(master)
    assert process.returncode == 0, written
    shown = frames(written)
    assert shown and "0/12" in shown[0], written
    assert "12/12" in shown[-1] and "0:00:01" in shown[-1], shown[-1]
    assert not any(re.search(r"\d+/0\b", frame) for frame in shown)
    assert "12 jobs: 12 ok, 0 failed" in ESCAPES.sub("", written)


def test_the_summary_groups_failures_by_reason_and_explains_ambiguous() -> None:
    stats = CampaignStats(total=8)
    refused = "HTTP 200 rc=1 mc=COPY_TRADE_SPOT_010"
    in_flight = "interrupted with the request in flight: the exchange may have accepted it"
    for done in (
        result("a1"),
        result("a2", ambiguous=True),
        result("b1", "failed", error=refused),
        result("b2", "failed", error=refused),
        result("c1", "failed", error="gave up after 5 attempts: HTTP 503"),
        result("d1", "failed", error=in_flight, ambiguous=True, account="bob"),
    ):
        stats.count(done)
    console = Console(file=io.StringIO(), width=200)
    print_summary(stats, 10, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert out.startswith("8 jobs: 2 ok, 4 failed (2 ambiguous, see below); 2 not started\n")
    words = " ".join(out.split())
    assert "2 ambiguous (1 ok, 1 failed)" in words
    assert "Those that ended ok need nothing" in words
    assert "Check those that failed on XT before sending them again" in words
    assert re.search(rf"│ {re.escape(refused)}\s+│ 2\s+│ b1, b2\s+│", out), out
    assert re.search(r"│ gave up after 5 attempts: HTTP 503\s+│ 1\s+│ c1\s+│", out), out
    assert "failed after an ambiguous attempt: 1; check them on XT" in out
    assert re.search(rf"│ d1\s+│ bob\s+│ 3\s+│ {re.escape(in_flight)}", out), out


def test_an_unreachable_exchange_says_why_in_the_summary(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(SAMPLE, jobs)
    with socket.socket() as closed:  # a port nothing listens on once this is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = ["run", str(jobs), "--base-url", f"http://127.0.0.1:{port}", "--max-attempts", "1"]
    done = CliRunner(env={"COLUMNS": "300"}).invoke(main, args)
    assert done.exit_code == 1, done.output
    reason = re.search(
        rf"│ ([^│]*Cannot connect to host 127\.0\.0\.1:{port}[^│]*)│ 12 ", done.stdout
    )
    assert reason, done.stdout
