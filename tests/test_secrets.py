"""Secrets hygiene: no secret key or signature in any output or file, TLS verification
always on, credentials never sent over plain http:// beyond loopback unless asked."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import signal
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from engine.cli import main
from engine.client import NotSentError, XtClient
from engine.profiles import V4
from engine.signing import sign, signature_payload
from engine.simulator import SimConfig, Simulator
from engine.urls import InsecureTransportError, check_transport
from tests.support import (
    BASE_LEADER,
    Engines,
    Finished,
    WriteJobs,
    accounts_of,
    engine_env,
    job_file,
    key_of,
    secret_of,
)

SIGNATURE_HEADER = "xt-validate-signature"
ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = {"alice": 4, "bob": 2}
SECRETS = [secret_of(a) for a in ACCOUNTS]


def spy_on_signatures(sim: Simulator) -> list[str]:
    """Every signature ``sim`` receives, whatever it answers (call before it starts)."""
    seen: list[str] = []

    @web.middleware
    async def spy(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        for name in (SIGNATURE_HEADER, SIGNATURE_HEADER.removeprefix("xt-")):
            if value := request.headers.get(name):
                seen.append(value)
        return await handler(request)

    sim.app.middlewares.append(spy)
    return seen


def dry_run_signatures(output: str) -> list[str]:
    """The signatures ``--dry-run`` computed and redacted, computed again from what it shows."""
    found = []
    for block in output.split("# job ")[1:]:
        lines = block.splitlines()
        headers = dict(line.split(": ", 1) for line in lines[2:] if ": " in line)
        body = next(line for line in lines if line.startswith("{"))
        validate = {k: v for k, v in headers.items() if k.startswith("xt-validate-")}
        assert validate.pop(SIGNATURE_HEADER) == "<redacted>"
        account = next(a for a in ACCOUNTS if key_of(a) == validate["xt-validate-appkey"])
        payload = signature_payload(validate, "POST", V4.path, body)
        found.append(sign(secret_of(account), payload))
    assert found
    return found


def bad_file() -> str:
    """Invalid in ways that name the accounts holding the secrets, and that put a secret
    where a symbol, an id and an amount go."""
    text = job_file(ACCOUNTS)
    first = f"  - {{account: alice, leaderOrderId: {BASE_LEADER}, followVal: 0.5}}"
    wrong = (
        "  - account: alice\n    leaderOrderId: -1\n    followVal: ${XT_ALICE_SECRET_KEY}\n"
        "    symbols: ${XT_ALICE_SECRET_KEY}\n    id: ${XT_BOB_SECRET_KEY}"
    )
    assert first in text
    text = text.replace(first, wrong)
    return text.replace(
        "    api_key: key-alice\n", "    api_key: key-alice\n    password: ${XT_ALICE_SECRET_KEY}\n"
    )


async def test_no_command_prints_a_secret_or_a_signature(tmp_path: Path, engines: Engines) -> None:
    good, bad, literal = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "literal.yaml"
    good.write_text(job_file(ACCOUNTS))
    bad.write_text(bad_file())
    literal.write_text(job_file(ACCOUNTS).replace("${XT_ALICE_SECRET_KEY}", secret_of("alice")))
    env = engine_env(ACCOUNTS)
    # bob's key is refused (AUTH_103); alice's jobs meet a fault each, one of them for good.
    table = accounts_of(ACCOUNTS) | {key_of("bob"): "not-what-bob-signs-with"}
    sim = Simulator(table, SimConfig(latency=0.01))
    signatures = spy_on_signatures(sim)
    runs: dict[str, Finished] = {}

    async def run(name: str, *args: str) -> None:
        runs[name] = await engines.run(*args, env=env, name=name)

    def cli(name: str, *args: str) -> None:
        """In process, for the commands that send nothing: fast, and a request would fail
        them (``asyncio.run`` inside the test's running loop)."""
        result = CliRunner(env=env).invoke(main, list(args))
        code = result.exit_code if isinstance(result.exit_code, int) else -1
        crash = "" if result.exception is None else repr(result.exception)
        runs[name] = Finished(code, result.stdout, result.stderr + crash)

    cli("validate", "validate", str(good))
    cli("validate-bad", "validate", str(bad))
    cli("validate-literal", "validate", str(literal))
    cli("schema", "schema")
    cli("dry-run", "run", str(good), "--dry-run")
    cli("dry-run-literal", "run", str(literal), "--dry-run")
    cli("plain-http", "run", str(good), "--base-url", "http://192.0.2.1:9")
    cli("help", "--help")
    for command in main.commands:
        cli(f"{command}-help", command, "--help")
    async with sim:
        for n, fault in enumerate(["drop_after", "non_json", "http500", "COPY_TRADE_SPOT_006"]):
            sim.script(BASE_LEADER + n, [fault])
        url = sim.base_url or ""
        # Two runs of one job file never send together: the simulated one gets its own copy.
        twin = tmp_path / "twin.yaml"
        twin.write_text(good.read_text())
        await asyncio.gather(
            run("simulate-run", "run", str(twin), "--simulate", "--results", str(tmp_path / "s")),
            run("faults", "run", str(good), "--base-url", url, "--results", str(tmp_path / "f")),
            run("run-bad", "run", str(bad), "--base-url", url, "--results", str(tmp_path / "b")),
        )
        runs["interrupted"] = await _interrupted(engines, good, env)
    runs["served"] = await _against_the_simulate_command(engines, good, env)

    expected = {
        "validate": 0,
        "validate-bad": 2,
        "validate-literal": 0,
        "schema": 0,
        "dry-run": 0,
        "dry-run-literal": 0,
        "simulate-run": 0,
        "faults": 1,
        "run-bad": 2,
        "plain-http": 2,
        "help": 0,
        **{f"{command}-help": 0 for command in main.commands},
        "interrupted": 130,
        # Random faults: a job may fail for good, which is exit 1.
        "served": runs["served"].code if runs["served"].code in (0, 1) else "0 or 1",
    }
    assert {name: r.code for name, r in runs.items()} == expected, {
        name: r.err[-2000:] for name, r in runs.items() if r.code != expected[name]
    }
    assert "secret_key is written literally" in runs["validate-literal"].err
    assert "refusing to send API keys and signatures over plain http://" in runs["plain-http"].err
    assert "<secret>" in runs["validate-bad"].err  # the misplaced secret, blotted out
    assert "AUTH_103" in (tmp_path / "f").read_text()

    leaked = SECRETS + signatures + dry_run_signatures(runs["dry-run"].out)
    assert len(signatures) >= 8
    everything = {name: r.output for name, r in runs.items()}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".yaml":  # the job files hold a literal secret
            everything[str(path)] = path.read_text(errors="replace")
    for where, text in everything.items():
        for secret in leaked:
            assert secret not in text, f"{where} holds a secret or a signature"
        assert "Traceback" not in text, where


async def _interrupted(engines: Engines, jobs: Path, env: dict[str, str]) -> Finished:
    """SIGTERM mid-run: the stop notice and the record of requests cut off."""
    async with Simulator(accounts_of(ACCOUNTS), SimConfig(latency=0.5)) as slow:
        url = slow.base_url or ""
        results = str(engines.workdir / "i")
        running = await engines.start(
            "run", str(jobs), "--base-url", url, "--results", results, env=env, name="interrupted"
        )
        await slow.wait_for_arrivals(1)
        running.process.send_signal(signal.SIGTERM)
        return await running.finish()


async def _against_the_simulate_command(
    engines: Engines, jobs: Path, env: dict[str, str]
) -> Finished:
    """``follow-engine simulate --jobs`` checks signatures with the secrets it read and
    injects faults at random; an engine runs against it. Both outputs, together."""
    server = await engines.start(
        *("simulate", "--port", "0", "--jobs", str(jobs), "--fault-rate", "0.2", "--seed", "5"),
        env=env,
        name="simulate",
    )
    try:
        url = await _listening_url(server.err)
        served = await engines.run(
            "run",
            str(jobs),
            "--base-url",
            url,
            "--results",
            str(engines.workdir / "served"),
            env=env,
            name="served-engine",
        )
    finally:
        server.process.send_signal(signal.SIGINT)
        simulator = await server.finish(timeout=10)
    assert simulator.code == 0, simulator.err
    return Finished(served.code, served.out + simulator.out, served.err + simulator.err)


async def _listening_url(err: Path, timeout: float = 20) -> str:
    """The URL in the simulator's readiness line. It writes to a file, which has no event
    to wait on: read it again every 20 ms."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = re.search(r"listening on (http://\S+)", err.read_text())
        if found:
            return found[1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no readiness line: {err.read_text()!r}")


def test_a_literal_secret_is_accepted_with_a_warning(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_file(ACCOUNTS).replace("${XT_ALICE_SECRET_KEY}", secret_of("alice")))
    env = engine_env(ACCOUNTS)
    del env["XT_ALICE_SECRET_KEY"]
    result = CliRunner(env=env).invoke(main, ["validate", str(jobs)])
    assert result.exit_code == 0, result.output
    assert "valid: 6 jobs" in result.stdout
    assert result.stderr == (
        f"warning: {jobs}:5: account alice: secret_key is written literally in the job file; "
        "move it to an environment variable (${XT_ALICE_SECRET_KEY})\n"
    )
    assert secret_of("alice") not in result.output


# --- Transport ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://sapi.xt.com",
        "https://192.0.2.1:8443/x",
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://localhost:1",
        "http://LOCALHOST:1",
        "http://[::1]:80",
    ],
)
def test_transport_allowed(url: str) -> None:
    assert check_transport(url, insecure=False) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.1",
        "http://sapi.xt.com",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://127.0.0.1@192.0.2.1",
        "http://127.0.0.1 @192.0.2.1",
        "http://127.0.0.1%2f@192.0.2.1",
        "HTTP://192.0.2.1",
    ],
)
def test_plain_http_beyond_loopback_is_refused_unless_insecure(url: str) -> None:
    with pytest.raises(InsecureTransportError, match="over plain http:// to a host that is not"):
        check_transport(url, insecure=False)
    warning = check_transport(url, insecure=True)
    assert warning is not None and warning.startswith("warning: sending credentials over plain")


@pytest.mark.parametrize(
    "url",
    ["ftp://192.0.2.1", "sapi.xt.com", "http:///path", "", "http://[127.0.0.1]", "http://a\\@b"],
)
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    for insecure in (False, True):
        with pytest.raises(InsecureTransportError, match="not an http"):
            check_transport(url, insecure=insecure)


@pytest.mark.parametrize(
    ("args", "file_url"),
    [
        (["--base-url", "http://192.0.2.1:9"], None),
        ([], "http://192.0.2.1:9"),
        (["--base-url", "http://[127.0.0.1]"], None),
    ],
)
def test_the_cli_refuses_plain_http_before_connecting(
    cli: CliRunner, write_jobs: WriteJobs, args: list[str], file_url: str | None
) -> None:
    """192.0.2.1 is TEST-NET-1: nothing answers there. A refusal comes back at once, before
    the results file is even opened; a connection attempt would hang and create it."""
    jobs = write_jobs(ACCOUNTS, extra=f"base_url: {file_url}\n" if file_url else "")
    results = jobs.parent / "r.jsonl"
    result = cli.invoke(main, ["run", str(jobs), "--results", str(results), *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert re.search("refusing to send API keys|not an http|must be an http", result.stderr)
    assert not results.exists()


# --- TLS ------------------------------------------------------------------------------------

#: Ways code switches certificate checking off.
UNVERIFIED = re.compile(
    r"ssl\s*=\s*False|verify_ssl|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    r"|verify\s*=\s*False|PYTHONHTTPSVERIFY"
)


def test_tls_verification_is_never_switched_off() -> None:
    for path in (ROOT / "engine").rglob("*.py"):
        found = UNVERIFIED.search(path.read_text())
        assert found is None, f"{path.name}: {found and found[0]}"


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that nobody trusts."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    arrived: list[str] = []

    async def follow(request: web.Request) -> web.Response:
        arrived.append(request.path)
        return web.json_response({"rc": 0, "mc": "SUCCESS", "ma": [], "result": True})

    app = web.Application()
    app.router.add_post(V4.path, follow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path)).start()
    port = runner.addresses[0][1]
    try:
        async with XtClient(f"https://127.0.0.1:{port}", V4, timeout=5) as client:
            with pytest.raises(NotSentError, match="Certificate") as caught:
                await client.follow(key_of("alice"), secret_of("alice"), {"leaderOrderId": 1})
    finally:
        await runner.cleanup()
    assert arrived == []
    assert secret_of("alice") not in str(caught.value)
