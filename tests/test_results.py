"""The results file: append-only lines, resume, torn lines, the lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.results import JobResult, ResultLog, ResultsFileError


def result(job: str, status: str = "ok", **changes: object) -> JobResult:
    fields: dict = dict(
        job=job,
        account="alice",
        leader_field="leaderOrderId",
        leader_id=7302994413592166401,
        status=status,
        rc=0,
        mc="SUCCESS",
        http_status=200,
        attempts=1,
        error=None,
        latency_ms=12.5,
        finished_at="2026-11-25T10:00:00.000Z",
    )
    fields.update(changes)
    return JobResult(**fields)


def test_each_record_is_one_flushed_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    log = ResultLog(path)
    log.open()
    log.record(result("a"))
    # Readable by another process before close: it was flushed.
    line = json.loads(path.read_text())
    log.close()
    assert line["job"] == "a"
    assert line["leaderOrderId"] == 7302994413592166401
    for field in (
        "account",
        "status",
        "rc",
        "mc",
        "http_status",
        "attempts",
        "error",
        "latency_ms",
        "finished_at",
        "ambiguous",
        "sent",
    ):
        assert field in line


def test_resume_reads_each_jobs_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    log = ResultLog(path)
    log.open()
    log.record(result("a", "failed", rc=1, mc="COMMON_002"))
    log.record(result("a"))
    log.record(result("b", "failed"))
    log.close()
    past = ResultLog(path).open()
    assert past.ok_jobs() == {"a"}
    assert "b" not in past.states  # a plain failure is sent again, as if never run


def test_fresh_forgets_earlier_results(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    log = ResultLog(path)
    log.open()
    log.record(result("a"))
    log.close()
    log = ResultLog(path)
    assert log.open(fresh=True).ok_jobs() == set()
    log.close()
    assert path.read_text() == ""


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(result("a").to_json() + "\n" + result("b").to_json()[:30])
    log = ResultLog(path)
    past = log.open()
    assert past.ok_jobs() == {"a"}
    assert past.warnings == [f"{path}:2: skipped a line that is not a whole result"]
    log.record(result("c"))
    log.close()
    # The next record starts on a line of its own.
    assert json.loads(path.read_text().splitlines()[-1])["job"] == "c"


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    first = ResultLog(path)
    first.open()
    with pytest.raises(ResultsFileError, match="in use by another run"):
        ResultLog(path).open()
    first.close()
    ResultLog(path).open()


def test_an_unwritable_place_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="cannot open results file"):
        ResultLog(tmp_path / "missing-dir" / "r.jsonl").open()
