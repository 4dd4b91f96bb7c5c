"""``follow-engine report``: a campaign read back from its results file, each job by its last
line, as a terminal table, JSON, CSV and one self-contained HTML page."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.results import JobResult, ResultLog

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = "interrupted with the request in flight: the exchange may have accepted it"
REFUSED = "HTTP 200 rc=1 mc=COPY_TRADE_SPOT_010"


def line(job: str, status: str = "ok", *, account: str = "alice", sent_at: tuple[str, ...] = (),
         error: str | None = None, ambiguous: bool = False, v1: bool = False) -> str:  # fmt: skip
    ok = status == "ok"
    return JobResult(
        job=job,
        account=account,
        leader_field="leaderAccountId" if v1 else "leaderOrderId",
        leader_id=7302994413592166401,
        status=status,  # type: ignore[arg-type]
        rc=0 if ok else 1,
        mc="SUCCESS" if ok else "COPY_TRADE_SPOT_010",
        http_status=200,
        attempts=max(1, len(sent_at)),
        error=error,
        latency_ms=20.0,
        finished_at=(sent_at or ("2026-11-25T17:05:41.397Z",))[-1],
        ambiguous=ambiguous,
        sent_at=sent_at,
    ).to_json()


def at(second: int, ms: int = 0) -> str:
    return f"2026-11-25T17:05:{second:02d}.{ms:03d}Z"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Five jobs over six lines: j1 failed, then ok on resume (last line wins)."""
    path = tmp_path / "r.jsonl"
    lines = [
        line("j1", "failed", error=REFUSED, sent_at=(at(1),)),
        line("j2", sent_at=(at(1, 100), at(1, 400)), ambiguous=True),
        line("j3", "failed", error=REFUSED, account="bob", sent_at=(at(2),)),
        line("j4", "failed", error=IN_FLIGHT, ambiguous=True, sent_at=(at(2, 500),)),
        line("j5", sent_at=(at(3),)),
        line("j1", sent_at=(at(20),)),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    done = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["report", *args])
    return done.exit_code, done.stdout, done.stderr


def test_the_last_line_of_each_job_counts(results: Path) -> None:
    code, out, _ = invoke(str(results))
    assert code == 1  # some job failed
    assert out.startswith(f"{results}: 5 jobs: 3 ok, 2 failed (each job's last line)")
    words = " ".join(out.split())
    assert "2 ambiguous (1 ok, 1 failed)" in words and "need nothing" in words
    assert re.search(rf"│ {re.escape(REFUSED)}\s+│ 1\s+│ j3\s+│", out), out
    assert re.search(r"│ alice\s+│ 4\s+│ 3\s+│ 1\s+│ 2\s+│ 5\s+│", out), out  # by account
    listed = re.findall(r"│ (j\d)\s+│", out.split("failed or ambiguous jobs: 3")[1])
    assert listed == ["j2", "j3", "j4"]


def test_json_for_scripts(results: Path) -> None:
    code, out, _ = invoke(str(results), "--json")
    assert code == 1
    report = json.loads(out)
    totals = report["totals"]
    assert (totals["jobs"], totals["ok"], totals["failed"]) == (5, 3, 2)
    assert (totals["ambiguous"], totals["ambiguous_failed"]) == (2, 1)
    # alice's requests left at :01.100 and :01.400 (j2), :02.500, :03.000 and :20.000; the one
    # of j1's first line at :01.000 is not the job's last line.
    assert totals["busiest_second"] == {"key": "alice", "requests": 2}
    assert (totals["rate_limit"], totals["per_ip"]) == (10, False)
    assert {row["error"]: row["first_jobs"] for row in report["by_error"]} == {
        REFUSED: ["j3"],
        IN_FLIGHT: ["j4"],
    }
    assert [job["job"] for job in report["jobs"]] == ["j2", "j3", "j4"]
    assert report["jobs"][0]["sent_at"] == [at(1, 100), at(1, 400)]


@pytest.mark.parametrize(
    ("options", "jobs"),
    [
        (["--failed"], ["j3", "j4"]),
        (["--ambiguous"], ["j2", "j4"]),
        (["--failed", "--ambiguous"], ["j2", "j3", "j4"]),
        (["--all"], ["j1", "j2", "j3", "j4", "j5"]),
    ],
)
def test_listing_options_choose_the_jobs(
    results: Path, options: list[str], jobs: list[str]
) -> None:
    _, out, _ = invoke(str(results), "--csv", *options)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["job"] for row in rows] == jobs
    _, out, _ = invoke(str(results), *options)
    assert re.findall(r"│ (j\d)\s+│", out) == jobs
    assert "jobs by status" not in out  # only the listing asked for


def test_csv_rows_hold_every_field(results: Path) -> None:
    _, out, _ = invoke(str(results), "--csv", "--ambiguous")
    row = next(csv.DictReader(io.StringIO(out)))
    assert row == {
        "job": "j2",
        "account": "alice",
        "leader_id": "7302994413592166401",
        "status": "ok",
        "rc": "0",
        "mc": "SUCCESS",
        "http_status": "200",
        "attempts": "2",
        "ambiguous": "True",
        "sent": "True",
        "error": "",
        "latency_ms": "20.0",
        "finished_at": at(1, 400),
        "sent_at": f"{at(1, 100)} {at(1, 400)}",
    }


def test_the_html_page_needs_no_network(results: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, _, err = invoke(str(results), "--html", str(page))
    assert code == 1 and f"wrote {page}" in err
    html = page.read_text()
    assert html.count("<svg") == 2  # outcomes per second, requests per key per second
    assert "limit: 10 requests/s per key" in html
    # The bars, a second each: j2's two requests at :01 (j1's first line is not its last);
    # j3 and j4 failing at :02; then 16 idle seconds cut out before j1's resend at :20.
    assert "2026-11-25T17:05:01Z: 2 requests (busiest key)</title>" in html
    assert "2026-11-25T17:05:02Z: 2 failed</title>" in html
    assert "2026-11-25T17:05:20Z: 1 ok</title>" in html
    assert "<title>0m 16s without a request or an outcome</title>" in html
    assert "<td>j4</td>" in html and REFUSED in html
    # Nothing fetched: no script, stylesheet, image, font or frame from anywhere.
    for fetch in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert fetch not in html
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"] * 2


def test_under_v1_the_limit_is_all_keys_together(tmp_path: Path) -> None:
    """Two accounts, six requests within a second: under v1 one limit of 2/s for both."""
    path = tmp_path / "r.jsonl"
    times = [at(5, 100 * n) for n in range(6)]
    path.write_text(
        "\n".join(
            line(f"j{n}", account="alice" if n % 2 else "bob", sent_at=(t,), v1=True)
            for n, t in enumerate(times)
        )
        + "\n"
    )
    code, out, _ = invoke(str(path))
    assert code == 0
    assert (
        "busiest second: 6 requests from all keys (per IP); OVER the limit of 2 requests/s per "
        "IP, all keys together (api v1)"
    ) in " ".join(out.split())
    page = tmp_path / "r.html"
    invoke(str(path), "--html", str(page))
    assert "limit: 2 requests/s of all keys together (the limit is per IP)" in page.read_text()


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_a_file_that_cannot_be_read_is_exit_2(tmp_path: Path, make: str) -> None:
    path = tmp_path / "r.jsonl"
    if make == "directory":
        path.mkdir()
    code, out, err = invoke(str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"{path}: ") and len(err.splitlines()) == 1


def test_report_reads_a_file_a_run_holds_without_touching_it(results: Path) -> None:
    before = results.read_bytes()
    log = ResultLog(results)
    log.open()  # holds the lock, as a run does
    try:
        code, out, _ = invoke(str(results), "--json")
    finally:
        log.close()
    assert code == 1 and json.loads(out)["totals"]["jobs"] == 5
    assert results.read_bytes() == before


def test_a_real_run_is_reported_within_its_limit(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(ROOT / "jobs.yaml", jobs)
    run = CliRunner().invoke(main, ["run", str(jobs), "--simulate", "--sim-latency", "0"])
    assert run.exit_code == 0, run.output
    code, out, _ = invoke(str(jobs.with_suffix(".results.jsonl")), "--json")
    assert code == 0
    totals = json.loads(out)["totals"]
    assert (totals["jobs"], totals["ok"], totals["attempts"]) == (12, 12, 12)
    assert 1 <= totals["busiest_second"]["requests"] <= 10


def test_a_torn_or_foreign_line_is_skipped_with_a_warning(results: Path) -> None:
    with results.open("a") as file:
        file.write('{"job": "j6", "status": "ok", "rc": [1]}\n{"job": "j7", "stat')
    code, out, err = invoke(str(results), "--json")
    assert code == 1
    assert json.loads(out)["totals"]["jobs"] == 6  # j6 counts, hand-edited as it is
    assert "skipped a line that is not a whole result" in err


def test_an_empty_file_is_no_failure(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("")
    code, out, _ = invoke(str(path))
    assert code == 0 and "0 jobs: 0 ok, 0 failed" in out


def test_json_and_csv_together_is_a_usage_error(results: Path) -> None:
    assert invoke(str(results), "--json", "--csv")[0] == 2


def test_a_line_from_before_sent_at_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    old = json.loads(line("j1"))
    del old["sent_at"], old["sent"]
    path.write_text(json.dumps(old) + "\n")
    code, out, _ = invoke(str(path), "--json")
    assert code == 0
    assert json.loads(out)["jobs"] == []
    assert json.loads(out)["totals"]["busiest_second"] is None
