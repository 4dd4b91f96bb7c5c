"""``--env-file``: the job file's ``${VAR}`` read from a dotenv file, as cron and systemd run the
engine, and never a value shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.simulator import FOLLOW_PATHS, SimConfig, Simulator
from tests.support import (
    accounts_of,
    engine_env,
    job_file,
    last_lines,
    run_engine,
    secret_of,
    secret_var,
)

ACCOUNTS = {"alice": 2, "bob": 1}


def env_file(path: Path, accounts: dict[str, int] = ACCOUNTS) -> Path:
    lines = ["# the keys of this campaign"]
    lines += [f"export {secret_var(a)}='{secret_of(a)}'" for a in accounts]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_run_signs_with_the_secrets_of_the_env_file(tmp_path: Path) -> None:
    """The environment holds no secret; the simulator accepts only the right signatures."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS))
    keys = env_file(tmp_path / "xt.env")
    async with Simulator(accounts_of(ACCOUNTS), SimConfig()) as sim:
        done = await run_engine(
            "run", str(jobs), "--base-url", sim.base_url or "", "--env-file", str(keys),
            env=engine_env({}), workdir=tmp_path,
        )  # fmt: skip
    assert done.code == 0, done.output
    assert {line["status"] for line in last_lines(tmp_path / "jobs.results.jsonl")[0].values()} == {
        "ok"
    }
    # Three follows, each signed with its secret from the env file (as were the checks).
    assert len([a for a in sim.arrivals if a.path in FOLLOW_PATHS]) == 3
    assert {a.mc for a in sim.arrivals} == {"SUCCESS"}
    for account in ACCOUNTS:
        assert secret_of(account) not in done.output


def test_the_env_files_values_win_over_the_environment(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS).replace("api_key: key-alice", "api_key: ${ALICE_KEY}"))
    keys = tmp_path / "xt.env"
    keys.write_text("ALICE_KEY=from-the-file\n")
    runner = CliRunner(env={**engine_env(ACCOUNTS), "ALICE_KEY": "from-the-environment"})
    done = runner.invoke(main, ["run", str(jobs), "--env-file", str(keys), "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "xt-validate-appkey: from-the-file" in done.stdout


@pytest.mark.parametrize("command", ["validate", "run", "schedule"])
def test_every_command_that_reads_a_job_file_takes_it(tmp_path: Path, command: str) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS))
    keys = env_file(tmp_path / "xt.env")
    args = ["--dry-run"] if command == "run" else []
    done = CliRunner(env=engine_env({})).invoke(
        main, [command, str(jobs), "--env-file", str(keys), *args]
    )
    if command == "schedule":  # read, then refused for want of a schedule.cron
        assert done.exit_code == 2 and "no schedule.cron to run" in done.stderr
    else:
        assert done.exit_code == 0, done.output
    assert "not set" not in done.output
    for account in ACCOUNTS:
        assert secret_of(account) not in done.output


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", "cannot read env file: No such file or directory; nothing sent"),
        ("directory", "cannot read env file: not a regular file; nothing sent"),
        ("binary", "cannot read env file: not UTF-8 text; nothing sent"),
        ("garbled", "line 2: not a KEY=value line; nothing sent"),
    ],
)
def test_an_env_file_that_cannot_be_read_is_exit_2(tmp_path: Path, make: str, message: str) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS))
    keys = tmp_path / "xt.env"
    if make == "directory":
        keys.mkdir()
    elif make == "binary":
        keys.write_bytes(b"XT_ALICE_SECRET_KEY=\xff\xfe\n")
    elif make == "garbled":
        keys.write_text("XT_ALICE_SECRET_KEY=fine\nthe-secret-s3cr3t is here\n")
    done = CliRunner(env=engine_env({})).invoke(main, ["run", str(jobs), "--env-file", str(keys)])
    assert done.exit_code == 2
    assert done.stderr == f"{keys}: {message}\n"
    assert "s3cr3t" not in done.output and "fine" not in done.output
    assert not (tmp_path / "jobs.results.jsonl").exists()
