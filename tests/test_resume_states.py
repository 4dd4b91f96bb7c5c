"""Resume keeps each job's state, not its lines: memory follows the jobs, never the file."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from engine.past import JobState, parse_states
from engine.results import ResultLog


def line(job: str, status: str = "ok", **extra: object) -> str:
    return json.dumps({"job": job, "status": status, "rc": 0, "mc": "SUCCESS", **extra})


def test_a_state_is_the_status_and_flags_of_the_line() -> None:
    assert JobState.of({"job": "a", "status": "ok"}) == JobState("ok", ambiguous=False)
    assert JobState.of({"job": "a", "status": "failed", "ambiguous": True}).ambiguous
    # Only a JSON true sets a flag; an unknown status is not done.
    assert not JobState.of({"job": "a", "status": "failed", "ambiguous": "true"}).ambiguous
    assert JobState.of({"job": "a", "status": ["ok"]}).status == "failed"
    assert JobState.of({"job": "a"}).status == "failed"


def test_equal_states_are_one_shared_object() -> None:
    first = JobState.of({"job": "a", "status": "ok", "rc": 0, "attempts": 1})
    second = JobState.of({"job": "b", "status": "ok", "rc": 0, "attempts": 4, "error": None})
    assert first is second


def test_each_jobs_last_line_decides_and_plain_failures_are_not_kept() -> None:
    past = parse_states(
        [
            line("a", "failed"),
            line("a"),
            line("b"),
            line("b", "failed"),
            line("c", "failed", ambiguous=True),
            line("d", "failed"),
        ],
        "r.jsonl",
    )
    assert past.ok_jobs() == {"a"}
    assert past.states == {"a": JobState("ok"), "c": JobState("failed", ambiguous=True)}
    assert past.warnings == []


def test_resume_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    # Ten jobs retried over many runs: 4 MB of lines, ten jobs to remember.
    filler = "x" * 150
    lines = [line(f"job-{i % 10}", "failed", error=filler) for i in range(20_000)]
    lines += [line(f"job-{i}", error=filler) for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 4_000_000
    log = ResultLog(path)
    tracemalloc.start()
    try:
        past = log.open()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        log.close()
    assert past.ok_jobs() == {f"job-{i}" for i in range(10)}
    assert peak < 500_000  # a few lines and a read buffer, not the file
