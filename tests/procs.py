"""``follow-engine`` as a separate process, the way a user, a script or a crash meets it.

A test that kills the engine, limits its file size or runs two at once needs the engine in
a process of its own while the simulator lives on in the test's event loop, so that what
arrived at the "exchange" outlives the engine and can be compared with what it recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.results import parse_results

ENGINE = (sys.executable, "-m", "engine")
BASE_LEADER = 7302994413592166401
#: Seconds any one engine process may take in these tests before it is killed as hung.
PROCESS_TIMEOUT = 60.0

FOLLOW_DEFAULTS = """\
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: xt_usdt,btc_usdt
"""


def secret_of(account: str) -> str:
    return f"{account}-s3cr3t-5e1f0c7a"


def key_of(account: str) -> str:
    return f"key-{account}"


def secret_var(account: str) -> str:
    return f"XT_{account.upper()}_SECRET_KEY"


def job_file(jobs_per_account: Mapping[str, int], *, extra: str = "") -> str:
    """A job file whose secrets come from the environment (``engine_env``); leader ids are
    ``BASE_LEADER`` upwards in account order, job ids the default ``account:leader``."""
    lines = ["version: 1", "accounts:"]
    for account in jobs_per_account:
        lines += [
            f"  {account}:",
            f"    api_key: {key_of(account)}",
            f"    secret_key: ${{{secret_var(account)}}}",
        ]
    text = "\n".join(lines) + "\n" + FOLLOW_DEFAULTS + "jobs:\n"
    leader = BASE_LEADER
    for account, count in jobs_per_account.items():
        for _ in range(count):
            text += f"  - {{account: {account}, leaderOrderId: {leader}, followVal: 0.5}}\n"
            leader += 1
    return text + extra


def job_ids(jobs_per_account: Mapping[str, int]) -> dict[int, str]:
    """Leader id -> job id, as ``job_file`` numbers them."""
    ids, leader = {}, BASE_LEADER
    for account, count in jobs_per_account.items():
        for _ in range(count):
            ids[leader] = f"{account}:{leader}"
            leader += 1
    return ids


def accounts_table(accounts: Mapping[str, Any]) -> dict[str, str]:
    """The simulator's api_key -> secret_key table for these accounts."""
    return {key_of(a): secret_of(a) for a in accounts}


def engine_env(accounts: Mapping[str, Any], **extra: str) -> dict[str, str]:
    """A clean environment holding the accounts' secrets, and nothing of the test runner's."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env.update({secret_var(a): secret_of(a) for a in accounts})
    env.update(extra)
    return env


@dataclass
class Finished:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


async def spawn(
    *args: str,
    env: Mapping[str, str],
    out: Path,
    err: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``follow-engine ARGS`` writing to files, never pipes: a killed engine leaves no
    pipe half read, and a chatty one cannot block on a full pipe."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            *ENGINE,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            preexec_fn=preexec_fn,
        )


async def start_piped(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start ``follow-engine ARGS`` with pipes, for a test that reads its output as it comes."""
    return await asyncio.create_subprocess_exec(
        *ENGINE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )


async def finish(
    process: asyncio.subprocess.Process, out: Path, err: Path, timeout: float = PROCESS_TIMEOUT
) -> Finished:
    """Wait for ``process`` (killed when past ``timeout``) and read what it wrote."""
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"engine still running after {timeout} s: killed") from None
    return Finished(code, out.read_text(errors="replace"), err.read_text(errors="replace"))


async def run_engine(
    *args: str,
    env: Mapping[str, str],
    workdir: Path,
    name: str = "engine",
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = PROCESS_TIMEOUT,
) -> Finished:
    """Run ``follow-engine ARGS`` to its end."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    process = await spawn(*args, env=env, out=out, err=err, preexec_fn=preexec_fn)
    return await finish(process, out, err, timeout)


def last_lines(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each job's last line in a results file, and the warnings for lines skipped."""
    text = path.read_text(errors="replace") if path.exists() else ""
    past = parse_results(text.split("\n"), str(path))
    return past.last, past.warnings


def outcome_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a results file that record an outcome, in order, each checked to come
    after its job's intent line (``sending``) when the job was attempted."""
    intended: set[str] = set()
    outcomes = []
    for text in path.read_text().splitlines():
        line = json.loads(text)
        if line["status"] == "sending":
            intended.add(line["job"])
            continue
        assert line["attempts"] == 0 or line["job"] in intended, f"no intent before {line}"
        outcomes.append(line)
    return outcomes


def ok_jobs(path: Path) -> set[str]:
    return {job for job, line in last_lines(path)[0].items() if line.get("status") == "ok"}


def unrecorded_lines(stderr: str) -> list[dict[str, Any]]:
    """The results the engine could not write and printed on stderr instead."""
    found = []
    for text in stderr.splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "job" in line:
            found.append(line)
    return found
