"""Guard rails: a pace above the API's own limit, a dry run after a run, a base URL on the
command line, a busy port for the simulator, a slip in ``defaults``: each stopped with one
clear message and exit 2, nothing sent."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.results import ResultLog
from engine.simulator import SimConfig, Simulator
from tests.support import BASE_LEADER, FOLLOW_DEFAULTS, engine_env, job_file, run_engine

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = {"alice": 2}


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.yaml"
    shutil.copy(ROOT / "jobs.yaml", jobs)
    return jobs


def as_v1(sample: Path) -> Path:
    """The sample switched to api v1, its ``rate_limit: 10`` kept, as the issue found it."""
    text = sample.read_text().replace("  api: v4 ", "  api: v1 ")
    sample.write_text(text.replace("leaderOrderId", "leaderAccountId"))
    return sample


def invoke(*args: str) -> tuple[int, str, str]:
    env = {"COLUMNS": "200", **engine_env({"alice": 1})}
    done = CliRunner(env=env).invoke(main, list(args))
    return done.exit_code, done.stdout, done.stderr


def test_a_rate_limit_above_the_apis_is_an_error_naming_both(sample: Path) -> None:
    jobs = as_v1(sample)
    line = next(
        n for n, text in enumerate(jobs.read_text().splitlines(), 1) if "rate_limit" in text
    )
    for args in (("validate",), ("run", "--simulate")):
        code, out, err = invoke(args[0], str(jobs), *args[1:])
        assert code == 2, err
        assert err.startswith(
            f"{jobs}:{line}: settings.rate_limit: 10 requests/s is above the v1 API's limit of "
            "2 requests/s per IP, all keys together; lower it, or pass --allow-over-limit"
        )
        assert out == ""
    assert not jobs.with_suffix(".results.jsonl").exists()


def test_allow_over_limit_makes_it_a_warning(sample: Path) -> None:
    code, out, err = invoke("validate", str(as_v1(sample)), "--allow-over-limit")
    assert code == 0
    assert "valid: 12 jobs" in out
    assert "warning: " in err and "above the v1 API's limit of 2" in err
    assert "allowed by --allow-over-limit" in err


async def test_rate_limit_on_the_command_line_is_held_to_the_same_rule(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS))
    async with Simulator(None, SimConfig()) as sim:
        done = await run_engine(
            "run", str(jobs), "--base-url", sim.base_url or "", "--rate-limit", "20",
            env=engine_env(ACCOUNTS), workdir=tmp_path,
        )  # fmt: skip
    assert done.code == 2
    assert "--rate-limit: 20 requests/s is above the v4 API's limit of 10" in done.err
    assert sim.arrivals == []


def test_a_lower_rate_limit_on_the_command_line_overrides_the_files(sample: Path) -> None:
    code, _, err = invoke("run", str(as_v1(sample)), "--rate-limit", "2", "--dry-run")
    assert code == 0, err


def test_dry_run_after_a_finished_run_shows_nothing_to_send(sample: Path) -> None:
    assert invoke("run", str(sample), "--simulate", "--sim-latency", "0")[0] == 0
    results = sample.with_suffix(".results.jsonl")
    before = results.read_bytes()
    log = ResultLog(results)
    log.open()  # a run holding the file does not stop a dry run reading it
    try:
        code, out, err = invoke("run", str(sample), "--dry-run")
    finally:
        log.close()
    assert code == 0
    assert "POST " not in out
    assert err.endswith(
        f"dry run: 0 requests shown, none sent; 12 jobs skipped, already ok in {results}\n"
    )
    assert results.read_bytes() == before
    code, out, err = invoke("run", str(sample), "--dry-run", "--fresh")
    assert out.count("POST ") == 12 and "dry run: 12 requests shown, none sent\n" in err


def test_dry_run_shows_only_what_is_not_yet_ok(sample: Path) -> None:
    results = sample.with_suffix(".results.jsonl")
    results.write_text(
        '{"job":"alice-01","status":"ok"}\n{"job":"alice-02","status":"failed"}\n'
        '{"job":"alice-03","status":"ok"}\n{"job":"alice-03","status":"failed"}\n'
    )
    code, out, err = invoke("run", str(sample), "--dry-run")
    assert code == 0
    assert "# job alice-01 " not in out and "# job alice-02 " in out and "# job alice-03 " in out
    assert "11 requests shown, none sent; 1 jobs skipped" in err


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}?x=1", "http://127.0.0.1:{port}#x", "http://u:p@127.0.0.1:{port}"],
)
async def test_base_url_on_the_command_line_is_checked_like_the_files(
    tmp_path: Path, url: str
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS))
    async with Simulator(None, SimConfig()) as sim:
        port = (sim.base_url or "").rsplit(":", 1)[1]
        done = await run_engine(
            "run", str(jobs), "--base-url", url.format(port=port),
            env=engine_env(ACCOUNTS), workdir=tmp_path,
        )  # fmt: skip
        in_file = f"version: 1\nbase_url: {url.format(port=port)}"
        jobs.write_text(jobs.read_text().replace("version: 1", in_file))
        from_file = await run_engine("run", str(jobs), env=engine_env(ACCOUNTS), workdir=tmp_path)
    assert done.code == from_file.code == 2
    rule = "must be an http(s) URL such as https://sapi.xt.com"
    assert rule in done.err and rule in from_file.err
    assert "Traceback" not in done.err + from_file.err
    assert sim.arrivals == []


async def test_simulate_on_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run_engine(
            "simulate", "--port", str(port), env=engine_env({}), workdir=tmp_path
        )
    assert done.code == 2
    assert done.err == f"simulate: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def _jobs(count: int, defaults: str) -> str:
    text = job_file({"alice": count})
    return text.replace(FOLLOW_DEFAULTS, defaults)


def test_a_typo_in_defaults_is_one_problem_not_one_per_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(_jobs(300, FOLLOW_DEFAULTS.replace("followType", "followtype")))
    code, _, err = invoke("validate", str(jobs))
    assert code == 2
    assert err.splitlines() == [
        f"{jobs}:7: defaults.followtype: unknown key; did you mean followType?",
        f"{jobs}: 1 problem(s); nothing sent",
    ]


def test_a_field_missing_from_defaults_and_every_job_is_one_problem(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(_jobs(300, FOLLOW_DEFAULTS.replace("  followType: RATE\n", "")))
    code, _, err = invoke("validate", str(jobs))
    assert code == 2
    assert err.splitlines() == [
        f"{jobs}:6: defaults.followType: required: set it in defaults or in each job; 300 of "
        "300 jobs lack it: jobs[0] (line 11), jobs[1] (line 12), jobs[2] (line 13), ...",
        f"{jobs}: 1 problem(s); nothing sent",
    ]


def test_a_field_missing_from_a_few_jobs_is_named_per_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    text = _jobs(2, FOLLOW_DEFAULTS.replace("  followType: RATE\n", ""))
    jobs.write_text(text.replace("followVal: 0.5}", "followVal: 0.5, followType: FUND}", 1))
    code, _, err = invoke("validate", str(jobs))
    assert code == 2
    assert err.splitlines() == [
        f"{jobs}:12: job alice:{BASE_LEADER + 1} (jobs[1]): followType: required: set it in the "
        "job or in defaults",
        f"{jobs}: 1 problem(s); nothing sent",
    ]
