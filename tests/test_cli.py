"""The command line as users and their scripts meet it: output, files and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.simulator import SimConfig, Simulator
from tests.procs import outcome_lines, start_piped

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jobs.yaml"
SECRET = "distinctive-secret-4f1c9a"

JOB_FILE = """\
version: 1
accounts:
  alice:
    api_key: alice-key
    secret_key: ${ALICE_SECRET}
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: btc_usdt
jobs:
  - account: alice
    leaderOrderId: 7302994413592166401
    followVal: 0.5
  - account: alice
    leaderOrderId: 7302994413592166402
    followVal: 0.25
"""


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner(env={"ALICE_SECRET": SECRET})


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOB_FILE)
    return path


def test_validate_prints_one_line_summary(cli: CliRunner, job_file: Path) -> None:
    result = cli.invoke(main, ["validate", str(job_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{job_file}: valid: 2 jobs, 1 accounts (api v4, 10 req/s per key)\n")


def test_validate_reports_every_problem_with_exit_2(cli: CliRunner, job_file: Path) -> None:
    bad = JOB_FILE.replace("followVal: 0.5", "followVal: -1")
    job_file.write_text(
        bad.replace(
            "account: alice\n    leaderOrderId: 7302994413592166402",
            "account: bob\n    leaderOrderId: 7302994413592166402",
        )
    )
    result = cli.invoke(main, ["validate", str(job_file)])
    assert result.exit_code == 2
    assert f"{job_file}:14: job alice:7302994413592166401 (jobs[0]): followVal:" in result.stderr
    assert f"{job_file}:15: job bob:7302994413592166402 (jobs[1]): account:" in result.stderr
    assert "Traceback" not in result.output
    assert SECRET not in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_missing_file_is_exit_2(cli: CliRunner, tmp_path: Path, command: str) -> None:
    result = cli.invoke(main, [command, str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "missing.yaml" in result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_are_exit_2(cli: CliRunner, job_file: Path) -> None:
    assert cli.invoke(main, ["run", str(job_file), "--no-such-flag"]).exit_code == 2
    assert cli.invoke(main, ["run", str(job_file), "--rate-limit", "0"]).exit_code == 2


def test_schema_is_the_job_files_json_schema(cli: CliRunner) -> None:
    result = cli.invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"version", "accounts", "jobs", "settings", "defaults"} <= set(schema["properties"])


def test_dry_run_shows_requests_and_sends_nothing(cli: CliRunner, job_file: Path) -> None:
    # Nothing listens at this address: a request would fail the command.
    text = job_file.read_text().replace("version: 1", "version: 1\nbase_url: http://127.0.0.1:9")
    job_file.write_text(text)
    result = cli.invoke(main, ["run", str(job_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("POST http://127.0.0.1:9/v4/account/copy-trade/follow") == 2
    assert '"leaderOrderId":7302994413592166401' in out
    assert "xt-validate-signature: <redacted>" in out
    assert SECRET not in result.output
    assert not job_file.with_suffix(".results.jsonl").exists()


def test_run_simulate_then_resume_sends_nothing_twice(cli: CliRunner, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(SAMPLE, jobs)
    first = cli.invoke(main, ["run", str(jobs), "--simulate", "--sim-latency", "0"])
    assert first.exit_code == 0, first.output
    results = jobs.with_suffix(".results.jsonl")
    lines = outcome_lines(results)
    assert len(lines) == 12 and {line["status"] for line in lines} == {"ok"}
    assert "12 jobs: 12 ok, 0 failed" in first.stdout
    recorded = results.read_text()
    second = cli.invoke(main, ["run", str(jobs), "--simulate"])
    assert second.exit_code == 0
    assert "skipping 12 jobs already ok" in second.stderr
    assert results.read_text() == recorded


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await start_piped(*args, env={"ALICE_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_failed_jobs_exit_1_and_are_recorded(job_file: Path) -> None:
    """A wrong secret, not checked before sending: the account is refused at its first
    follow, its other job is not sent, exit 1."""
    async with Simulator({"alice-key": "the-real-secret"}, SimConfig()) as sim:
        url = sim.base_url or ""
        code, out, err = await run_cli(
            "run", str(job_file), "--base-url", url, "--concurrency", "1", "--no-preflight"
        )
    assert code == 1, err
    lines = outcome_lines(job_file.with_suffix(".results.jsonl"))
    assert [line["mc"] for line in lines] == ["AUTH_103", None]
    assert lines[1]["error"] == "not sent: account alice rejected with AUTH_103"
    assert len(sim.arrivals) == 1
    assert SECRET not in out + err


async def test_python_dash_m_engine_is_the_same_command(job_file: Path) -> None:
    code, out, _ = await run_cli("validate", str(job_file))
    assert code == 0
    assert "valid: 2 jobs" in out
