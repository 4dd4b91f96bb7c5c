"""Ctrl-C on ``follow-engine run``: stop dispatching, let requests in flight finish, record
them, exit 130; a second Ctrl-C stops at once, still recording every request in flight."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.simulator import SimConfig
from tests.support import (
    Engines,
    StartSimulator,
    WriteJobs,
    accounts_of,
    engine_env,
    follow_run,
    outcome_lines,
)

ACCOUNTS = {"alice": 30}
#: The exit code and the results file's lines.
Interrupted = Awaitable[tuple[int, list[dict[str, Any]]]]


@pytest.fixture
def interrupt_after_ten(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> Callable[..., Interrupted]:
    """``await interrupt_after_ten(latency=..., signals=...)``: Ctrl-C that many times once
    ten requests arrived."""

    async def interrupt(latency: float, signals: int) -> tuple[int, list[dict[str, Any]]]:
        jobs = write_jobs(ACCOUNTS)
        results = jobs.parent / "results.jsonl"
        sim = await simulator(accounts_of(ACCOUNTS), SimConfig(latency=latency))
        running = await engines.start(
            *follow_run(jobs, sim),
            "--results",
            str(results),
            env=engine_env(ACCOUNTS),
        )
        await sim.wait_for_arrivals(10)
        for _ in range(signals):
            running.process.send_signal(signal.SIGINT)
        finished = await running.finish(timeout=20)
        arrivals = len(sim.arrivals)
        assert "stopping: no new requests" in finished.err
        assert arrivals == 10, "nothing may be sent after the first Ctrl-C"
        return finished.code, outcome_lines(results)

    return interrupt


async def test_ctrl_c_lets_requests_in_flight_finish_and_exits_130(
    interrupt_after_ten: Callable[..., Interrupted],
) -> None:
    code, lines = await interrupt_after_ten(latency=0.3, signals=1)
    assert code == 130
    assert len(lines) == 10
    assert {line["status"] for line in lines} == {"ok"}


async def test_a_second_ctrl_c_stops_at_once_and_records_what_was_in_flight(
    interrupt_after_ten: Callable[..., Interrupted],
) -> None:
    code, lines = await interrupt_after_ten(latency=30, signals=2)
    assert code == 130
    assert len(lines) == 10
    for line in lines:
        assert (line["status"], line["ambiguous"], line["sent"]) == ("failed", True, True)
        assert line["error"].startswith("interrupted with the request in flight")
