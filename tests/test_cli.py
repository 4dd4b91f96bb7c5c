"""The command line as users and their scripts meet it: output, files and exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.client import PreparedRequest, XtClient
from engine.simulator import SimConfig
from tests.support import (
    BASE_LEADER,
    PROCESS_TIMEOUT,
    StartSimulator,
    WriteJobs,
    engine_env,
    key_of,
    outcome_lines,
    secret_of,
    start_piped,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jobs.yaml"
SECRET = secret_of("alice")
FIRST = f"{{account: alice, leaderOrderId: {BASE_LEADER}, followVal: 0.5}}"
SECOND = f"{{account: alice, leaderOrderId: {BASE_LEADER + 1}, followVal: 0.5}}"


@pytest.fixture
def job_path(write_jobs: WriteJobs) -> Path:
    """Two jobs of alice's, lines 12 and 13."""
    path = write_jobs({"alice": 2})
    assert path.read_text().splitlines()[11:13] == [f"  - {FIRST}", f"  - {SECOND}"]
    return path


def test_validate_prints_one_line_summary(cli: CliRunner, job_path: Path) -> None:
    result = cli.invoke(main, ["validate", str(job_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{job_path}: valid: 2 jobs, 1 accounts (api v4, 10 req/s per key)\n")


def test_validate_reports_every_problem_with_exit_2(cli: CliRunner, job_path: Path) -> None:
    bad = job_path.read_text().replace(FIRST, FIRST.replace("followVal: 0.5", "followVal: -1"))
    job_path.write_text(bad.replace(SECOND, SECOND.replace("account: alice", "account: bob")))
    result = cli.invoke(main, ["validate", str(job_path)])
    assert result.exit_code == 2
    assert f"{job_path}:12: job alice:{BASE_LEADER} (jobs[0]): followVal:" in result.stderr
    assert f"{job_path}:13: job bob:{BASE_LEADER + 1} (jobs[1]): account:" in result.stderr
    assert "Traceback" not in result.output
    assert SECRET not in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_missing_file_is_exit_2(cli: CliRunner, tmp_path: Path, command: str) -> None:
    result = cli.invoke(main, [command, str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "missing.yaml" in result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_are_exit_2(cli: CliRunner, job_path: Path) -> None:
    assert cli.invoke(main, ["run", str(job_path), "--no-such-flag"]).exit_code == 2
    assert cli.invoke(main, ["run", str(job_path), "--rate-limit", "0"]).exit_code == 2


def test_schema_is_the_job_files_json_schema(cli: CliRunner) -> None:
    result = cli.invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"version", "accounts", "jobs", "settings", "defaults"} <= set(schema["properties"])


def test_dry_run_shows_requests_and_sends_nothing(cli: CliRunner, job_path: Path) -> None:
    # Nothing listens at this address: a request would fail the command.
    text = job_path.read_text().replace("version: 1", "version: 1\nbase_url: http://127.0.0.1:9")
    job_path.write_text(text)
    result = cli.invoke(main, ["run", str(job_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("POST http://127.0.0.1:9/v4/account/copy-trade/follow") == 2
    assert '"leaderOrderId":7302994413592166401' in out
    assert "xt-validate-signature: <redacted>" in out
    assert SECRET not in result.output
    assert not job_path.with_suffix(".results.jsonl").exists()


def test_dry_run_prints_each_request_as_it_signs_it(
    cli: CliRunner, job_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million jobs are never held signed at once: each request is printed before the next
    is signed."""
    steps: list[str] = []
    prepare, echo = XtClient.prepare, click.echo

    def signing(self: XtClient, *args: Any, **kwargs: Any) -> PreparedRequest:
        steps.append("sign")
        return prepare(self, *args, **kwargs)

    def printing(message: str, **kwargs: Any) -> None:
        steps.append("print")
        echo(message, **kwargs)

    monkeypatch.setattr(XtClient, "prepare", signing)
    monkeypatch.setattr(click, "echo", printing)
    result = cli.invoke(main, ["run", str(job_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert steps == ["sign", "print", "sign", "print", "print"]  # the last: the count
    assert "dry run: 2 requests shown, none sent" in result.stderr


def test_run_simulate_then_resume_sends_nothing_twice(cli: CliRunner, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(SAMPLE, jobs)
    first = cli.invoke(main, ["run", str(jobs), "--simulate", "--sim-latency", "0"])
    assert first.exit_code == 0, first.output
    results = jobs.with_suffix(".results.jsonl")
    lines = outcome_lines(results)
    recorded = results.read_text()
    assert len(lines) == 12 and {line["status"] for line in lines} == {"ok"}
    assert "12 jobs: 12 ok, 0 failed" in first.stdout
    second = cli.invoke(main, ["run", str(jobs), "--simulate"])
    assert second.exit_code == 0
    assert "skipping 12 jobs already ok" in second.stderr
    assert results.read_text() == recorded


def test_a_run_with_stderr_closed_runs_and_says_so_on_stdout(tmp_path: Path) -> None:
    """A cron line may close stderr (``2>&-``): Python then has no ``sys.stderr`` at all, and
    progress, which goes there, must not stop the run."""
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(SAMPLE, jobs)
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m engine run "$1" --simulate --sim-latency 0 2>&-',
         sys.executable, str(jobs)],
        capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert "12 jobs: 12 ok, 0 failed" in done.stdout
    assert {line["status"] for line in outcome_lines(jobs.with_suffix(".results.jsonl"))} == {"ok"}


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await start_piped(*args, env=engine_env(["alice"]))
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_failed_jobs_exit_1_and_are_recorded(
    job_path: Path, simulator: StartSimulator
) -> None:
    """A wrong secret, not checked before sending: the account is refused at its first
    follow, its other job is not sent, exit 1."""
    sim = await simulator({key_of("alice"): "the-real-secret"}, SimConfig())
    code, out, err = await run_cli(
        "run",
        str(job_path),
        "--base-url",
        sim.base_url or "",
        "--concurrency",
        "1",
        "--no-preflight",
    )
    assert code == 1, err
    lines = outcome_lines(job_path.with_suffix(".results.jsonl"))
    assert [line["mc"] for line in lines] == ["AUTH_103", None]
    assert lines[1]["error"] == "not sent: account alice rejected with AUTH_103"
    assert len(sim.arrivals) == 1
    assert SECRET not in out + err


async def test_python_dash_m_engine_is_the_same_command(job_path: Path) -> None:
    code, out, _ = await run_cli("validate", str(job_path))
    assert code == 0
    assert "valid: 2 jobs" in out


async def test_version_is_the_installed_packages() -> None:
    """``--version`` says the version pip installed, which is pyproject.toml's."""
    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    assert metadata.version("follow-engine") == declared[1]
    code, out, err = await run_cli("--version")
    assert (code, out, err) == (0, f"follow-engine, version {declared[1]}\n", "")
