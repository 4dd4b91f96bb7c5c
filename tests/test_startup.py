"""Start-up: ``--help``, ``validate`` and ``schema`` import only what they need. What each
command loaded is read from ``sys.modules`` of a fresh interpreter; how long that takes is for
``bench/startup.py`` to measure, never a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: What only sending, simulating, a terminal display or a cron schedule needs.
HEAVY = ("aiohttp", "yarl", "rich", "croniter", "dotenv", "engine.client", "engine.simulator",
         "engine.launch", "engine.pool", "asyncio")  # fmt: skip

PROBE = """
import json, sys
from engine.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(sys.modules)))
"""


def loaded(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [("--help",), ("validate", str(ROOT / "jobs.yaml")), ("schema",), ("run", "--help")]
)
def test_commands_that_send_nothing_load_nothing_that_sends(args: tuple[str, ...]) -> None:
    modules = loaded(*args)
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []
    if args[0] == "--help":
        assert "pydantic" not in modules and "yaml" not in modules


#: ``run`` off a terminal, noting which of rich's modules were loaded when the first request
#: (of any kind) left, and whether rich was loaded by the end, for the summary.
RUN_PROBE = """
import json, sys
from engine.client import XtClient
seen = []
send = XtClient.send
async def probe(self, *args, **kwargs):
    if not seen:
        seen.append(sorted(m for m in sys.modules if m.split(".")[0] == "rich"))
    return await send(self, *args, **kwargs)
XtClient.send = probe
from engine.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("\\n" + json.dumps({"at_first_request": seen[0], "at_exit": "rich" in sys.modules}))
"""


def test_run_off_a_terminal_sends_before_it_loads_rich_for_the_summary(tmp_path: Path) -> None:
    """Rich costs about 25 ms of CPU to import: paid after the last answer, not before the
    first request."""
    args = ["run", str(ROOT / "jobs.yaml"), "--simulate", "--results", str(tmp_path / "r.jsonl")]
    done = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "12 jobs: 12 ok, 0 failed" in done.stdout
    probed = json.loads(done.stdout.splitlines()[-1])
    assert probed == {"at_first_request": [], "at_exit": True}


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, timeout=60
    )
    listed = {line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == set(main.commands)
    expected = {"validate", "schema", "run", "schedule", "report", "simulate", "verify", "check"}
    assert expected <= listed


def test_the_startup_benchmark_fills_its_table(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            "startup",
            "--out",
            str(tmp_path),
            "--markdown",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in report.read_text().splitlines() if line.startswith("| `")]
    commands = [row.split("|")[1].strip() for row in rows]
    assert commands == ["`python -c pass`", "`floor of validate`", "`--help`",
                        "`validate jobs.yaml`", "`schema`"]  # fmt: skip
    assert all(float(row.split("|")[3]) > 0 for row in rows)
