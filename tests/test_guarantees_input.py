"""Issue 10, what a job file or a command line may hold: credentials a header can carry, a
secret only where it is used, schedules that can fire, numbers in plain decimal, job ids that
cannot drive the terminal, and no secret handed to a child process. Each refusal is exit 2
with a message naming the file, the field and (for a secret) the account, never the value;
and a refused file sends nothing to a live exchange."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.jobfile import JobFileError, load
from engine.simulator import Simulator
from engine.yamlread import printable
from tests.support import engine_env, follow_run, job_file, run_engine, secret_of

SECRET = secret_of("alice")
ENV = {"XT_ALICE_API_KEY": "key-alice", "XT_ALICE_SECRET_KEY": SECRET}

JOBS = """\
version: 1
accounts:
  alice:
    api_key: {api_key}
    secret_key: {secret_key}
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: xt_usdt,btc_usdt
jobs:
  - account: alice
    leaderOrderId: 7302994413592166401
    followVal: 0.5
"""


def jobs_text(
    api_key: str = "${XT_ALICE_API_KEY}", secret_key: str = "${XT_ALICE_SECRET_KEY}"
) -> str:
    return JOBS.format(api_key=api_key, secret_key=secret_key)


def refusal(path: Path, env: dict[str, str] = ENV) -> str:
    """The loader's message for ``path``, which must be refused."""
    with pytest.raises(JobFileError) as caught:
        load(path, env=env)
    return str(caught.value)


# --- 1. Credentials a request header can carry ---------------------------------------------

#: (api_key as written, secret_key as written, extra environment, field refused).
BAD_CREDENTIALS = {
    # A CRLF env file sourced as the README's cron line does: a carriage return at the end.
    "api key ends in CR": ("${XT_ALICE_API_KEY}", "${XT_ALICE_SECRET_KEY}",
                           {"XT_ALICE_API_KEY": "key-alice\r"}, "api_key"),
    "secret ends in LF": ("key-alice", "${XT_ALICE_SECRET_KEY}",
                          {"XT_ALICE_SECRET_KEY": SECRET + "\n"}, "secret_key"),
    "api key with NUL": ('"key\\0alice"', "${XT_ALICE_SECRET_KEY}", {}, "api_key"),
    "api key with a space": ('"key alice"', "${XT_ALICE_SECRET_KEY}", {}, "api_key"),
    "secret with a tab": ("key-alice", '"alice\\ts3cr3t-5e1f"', {}, "secret_key"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CREDENTIALS.values(), ids=list(BAD_CREDENTIALS))
async def test_a_credential_no_header_can_carry_is_refused_and_nothing_is_sent(
    tmp_path: Path, case: tuple[str, str, dict[str, str], str]
) -> None:
    """Before the fix ``validate`` said valid and ``run`` hung forever on aiohttp's
    ValueError. Now both exit 2 naming the field, and the exchange sees nothing."""
    api_key, secret_key, extra, field = case
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(jobs_text(api_key, secret_key))
    env = engine_env({"alice": 1}, **{"XT_ALICE_API_KEY": "key-alice", **extra})
    async with Simulator() as sim:
        validate = await run_engine("validate", str(jobs), env=env, workdir=tmp_path, name="v")
        run = await run_engine(
            *follow_run(jobs, sim), env=env, workdir=tmp_path,
            timeout=20,
        )  # fmt: skip
    expected = f"accounts.alice.{field}: must be printable ASCII without spaces"
    for finished in (validate, run):
        assert finished.code == 2, finished.output
        assert expected in finished.err and "nothing sent" in finished.err
        assert "Traceback" not in finished.err
        assert secret_of("alice") not in finished.output
    assert sim.arrivals == []
    assert not (tmp_path / "jobs.results.jsonl").exists()


# --- 4. A secret anywhere but secret_key -----------------------------------------------------

#: Where a secret was put by mistake -> the label the refusal names.
MISPLACED = {
    "job id": (jobs_text() + "    id: ${XT_ALICE_SECRET_KEY}\n", "id"),
    "base_url": ("base_url: https://sapi.xt.com/${XT_ALICE_SECRET_KEY}\n" + jobs_text(),
                 "base_url"),
    "a job's symbols": (jobs_text() + "    symbols: [xt_usdt, '${XT_ALICE_SECRET_KEY}']\n",
                        "symbols[1]"),
    "api_key": (jobs_text(api_key="${XT_ALICE_SECRET_KEY}"), "accounts.alice.api_key"),
    "defaults": (jobs_text().replace("followType: RATE", "followType: ${XT_ALICE_SECRET_KEY}"),
                 "defaults.followType"),
    "another account's key": (
        jobs_text().replace("defaults:", "  bob:\n    api_key: ${XT_ALICE_SECRET_KEY}\n"
                            "    secret_key: bob-s3cr3t-value\ndefaults:"),
        "accounts.bob.api_key"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISPLACED.values(), ids=list(MISPLACED))
def test_a_secret_outside_secret_key_is_an_error_naming_field_and_account(
    tmp_path: Path, case: tuple[str, str]
) -> None:
    """Before the fix an id or a base_url holding the secret was valid, and the secret was
    printed by --dry-run and stored in the results file."""
    text, label = case
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    message = refusal(path)
    assert f"{label}: holds the secret key of account alice" in message
    assert SECRET not in message


def test_a_literal_secret_outside_secret_key_is_refused_too(tmp_path: Path) -> None:
    literal = "literal-s3cr3t-77a0"
    path = tmp_path / "jobs.yaml"
    path.write_text(jobs_text(secret_key=literal) + f"    id: {literal}\n")
    message = refusal(path)
    assert "id: holds the secret key of account alice" in message
    assert literal not in message


#: Secrets that ``repr`` or JSON escape when a message quotes them back, or that a list
#: written as one string (``symbols``) splits.
AWKWARD_SECRETS = {
    "backslash": "back\\slash-s3cr3t",
    "quotes": "both'quo\"tes-s3cr3t",
    "comma": "s3cr3t-first,s3cr3t-second",
    "control character": "be\x07ll-s3cr3t",
}


def quoted_forms(secret: str) -> set[str]:
    """The secret as a message may quote it: raw, escaped, or a part split off at a comma."""
    return {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        printable(secret),
        secret.encode("unicode_escape").decode(),
        *(part for part in secret.split(",") if len(part) >= 6),
    }


@pytest.mark.parametrize("secret", AWKWARD_SECRETS.values(), ids=list(AWKWARD_SECRETS))
def test_a_secret_is_never_quoted_back_in_any_form(tmp_path: Path, secret: str) -> None:
    """Messages quote values with ``repr`` (a symbol) or raw (a key): redaction works on
    every form of the raw value. Before the fix a backslash, quotes, a comma or a control
    character in the secret let some form of it through."""
    written = json.dumps(secret)  # a JSON string is a YAML double-quoted scalar
    text = (
        jobs_text(secret_key=written).replace(
            "symbols: xt_usdt,btc_usdt", f"symbols: {json.dumps('xt_usdt,' + secret)}"
        )
        + f"    symbols: [xt_usdt, {written}]\n"
        + f"  - {{account: alice, leaderOrderId: 2, followVal: 1, {written}: 1}}\n"
        + f"  - {{account: {written}, leaderOrderId: 3, followVal: 1}}\n"
    )
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    message = refusal(path)
    assert "defaults.symbols: holds the secret key of account alice" in message
    assert "<secret>" in message
    for form in quoted_forms(secret):
        assert form not in message, form
    # The command line says the same, in the same words.
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    for form in quoted_forms(secret):
        assert form not in result.output, form


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
async def test_a_base_url_flag_holding_a_secret_is_refused(tmp_path: Path, dry_run: bool) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file({"alice": 2}))
    secret = secret_of("alice")
    args = ["run", str(jobs), "--base-url", f"http://127.0.0.1:9/{secret}"]
    finished = await run_engine(
        *args, *(["--dry-run"] if dry_run else []), env=engine_env({"alice": 2}), workdir=tmp_path
    )
    assert finished.code == 2, finished.output
    assert "--base-url: holds the secret key of account alice" in finished.err
    assert secret not in finished.output
    assert not (tmp_path / "jobs.results.jsonl").exists()


# --- 8. A schedule that validates can fire ----------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("cron: '0 0 30 2 *'", "schedule.cron: never fires"),
        ("at: 9999-12-31T23:59:59-14:00", "schedule.at: is out of range in UTC"),
    ],
)
def test_validate_refuses_a_schedule_that_would_crash_later(
    tmp_path: Path, schedule: str, message: str
) -> None:
    """Before the fix both were valid, then ``schedule`` died of CroniterBadDateError and
    ``run`` of OverflowError."""
    path = tmp_path / "jobs.yaml"
    path.write_text(jobs_text() + f"schedule:\n  {schedule}\n")
    result = CliRunner(env=ENV).invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and message in result.output
    assert "Traceback" not in result.output


# --- 10. Numbers in plain ASCII decimal, a base_url that is signed as sent --------------------

NOT_PLAIN_DECIMAL = {
    "hex": "0x10",
    "underscores, quoted": "'1_0.5'",
    "underscores": "1_000.5",
    "full-width digits": "'\uff10.\uff15'",  # 0.5 in full-width digits
    "Arabic-Indic digits": "'\u0660\u066b\u0665'",  # 0.5, with the Arabic decimal separator
    "Arabic-Indic integer": "'\u0661'",  # 1
    "hex from the environment": "${N}",
}


@pytest.mark.parametrize("value", NOT_PLAIN_DECIMAL.values(), ids=list(NOT_PLAIN_DECIMAL))
def test_a_number_not_in_plain_decimal_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(jobs_text().replace("followVal: 0.5", f"followVal: {value}"))
    message = refusal(path, env={**ENV, "N": "0x10"})
    assert "job alice:7302994413592166401 (jobs[0]): followVal: must be" in message


def test_a_hex_leader_id_is_refused_not_sent_as_a_decimal_nobody_wrote(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(jobs_text().replace("7302994413592166401", "0x6559A2E0A6A1C001"))
    message = refusal(path)
    assert "(jobs[0]): leaderOrderId: must be a whole number" in message
    assert str(0x6559A2E0A6A1C001) not in message


@pytest.mark.parametrize("url", ["https://sapi.xt.com/#frag", "https://sapi.xt.com/?a=1"])
def test_a_base_url_with_a_fragment_or_query_is_refused(tmp_path: Path, url: str) -> None:
    """It would sign one path and send to another."""
    path = tmp_path / "jobs.yaml"
    path.write_text(f"base_url: '{url}'\n" + jobs_text())
    assert "base_url: must be an http(s) URL" in refusal(path)


# --- 13. Job ids cannot write escape sequences to the terminal --------------------------------


def test_dry_run_escapes_control_characters_in_job_ids(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(jobs_text() + '    id: "clear\\e[2Jthe\\ascreen"\n')
    result = CliRunner(env=ENV).invoke(main, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "# job clear\\x1b[2Jthe\\x07screen (account alice)" in result.output


# --- 14. No child process inherits a secret ---------------------------------------------------


async def test_no_child_process_inherits_the_environments_secrets(tmp_path: Path) -> None:
    """croniter's import runs ``file -b`` on the interpreter: a fake ``file`` first on PATH
    writes down the environment it was given. A cron file, so that validating imports it."""
    bin_dir, dump = tmp_path / "bin", tmp_path / "file-env.txt"
    bin_dir.mkdir()
    fake = bin_dir / "file"
    fake.write_text(f"#!/bin/sh\nenv > '{dump}'\necho 'ELF 64-bit LSB executable'\n")
    fake.chmod(0o755)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file({"alice": 1}, extra="schedule:\n  cron: '0 9 * * *'\n"))
    env = engine_env({"alice": 1}, XT_ALICE_API_KEY="key-alice")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    finished = await run_engine("validate", str(jobs), env=env, workdir=tmp_path)
    assert finished.code == 0, finished.output
    assert dump.exists(), "the fake `file` never ran: this test shows nothing"
    seen = dump.read_text()
    assert f"PATH={bin_dir}" in seen
    assert secret_of("alice") not in seen
    assert "XT_" not in seen
