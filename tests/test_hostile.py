"""Hostile input: job files that are wrong in every way, answers that are not what XT sends,
and results files that were tampered with. Always a clear error or the right record; never
a traceback, never a request sent on a file that was refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.campaign import Campaign
from engine.cli import main
from engine.client import XtClient
from engine.collector import Collector
from engine.jobfile import MAX_FILE_BYTES, JobFileError, load
from engine.launch import MAX_LINE_WARNINGS, LaunchOptions, launch_campaign
from engine.pool import WorkerPool
from engine.profiles import V4
from engine.results import JobResult, ResultLog
from engine.simulator import SimConfig
from tests.support import (
    Finished,
    Handler,
    StartSimulator,
    accounts_of,
    canned,
    cut_short,
    dribble,
    engine_env,
    job_file,
    make_campaign,
    run_engine,
    secret_of,
)

# --- The job-file loader under arbitrary input --------------------------------------------

SECRET = "hostile-s3cr3t-value-0b5e"
ENV = {"XT_ALICE_API_KEY": "key-a", "XT_ALICE_SECRET_KEY": SECRET, "N": "7"}
VALID = """\
version: 1
base_url: https://sapi.xt.com
settings:
  api: v4
  rate_limit: 10
  concurrency: 8
accounts:
  alice:
    api_key: ${XT_ALICE_API_KEY}
    secret_key: ${XT_ALICE_SECRET_KEY}
  bob:
    api_key: bob-key
    secret_key: ${XT_BOB_SECRET_KEY:-bob-secret-default}
defaults: &defaults
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: [xt_usdt, btc_usdt]
jobs:
  - id: f-001
    account: alice
    leaderOrderId: 7302994413592166401
    followVal: 0.5
  - account: bob
    leaderOrderId: '7302994413592166402'
    followVal: ${N}
    followLoss: 200
    not_before: 2026-01-01T09:00:00Z
  - account: alice
    leaderOrderId: 7302994413592166403
    followType: FUND
    followVal: 100
    symbols: eth_usdt,btc_usdt
"""
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=HEALTH)


def loads_cleanly(path: Path, data: bytes) -> Campaign | None:
    """The property: a ``Campaign`` or a ``JobFileError`` whose every problem is one line
    naming the file, never the secret. Any other exception fails the test by itself."""
    path.write_bytes(data)
    try:
        campaign = load(path, env=ENV)
    except JobFileError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith(str(path)), problem
            assert "\n" not in problem
            assert SECRET not in problem
        return None
    assert campaign.jobs and campaign.accounts
    assert all(job.account in campaign.accounts for job in campaign.jobs)
    assert len({job.id for job in campaign.jobs}) == len(campaign.jobs)
    assert all(SECRET not in warning for warning in campaign.warnings)
    return campaign


def test_the_valid_base_loads(tmp_path: Path) -> None:
    campaign = loads_cleanly(tmp_path / "jobs.yaml", VALID.encode())
    assert campaign is not None and len(campaign.jobs) == 3


#: What YAML is made of, so random text hits anchors, tags, flow and block syntax.
YAML_ALPHABET = string.ascii_letters[:6] + "019.-_:[]{},&*!|>'\"#%@?$ \n\t\\~"


@FUZZ
@given(text=st.text(alphabet=YAML_ALPHABET, max_size=300))
def test_yaml_shaped_noise(tmp_path: Path, text: str) -> None:
    loads_cleanly(tmp_path / "jobs.yaml", text.encode())


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    loads_cleanly(tmp_path / "jobs.yaml", data)


KEYS = [
    "version",
    "accounts",
    "jobs",
    "settings",
    "defaults",
    "schedule",
    "base_url",
    "api_key",
    "secret_key",
    "account",
    "id",
    "leaderOrderId",
    "leaderAccountId",
    "followType",
    "followVal",
    "followLoss",
    "followLossOperate",
    "autoFollowSymbol",
    "symbols",
    "not_before",
    "api",
    "rate_limit",
    "concurrency",
    "max_attempts",
    "timeout",
    "recv_window",
    "at",
    "cron",
    "timezone",
    "alice",
]
WORDS = [
    "alice",
    "v4",
    "v1",
    "RATE",
    "FUND",
    "LEADER_CLOSE",
    "btc_usdt",
    "xt_usdt,btc_usdt",
    "${XT_ALICE_SECRET_KEY}",
    "${MISSING}",
    "${N:-3}",
    "$${x}",
    "${",
    "https://sapi.xt.com",
    "http://[::1",
    "0 9 * * *",
    "Europe/Paris",
    "2026-12-01T09:00:00Z",
    "9223372036854775808",
    "7302994413592166401",
    "1e999999999",
    "-0",
    ".nan",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.decimals(allow_nan=False).map(str),
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.dates(),
    st.datetimes(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
job = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
job_file_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), values),
        "accounts": st.dictionaries(
            st.one_of(st.sampled_from(["alice", "bob"]), keys),
            st.one_of(
                st.fixed_dictionaries(
                    {"api_key": st.sampled_from(["k", "${XT_ALICE_API_KEY}"]) | values},
                    optional={"secret_key": st.sampled_from(["${XT_ALICE_SECRET_KEY}"]) | values},
                ),
                values,
            ),
            max_size=3,
        ),
        "jobs": st.one_of(st.lists(job, max_size=4), values),
        "defaults": st.one_of(job, values),
        "settings": st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=4), values),
        "schedule": st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=3), values),
        "base_url": values,
    },
)


@FUZZ
@given(doc=st.one_of(values, job_file_like))
def test_arbitrary_yaml_documents(tmp_path: Path, doc: Any) -> None:
    loads_cleanly(tmp_path / "jobs.yaml", yaml.safe_dump(doc).encode())


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "insert", "replace", "indent", "cut"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(WORDS) | st.text(alphabet=YAML_ALPHABET, max_size=12),
)


def mutate(text: str, changes: list[tuple[str, int, int, str]]) -> str:
    """``text`` with lines deleted, doubled, swapped, re-indented, values replaced, text
    inserted or the file cut short, as a slip of the hand or a bad merge does."""
    lines = text.split("\n")
    for kind, a, b, piece in changes:
        i, j = a % len(lines), b % len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "insert":
            at = b % (len(lines[i]) + 1)
            lines[i] = lines[i][:at] + piece + lines[i][at:]
        elif kind == "replace" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + piece
        elif kind == "indent":
            lines[i] = " " * (b % 5) + lines[i].lstrip()
        elif kind == "cut":
            return "\n".join(lines)[: b % (len(text) + 1)]
    return "\n".join(lines)


@FUZZ
@given(changes=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_files(tmp_path: Path, changes: list[tuple[str, int, int, str]]) -> None:
    loads_cleanly(tmp_path / "jobs.yaml", mutate(VALID, changes).encode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Found by test_mutated_valid_files: a problem inside a duplicate ``jobs:`` that the
        # reader set aside was labelled from the kept one, which was null (a TypeError).
        (
            "jobs:\njobs:\n  - account: a\n    account: a\n",
            "F:4: job ? (jobs[0]): account: duplicate key (first at line 3)",
        ),
        # Found by test_arbitrary_yaml_documents: a key holding a newline broke a problem
        # over two lines; an escape code would have reached the terminal.
        ('defaults: {"\\n": 1, "\\e[2J": 2}\n', "F:1: defaults.\\n: unknown key"),
        ('defaults: {"\\e[2J": 2}\n', "F:1: defaults.\\x1b[2J: unknown key"),
    ],
)
def test_found_by_fuzzing(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(JobFileError) as caught:
        load(path, env=ENV)
    problems = [p.replace(str(path), "F", 1) for p in caught.value.problems]
    assert expected in problems
    assert all(p.isprintable() for p in problems)


def test_a_secret_quoted_back_in_a_message_is_blotted_out(tmp_path: Path) -> None:
    """A ``${XT_ALICE_SECRET_KEY}`` written where a symbol or an id goes is refused without
    the message repeating the secret it resolved to."""
    text = VALID.replace("symbols: eth_usdt,btc_usdt", "symbols: ${XT_ALICE_SECRET_KEY}")
    text = text.replace("id: f-001", "id: ${XT_ALICE_SECRET_KEY}\n    followType: ${N}")
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(JobFileError) as caught:
        load(path, env=ENV)
    message = str(caught.value)
    assert SECRET not in message
    assert "symbols: holds the secret key of account alice" in message
    assert "job <secret> (jobs[0]): id: holds the secret key of account alice" in message


# --- The CLI on hostile job files: exit 2, a clear message, nothing sent --------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(c)}: &{chr(c)} [" + ", ".join([f"*{chr(c - 1)}"] * 9) + "]\n"
    for c in range(ord("b"), ord("k"))
)


@dataclass
class Hostile:
    name: str
    #: Writes the job file (or puts something at its path); the path to give the engine.
    make: Callable[[Path], Path]
    #: In the engine's error output.
    says: str


def _write(name: str, data: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return make


def _huge(tmp: Path) -> Path:
    path = tmp / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    return path


def _python_tag(tmp: Path) -> Path:
    return _write(
        "tag.yaml", f"version: 1\njobs: !!python/object/apply:os.system ['touch {tmp}/pwned']\n"
    )(tmp)


HOSTILE = [
    Hostile("python tag", _python_tag, "is not allowed: a job file holds plain YAML data only"),
    Hostile("python name", _write("n.yaml", "jobs: !!python/name:os.system\n"), "not allowed"),
    Hostile("billion laughs", _write("laughs.yaml", LAUGHS), "aliases expand the file too much"),
    Hostile("huge", _huge, "larger than 67108864 bytes; refused"),
    Hostile("endless", lambda _: Path("/dev/zero"), "larger than 67108864 bytes; refused"),
    Hostile("deep", _write("deep.yaml", "jobs: " + "[" * 100_000), "exceeded maximum nesting"),
    Hostile("binary", _write("bin.yaml", bytes(range(256)) * 4), "invalid YAML"),
    Hostile("not utf-8", _write("latin.yaml", b"version: 1\nid: caf\xe9\n"), "invalid YAML"),
    Hostile("empty", _write("empty.yaml", ""), "the job file is empty"),
    Hostile("a list", _write("list.yaml", "- 1\n- 2\n"), "must be a mapping"),
    Hostile("a directory", lambda tmp: tmp, "cannot read the job file: Is a directory"),
    Hostile("missing", lambda tmp: tmp / "absent.yaml", "No such file or directory"),
    Hostile(
        "secret in a symbol",
        _write(
            "misplaced.yaml",
            job_file({"alice": 1}).replace(
                "symbols: xt_usdt,btc_usdt", "symbols: ${XT_ALICE_SECRET_KEY}"
            ),
        ),
        "defaults.symbols: holds the secret key of account alice",
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_hostile_job_files_exit_2_with_a_clear_message(
    cli: CliRunner, tmp_path: Path, case: Hostile
) -> None:
    """In process, for speed; nothing listens at the base URL, and the results file, opened
    before the first request, is never created."""
    path = case.make(tmp_path)
    results = tmp_path / "r.jsonl"
    run = cli.invoke(
        main, ["run", str(path), "--base-url", "http://127.0.0.1:9", "--results", str(results)]
    )
    assert run.exit_code == 2, run.output
    assert case.says in run.stderr
    assert "nothing sent" in run.stderr
    assert run.exception is None or isinstance(run.exception, SystemExit)
    assert secret_of("alice") not in run.output
    assert not results.exists()
    assert not (tmp_path / "pwned").exists()


async def test_hostile_job_files_send_nothing_to_a_live_exchange(
    tmp_path: Path, simulator: StartSimulator
) -> None:
    """The same through a separate engine process, with an exchange listening."""
    accounts = {"alice": 1}
    cases = [c for c in HOSTILE if c.name in ("python tag", "billion laughs", "huge")]
    sim = await simulator(accounts_of(accounts), SimConfig())

    async def attempt(case: Hostile, number: int) -> tuple[Hostile, Path, Finished]:
        where = tmp_path / f"case{number}"
        where.mkdir()
        run = await run_engine(
            "run",
            str(case.make(where)),
            "--base-url",
            sim.base_url or "",
            "--results",
            str(where / "r.jsonl"),
            env=engine_env(accounts),
            workdir=where,
            timeout=30,
        )
        return case, where, run

    outcomes = await asyncio.gather(*(attempt(c, n) for n, c in enumerate(cases)))
    for case, where, run in outcomes:
        assert run.code == 2, (case.name, run.output)
        assert case.says in run.err and "nothing sent" in run.err, (case.name, run.err)
        assert "Traceback" not in run.output, case.name
        assert not (where / "r.jsonl").exists(), case.name
        assert not (where / "pwned").exists(), case.name
    assert sim.arrivals == []


# --- Answers that are not what XT sends -----------------------------------------------------


def _gzip_bomb(megabytes: int) -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([*(squeeze.compress(zeros) for _ in range(megabytes)), squeeze.flush()])


SUCCESS = b'{"rc":0,"mc":"SUCCESS","ma":[],"result":true}'
NOT_XT = "with a body that is not XT's JSON"


@dataclass
class Answer:
    name: str
    handler: Handler
    status: str
    attempts: int
    ambiguous: bool
    #: The start of the recorded error (None: no error).
    error: str | None


ANSWERS = [
    Answer(
        "huge",
        canned(200, b'{"rc":0,"mc":"SUCCESS","pad":"' + b"x" * (3 << 20) + b'"}'),
        "failed",
        2,
        True,
        f"gave up after 2 attempts: HTTP 200 {NOT_XT}",
    ),
    Answer(
        "truncated",
        canned(200, SUCCESS[:18]),
        "failed",
        2,
        True,
        f"gave up after 2 attempts: HTTP 200 {NOT_XT}",
    ),
    Answer(
        "html",
        canned(200, b"<html>bad gateway</html>", **{"Content-Type": "text/html"}),
        "failed",
        2,
        True,
        f"gave up after 2 attempts: HTTP 200 {NOT_XT}: '<html>",
    ),
    Answer("a list", canned(200, b"[" + SUCCESS + b"]"), "failed", 2, True, "gave up after 2"),
    Answer("rc as text", canned(200, b'{"rc":"0","mc":"SUCCESS"}'), "failed", 2, True, "gave up"),
    Answer("rc as bool", canned(200, b'{"rc":false,"mc":"SUCCESS"}'), "failed", 2, True, "gave up"),
    Answer("no mc", canned(200, b'{"rc":0}'), "failed", 2, True, "gave up after 2"),
    Answer("null", canned(200, b"null"), "failed", 2, True, "gave up after 2"),
    Answer("nested deep", canned(200, b"[" * 200_000), "failed", 2, True, "gave up after 2"),
    Answer("not utf-8", canned(200, b"\xff\xfe\x00\xd8garbage"), "failed", 2, True, "gave up"),
    Answer(
        "gzip bomb",
        canned(200, _gzip_bomb(64), **{"Content-Encoding": "gzip"}),
        "failed",
        2,
        True,
        "gave up after 2 attempts: ",
    ),
    Answer("cut short", cut_short, "failed", 2, True, "gave up after 2 attempts: no answer"),
    Answer(
        "403 page", canned(403, b"<html>forbidden</html>"), "failed", 1, False, "HTTP 403: '<html>"
    ),
    Answer(
        "4xx envelope",
        canned(400, b'{"rc":1,"mc":"COPY_TRADE_SPOT_006","ma":[],"result":null}'),
        "failed",
        1,
        False,
        "HTTP 400 rc=1 mc=COPY_TRADE_SPOT_006",
    ),
    Answer("202 envelope", canned(202, SUCCESS), "ok", 1, False, None),
    Answer(
        "204 empty",
        canned(204, b""),
        "failed",
        2,
        True,
        f"gave up after 2 attempts: HTTP 204 {NOT_XT}",
    ),
]


async def _serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post(V4.path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _follow_once(base_url: str, tmp_path: Path, **settings: Any) -> JobResult:
    """One job through WorkerPool, Collector and ResultLog; its result as the file has it."""
    campaign = make_campaign({"alice": 1}, tmp_path, max_attempts=2, **settings)
    results = tmp_path / "r.jsonl"
    log = ResultLog(results)
    log.open()
    collector = Collector(log)
    try:
        async with XtClient(base_url, V4, timeout=campaign.settings.timeout) as client:
            runner = WorkerPool(campaign, client, collector, rng=random.Random(3))
            await asyncio.wait_for(runner.process(campaign.jobs), 30)
    finally:
        log.close()
    lines = results.read_text().splitlines()
    # Its intent, then its outcome: each whole, and small however big the body.
    assert len(lines) == 2 and all(len(line) < 2000 for line in lines)
    assert json.loads(lines[0])["status"] == "sending"
    line = json.loads(lines[1])
    line["leader_field"] = "leaderOrderId"
    line["leader_id"] = line.pop("leaderOrderId")
    return JobResult(**line)


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda a: a.name)
async def test_answers_that_are_not_xts_are_recorded_as_the_right_error(
    tmp_path: Path, answer: Answer
) -> None:
    runner, url = await _serve(answer.handler)
    try:
        result = await _follow_once(url, tmp_path, timeout=2)
    finally:
        await runner.cleanup()
    assert (result.status, result.attempts, result.ambiguous) == (
        answer.status,
        answer.attempts,
        answer.ambiguous,
    ), result
    if answer.error is None:
        assert result.error is None
    else:
        assert result.error is not None and result.error.startswith(answer.error), result.error


async def test_a_server_that_does_not_speak_http_is_an_ambiguous_failure(tmp_path: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await _follow_once(f"http://127.0.0.1:{port}", tmp_path, timeout=2)
    assert (result.status, result.attempts, result.ambiguous) == ("failed", 2, True)
    assert result.error is not None and "no answer after the request left" in result.error


async def test_a_redirect_is_not_followed_with_the_credentials(tmp_path: Path) -> None:
    """A 307 from the exchange (or from something posing as it) would make aiohttp re-send
    the signed request, key and signature included, wherever it points: past
    check_transport, to any host, over plain http."""
    elsewhere: list[dict[str, str]] = []

    async def steal(request: web.Request) -> web.StreamResponse:
        elsewhere.append(dict(request.headers))
        return web.Response(body=SUCCESS, content_type="application/json")

    thief, thief_url = await _serve(steal)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(thief_url + V4.path)

    runner, url = await _serve(redirect)
    try:
        result = await _follow_once(url, tmp_path, timeout=2)
    finally:
        await runner.cleanup()
        await thief.cleanup()
    assert elsewhere == [], "the signed request was re-sent to the redirect's target"
    assert (result.status, result.http_status, result.attempts) == ("failed", 307, 1)


async def test_an_answer_dribbled_a_byte_at_a_time_is_bounded(tmp_path: Path) -> None:
    runner, url = await _serve(dribble)
    try:
        result = await asyncio.wait_for(_follow_once(url, tmp_path, timeout=0.3), 3)
    finally:
        await runner.cleanup()
    assert (result.status, result.ambiguous) == ("failed", True)


# --- A results file that was tampered with --------------------------------------------------


def test_a_tampered_results_file_is_read_line_by_line_never_a_crash(tmp_path: Path) -> None:
    good = json.dumps({"job": "kept", "status": "ok"})
    bad = [
        b"[" * 100_000,  # nested past the stack
        bytes(range(256)),  # binary, with a NUL and a newline in it
        b"\xff\xfe caf\xe9",  # not UTF-8
        b'{"job": 5, "status": "ok"}',
        b'["kept", "ok"]',
        b'"just text"',
        b"9" * 5000,  # a number too long to convert
        b'{"job": "torn", "sta',
    ]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join([good.encode(), *bad]))
    log = ResultLog(path)
    past = log.open()
    log.close()
    assert past.ok_jobs() == {"kept"}
    assert len(past.warnings) >= len(bad)
    assert all("skipped a line that is not a whole result" in w for w in past.warnings)


async def test_a_results_file_full_of_garbage_warns_in_a_few_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], simulator: StartSimulator
) -> None:
    campaign = make_campaign({"alice": 2}, tmp_path)
    results = tmp_path / "r.jsonl"
    results.write_text("not a result\n" * 50)
    sim = await simulator(accounts_of(campaign), SimConfig())
    campaign = dataclasses.replace(campaign, base_url=sim.base_url or "")
    stats = await launch_campaign(campaign, LaunchOptions(results=results))
    assert stats.ok == 2
    err = capsys.readouterr().err
    assert err.count("skipped a line that is not a whole result") == MAX_LINE_WARNINGS
    assert f"{results}: {50 - MAX_LINE_WARNINGS} more lines skipped" in err
