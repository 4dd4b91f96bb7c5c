"""The benchmark entry point runs end to end on a tiny campaign.

Only that it runs and fills every table is checked, never a speed: timings on a shared CI
machine prove nothing, and the benchmarks themselves are not part of the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_fills_every_table(tmp_path: Path) -> None:
    report, out = tmp_path / "report.md", tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--markdown", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    for client in ("engine", "naive", "ideal", "aiohttp"):
        row = next(line for line in text.splitlines() if f"| 5 ms | {client} |" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == "tiny (2x3)"
        assert float(cells[3]) > 0  # a makespan was measured
        assert float(cells[6]) > float(cells[3])  # from the command's start: longer
        assert cells[15] == "0"  # every job accepted
    assert "| tiny | 5 ms |" in text  # engine against the naive baseline
    assert "| 100 |" in text and "| 200 |" in text  # overhead at both sizes
    assert "200/200" in text  # the scale run sent every job
    assert "### Targets" in text
    assert "engine/ideal" in text  # the engine set against the ideal client
    assert "aiohttp alone" in text  # and the ideal client against aiohttp with nothing else
    assert "resume of 200 ok jobs" in text  # the read paths measured


def test_underload_run_counts_429s_and_leaves_no_busy_loop(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.underload", "--runs", "1", "--busy", "1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 0 | engine |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert int(cells[2]) >= 0 and float(cells[5]) >= 1.0  # 429s counted; never below the bound
    assert "engine: 429s in " in done.stdout and "of 1 runs, 1 busy loops beside" in done.stdout
    spinning = subprocess.run(["pgrep", "-f", "while :; do :; done"], capture_output=True)
    assert spinning.returncode == 1, spinning.stdout  # every busy loop was killed
