"""Ctrl-C on ``follow-engine run``: stop dispatching, let requests in flight finish, record
them, exit 130; a second Ctrl-C stops at once, still recording every request in flight."""

from __future__ import annotations

import signal
from pathlib import Path

from engine.simulator import SimConfig, Simulator
from tests.procs import accounts_table, engine_env, finish, job_file, outcome_lines, spawn

ACCOUNTS = {"alice": 30}


async def interrupt_after_ten(tmp_path: Path, latency: float, signals: int) -> tuple[int, list]:
    jobs, results = tmp_path / "jobs.yaml", tmp_path / "results.jsonl"
    jobs.write_text(job_file(ACCOUNTS))
    out, err = tmp_path / "out", tmp_path / "err"
    async with Simulator(accounts_table(ACCOUNTS), SimConfig(latency=latency)) as sim:
        process = await spawn(
            "run",
            "--no-preflight",
            str(jobs),
            "--base-url",
            sim.base_url or "",
            "--results",
            str(results),
            env=engine_env(ACCOUNTS),
            out=out,
            err=err,
        )
        await sim.wait_for_arrivals(10)
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
        finished = await finish(process, out, err, timeout=20)
        arrivals = len(sim.arrivals)
    assert "stopping: no new requests" in finished.err
    assert arrivals == 10, "nothing may be sent after the first Ctrl-C"
    return finished.code, outcome_lines(results)


async def test_ctrl_c_lets_requests_in_flight_finish_and_exits_130(tmp_path: Path) -> None:
    code, lines = await interrupt_after_ten(tmp_path, latency=0.3, signals=1)
    assert code == 130
    assert len(lines) == 10
    assert {line["status"] for line in lines} == {"ok"}


async def test_a_second_ctrl_c_stops_at_once_and_records_what_was_in_flight(
    tmp_path: Path,
) -> None:
    code, lines = await interrupt_after_ten(tmp_path, latency=30, signals=2)
    assert code == 130
    assert len(lines) == 10
    for line in lines:
        assert (line["status"], line["ambiguous"], line["sent"]) == ("failed", True, True)
        assert line["error"].startswith("interrupted with the request in flight")
