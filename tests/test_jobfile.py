"""The job file contract: what loads, what each rule rejects, and how it says so."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from engine import jobfile
from engine.campaign import Schedule
from engine.jobfile import JobFileError, load

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-value-never-printed"
ENV = {"XT_ALICE_API_KEY": "key-a", "XT_ALICE_SECRET_KEY": SECRET}
LEADER = 7302994413592166401

# Line numbers matter: the expected messages below name them.
BASE = """\
version: 1
accounts:
  alice:
    api_key: ${XT_ALICE_API_KEY}
    secret_key: ${XT_ALICE_SECRET_KEY}
defaults:
  followType: RATE
  followLossOperate: LEADER_CLOSE
  autoFollowSymbol: true
  symbols: btc_usdt
jobs:
  - id: f-001
    account: alice
    leaderOrderId: 7302994413592166401
    followVal: 0.50
"""
JOB = "job f-001 (jobs[0])"


def write(tmp_path: Path, text: str, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(JobFileError) as caught:
        load(path, env=kwargs.pop("env", ENV), **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == "\n".join(caught.value.problems)
    return [p.replace(str(path), "F", 1) for p in caught.value.problems]


ROUND_TRIP = BASE + (
    "    symbols: [xt_usdt, btc_usdt]\n"
    "    not_before: 2026-12-01T09:00:00Z\n"
    "  - account: alice\n"
    "    leaderOrderId: '9223372036854775807'\n"
    "    followType: FUND\n"
    "    followVal: '100.10'\n"
    "    triggerProfitRate: 1000.5\n"
    "    symbols: ' xt_usdt , eth_usdt'\n"
    "base_url: https://example.test/\n"
)


def test_valid_file_round_trip(tmp_path: Path) -> None:
    campaign = load(write(tmp_path, ROUND_TRIP), env=ENV)
    first, second = campaign.jobs
    assert first.leader_id == LEADER and first.params["leaderOrderId"] == LEADER
    assert str(first.params["followVal"]) == "0.50"
    expected = {
        "leaderOrderId": LEADER,
        "followType": "RATE",
        "followVal": Decimal("0.50"),
        "followLossOperate": "LEADER_CLOSE",
        "autoFollowSymbol": True,
        "symbols": "xt_usdt,btc_usdt",
    }
    assert list(first.params.items()) == list(expected.items())  # values and wire order
    assert (first.id, first.account, first.line) == ("f-001", "alice", 12)
    assert first.not_before == datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    assert second.id == "alice:9223372036854775807"
    assert second.params["followType"] == "FUND"  # the job's own value wins
    assert str(second.params["followVal"]) == "100.10"
    assert str(second.params["triggerProfitRate"]) == "1000.5"
    assert second.params["symbols"] == "xt_usdt,eth_usdt"
    assert list(second.params)[-3:] == ["triggerProfitRate", "autoFollowSymbol", "symbols"]
    assert campaign.base_url == "https://example.test"
    assert campaign.accounts["alice"].secret_key == SECRET
    settings = campaign.settings
    assert (settings.api.name, settings.rate_limit, settings.concurrency) == ("v4", 10, 2048)
    assert (settings.max_attempts, settings.timeout, settings.recv_window_ms) == (5, 10, 5000)
    assert campaign.schedule is None and campaign.warnings == ()


def test_a_valid_file_is_validated_job_by_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validating the whole file at once holds every job's model alive together (74 MB at
    100,000 jobs); a valid file never needs it, and builds the same campaign without it."""
    path = write(tmp_path, ROUND_TRIP)
    with monkeypatch.context() as patched:
        patched.setattr(jobfile, "_valid_campaign", lambda *args: None)
        whole = load(path, env=ENV)

    class WholeFile:
        @staticmethod
        def model_validate(doc: object) -> None:
            raise AssertionError("a valid file was validated as a whole")

    monkeypatch.setattr(jobfile, "JobFileModel", WholeFile)
    assert load(path, env=ENV) == whole


def test_settings_and_schedule(tmp_path: Path) -> None:
    text = BASE + (
        "settings:\n  rate_limit: 2.5\n  concurrency: 8\n  max_attempts: 3\n"
        "  timeout: 0.5\n  recv_window: 3000\n"
        "schedule:\n  cron: '0 9 * * mon-fri'\n  timezone: Europe/Paris\n"
    )
    campaign = load(write(tmp_path, text), env=ENV)
    settings = campaign.settings
    assert (settings.rate_limit, settings.concurrency, settings.max_attempts) == (2.5, 8, 3)
    assert (settings.timeout, settings.recv_window_ms) == (0.5, 3000)
    assert campaign.base_url == "https://sapi.xt.com"
    assert campaign.schedule == Schedule(cron="0 9 * * mon-fri", timezone="Europe/Paris")
    at = load(write(tmp_path, BASE + "schedule:\n  at: 2026-12-01T09:00:00+02:00\n"), env=ENV)
    assert at.schedule is not None and at.schedule.at is not None
    assert at.schedule.at.utcoffset() is not None and at.schedule.timezone == "UTC"


def test_anchors_and_aliases(tmp_path: Path) -> None:
    text = BASE.replace("  symbols: btc_usdt", "  symbols: &pairs [xt_usdt, btc_usdt]")
    job = load(write(tmp_path, text + "    symbols: *pairs\n"), env=ENV).jobs[0]
    assert job.params["symbols"] == "xt_usdt,btc_usdt"


WHOLE = "must be a whole number from 1 to 9223372036854775807, written as digits"
NOT_BOOL = "must be true or false (yes, no, on and off are not booleans here)"
POSITIVE = "must be a number greater than 0"
WHEN = "a date and time with a UTC offset, e.g. 2026-12-01T09:00:00Z"
NOT_MAPPING = "the job file must be a mapping of version, accounts and jobs"
TEXT = "must be text (quote values that look like numbers)"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("followType", "rate", "must be 'FUND' or 'RATE'"),
        ("followLossOperate", "SELL", "must be 'MARKET_SELL', 'LEADER_CLOSE' or 'MANUAL_PROCESS'"),
        ("followLoss", "-1", POSITIVE),
        ("triggerStopRate", "0.0", POSITIVE),
        ("triggerProfitRate", ".nan", POSITIVE),
        ("triggerProfitRate", "true", "must be a number"),
        ("triggerProfitRate", "'abc'", "must be a number"),
        *[("autoFollowSymbol", v, NOT_BOOL) for v in ("yes", "'yes'", "no", "on", "Off", "1")],
        (
            "symbols",
            "[BTC_USDT, btcusdt]",
            "'BTC_USDT', 'btcusdt': not a lower-case base_quote pair such as btc_usdt",
        ),
        ("symbols", "[]", "must name at least one symbol"),
        ("symbols", "''", "must name at least one symbol"),
        ("symbols", "[btc_usdt, 5]", "must be a list of symbols or a comma-separated string"),
        ("not_before", "2026-12-01T09:00:00", f"must be {WHEN}"),
        ("followtype", "RATE", "unknown key; did you mean followType?"),
        ("followVal", "2", "duplicate key (first at line 15)"),
        ("leaderAccountId", "5", "not taken by the v4 API; write leaderOrderId"),
    ],
)
def test_job_field_rules(tmp_path: Path, field: str, value: str, message: str) -> None:
    text = BASE + f"    {field}: {value}\n"
    assert problems(tmp_path, text) == [f"F:16: {JOB}: {field}: {message}"]


@pytest.mark.parametrize("value", [f"{LEADER}.0", "true", "-5", "0", "'12ab'", str(2**63)])
def test_leader_id_rules(tmp_path: Path, value: str) -> None:
    text = BASE.replace(str(LEADER), value)
    assert problems(tmp_path, text) == [f"F:14: {JOB}: leaderOrderId: {WHOLE}"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rate_limit: 0", POSITIVE),
        ("rate_limit: 1.0e-999", "is too small or too large"),
        ("concurrency: 0", "must be between 1 and 1000000000"),
        ("max_attempts: 1.5", "must be a whole number"),
        ("timeout: true", "must be a number"),
        ("recv_window: 60001", "must be between 1 and 60000"),
        ("api: v5", "must be 'v4' or 'v1'"),
        ("rate: 5", "unknown key"),
    ],
)
def test_settings_rules(tmp_path: Path, setting: str, message: str) -> None:
    key = setting.split(":")[0]
    found = problems(tmp_path, BASE + f"settings:\n  {setting}\n")
    assert found == [f"F:17: settings.{key}: {message}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE.replace("version: 1", "version: 2"), "F:1: version: must be 1"),
        (BASE.replace("version: 1\n", ""), "F:1: version: required"),
        (BASE.replace("0.50", "0"), f"F:15: {JOB}: followVal: {POSITIVE}"),
        (
            BASE.replace("  followType: RATE\n", ""),
            f"F:11: {JOB}: followType: required: set it in the job or in defaults",
        ),
        (
            BASE.replace(f"    leaderOrderId: {LEADER}\n", ""),
            f"F:12: {JOB}: leaderOrderId: required",
        ),
        (BASE + "job: []\n", "F:16: job: unknown key; did you mean jobs?"),
        (
            BASE.replace("  alice:\n", "  alice:\n    key: x\n"),
            "F:4: accounts.alice.key: unknown key; did you mean api_key?",
        ),
        (BASE.replace("defaults:\n", "defaults:\n  id: x\n"), "F:7: defaults.id: unknown key"),
        (
            BASE + "schedule:\n  cron: '* * * * *'\n  when: now\n",
            "F:18: schedule.when: unknown key",
        ),
        (
            BASE.replace("account: alice", "account: bob"),
            f"F:13: {JOB}: account: no account named bob in accounts",
        ),
        (BASE[: BASE.index("  - id")] + "  []\n", "F:11: jobs: must not be empty"),
        (BASE[: BASE.index("jobs:")] + "jobs: {}\n", "F:11: jobs: must be a list"),
        (BASE + "  - 5\n", "F:16: job ? (jobs[1]): must be a mapping"),
        (
            BASE.replace(" ${XT_ALICE_API_KEY}", " ''"),
            "F:4: accounts.alice.api_key: must not be empty",
        ),
        (BASE.replace(" ${XT_ALICE_API_KEY}", " 0123"), "F:4: accounts.alice.api_key: " + TEXT),
        (
            BASE.replace("    secret_key: ${XT_ALICE_SECRET_KEY}\n", ""),
            "F:3: accounts.alice.secret_key: required",
        ),
        (
            BASE + "base_url: ftp://x\n",
            "F:16: base_url: must be an http(s) URL such as https://sapi.xt.com",
        ),
        (BASE + "schedule:\n  at: 2026-12-01 09:00:00\n", f"F:17: schedule.at: must be {WHEN}"),
        (
            BASE + "schedule:\n  at: 2026-12-01T09:00:00Z\n  cron: '* * * * *'\n",
            "F:16: schedule: give exactly one of at or cron",
        ),
        (
            BASE + "schedule:\n  cron: '* * * * * *'\n",
            "F:17: schedule.cron: must be a 5-field cron expression such as '0 9 * * mon-fri'",
        ),
        (
            BASE + "schedule:\n  cron: '* * * * *'\n  timezone: Mars/Base\n",
            "F:18: schedule.timezone: must be an IANA time zone name such as Europe/Paris",
        ),
        ("- 1\n", f"F:1: {NOT_MAPPING}"),
        ("just text\n", f"F:1: {NOT_MAPPING}"),
        ("# nothing\n", "F:1: the job file is empty"),
        ("a: 1\n---\nb: 2\n", "F:2: a job file holds one YAML document; found a second"),
        ("a: *b\n", "F:1: alias *b has no anchor &b before it"),
        (
            "a: [1\n",
            "F:2:1: invalid YAML: did not find expected ',' or ']' "
            "(while parsing a flow sequence at line 1)",
        ),
    ],
)
def test_document_rules(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    text = BASE + "  - id: f-001\n    account: alice\n    leaderOrderId: 1\n    followVal: 1\n"
    text += "  - account: alice\n    leaderOrderId: 5\n    followVal: 1\n" * 2
    assert problems(tmp_path, text) == [
        "F:16: job f-001 (jobs[1]): id: duplicate job id f-001: jobs[0] at line 12 has it too",
        "F:23: job alice:5 (jobs[3]): duplicate job id alice:5: jobs[2] at line 20 has it too",
    ]


def test_every_problem_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = BASE.replace("version: 1", "version: 3").replace("0.50", "-1") + (
        "    autoFollowSymbol: yes\n  - account: nobody\n    leaderOrderId: 12\n"
        "    followVal: 1\n    colour: red\nsettings:\n  timeout: 0\n"
    )
    assert problems(tmp_path, text) == [
        "F:1: version: must be 1",
        f"F:15: {JOB}: followVal: {POSITIVE}",
        f"F:16: {JOB}: autoFollowSymbol: {NOT_BOOL}",
        "F:17: job nobody:12 (jobs[1]): account: no account named nobody in accounts",
        "F:20: job nobody:12 (jobs[1]): colour: unknown key",
        f"F:22: settings.timeout: {POSITIVE}",
    ]


NO_ID = BASE.replace("  - id: f-001\n    account", "  - account")


def test_environment_substitution(tmp_path: Path) -> None:
    text = NO_ID.replace("${XT_ALICE_API_KEY}", "${XT_ALICE_API_KEY:-demo-key}")
    text = text.replace("0.50", "${FOLLOW_VAL:-0.25}") + "    id: ${JOB_ID}\n"
    campaign = load(write(tmp_path, text), env={**ENV, "JOB_ID": "$${X}: [y"})
    job = campaign.jobs[0]
    assert campaign.accounts["alice"].api_key == "key-a"  # the environment wins over the default
    assert str(job.params["followVal"]) == "0.25"
    assert job.id == "$${X}: [y"  # a value from the environment is never parsed or substituted
    demo = load(write(tmp_path, text), env={"XT_ALICE_SECRET_KEY": SECRET, "JOB_ID": "j"})
    assert demo.accounts["alice"].api_key == "demo-key"
    escaped = load(write(tmp_path, text.replace("${JOB_ID}", "a$${b}")), env=ENV)
    assert escaped.jobs[0].id == "a${b}"


def test_missing_variable_is_named_and_secrets_never_printed(tmp_path: Path) -> None:
    text = NO_ID.replace("${XT_ALICE_API_KEY}", "${XT_MISSING_KEY}") + "    id: ${BAD\n"
    found = problems(tmp_path, text.replace("0.50", "${XT_ALICE_SECRET_KEY}"))
    assert found[0] == "F:4: accounts.alice.api_key: environment variable XT_MISSING_KEY is not set"
    assert found[1] == (
        "F:14: job ${BAD (jobs[0]): followVal: "
        "holds the secret key of account alice; a secret belongs in secret_key only"
    )
    assert found[2] == (
        "F:15: job ${BAD (jobs[0]): id: "
        "'${' must start ${NAME} or ${NAME:-default} (write $${ for a literal ${)"
    )
    literal = BASE.replace("${XT_ALICE_SECRET_KEY}", SECRET).replace("0.50", "0")
    assert all(SECRET not in p for p in found + problems(tmp_path, literal))


def test_secret_warnings(tmp_path: Path) -> None:
    literal = load(write(tmp_path, BASE.replace("${XT_ALICE_SECRET_KEY}", SECRET)), env=ENV)
    assert literal.warnings == (
        f"{tmp_path / 'jobs.yaml'}:5: account alice: secret_key is written literally in the job "
        "file; move it to an environment variable (${XT_ALICE_SECRET_KEY})",
    )
    assert SECRET not in literal.warnings[0]
    text = BASE.replace("${XT_ALICE_SECRET_KEY}", "${XT_ALICE_SECRET_KEY:-demo}")
    defaulted = load(write(tmp_path, text), env={"XT_ALICE_API_KEY": "k"})
    assert defaulted.warnings[0].endswith(
        "account alice: secret_key is the default written in the job file "
        "because XT_ALICE_SECRET_KEY is not set"
    )
    assert load(write(tmp_path, text), env=ENV).warnings == ()


def test_v1_profile(tmp_path: Path) -> None:
    v1 = BASE.replace("leaderOrderId", "leaderAccountId")
    campaign = load(write(tmp_path, v1 + "settings:\n  api: v1\n"), env=ENV)
    assert campaign.settings.api.name == "v1" and campaign.settings.rate_limit == 2
    assert next(iter(campaign.jobs[0].params)) == "leaderAccountId"
    assert campaign.jobs[0].params["leaderAccountId"] == LEADER
    assert load(write(tmp_path, v1), env=ENV, api="v1").settings.api.name == "v1"
    assert problems(tmp_path, BASE, api="v1") == [
        f"F:14: {JOB}: leaderOrderId: not taken by the v1 API; write leaderAccountId"
    ]
    assert problems(tmp_path, v1) == [
        f"F:14: {JOB}: leaderAccountId: not taken by the v4 API; write leaderOrderId"
    ]
    with pytest.raises(ValueError):
        load(write(tmp_path, BASE), env=ENV, api="v9")


JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def test_json_schema() -> None:
    schema = jobfile.json_schema()
    json.dumps(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert {"version", "accounts", "jobs", "settings", "defaults", "schedule"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"version", "accounts", "jobs"}
    defs = schema["$defs"]
    assert "rate_limit" in defs["SettingsModel"]["properties"]
    job = defs["JobModel"]["properties"]
    assert {"leaderOrderId", "followVal", "symbols", "not_before"} <= set(job)
    assert all(field.get("description") for field in job.values())

    def walk(node: object) -> None:  # every $ref resolves and every type is a JSON type
        if isinstance(node, dict):
            ref = node.get("$ref")
            assert ref is None or ref.removeprefix("#/$defs/") in defs
            assert node.get("type", "null") in JSON_TYPES
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)


def test_python_tags_are_refused(tmp_path: Path) -> None:
    for tag in ("!!python/object/apply:os.system ['true']", "!!python/name:os.system"):
        assert problems(tmp_path, f"version: 1\njobs: {tag}\n") == [
            f"F:2: tag {tag.split()[0]} is not allowed: a job file holds plain YAML data only"
        ]


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in "bcdefghij":
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{chr(ord(level) - 1)}"] * 9) + "]")
    (found,) = problems(tmp_path, "\n".join(lines) + "\n")
    assert found.startswith("F:6: aliases expand the file too much (")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "a: &a [1, *a]\n") == ["F:1: alias *a is inside what it refers to"]


def test_huge_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(jobfile.MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(JobFileError, match="larger than 67108864 bytes; refused"):
        load(path, env=ENV)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read the job file: No such file"):
        load(tmp_path / "absent.yaml", env=ENV)
    with pytest.raises(JobFileError, match="cannot read the job file: Is a directory"):
        load(tmp_path, env=ENV)


def test_sample_job_file_validates_without_environment() -> None:
    campaign = load(ROOT / "jobs.yaml", env={})
    assert campaign.settings.api.name == "v4" and campaign.base_url == "https://sapi.xt.com"
    assert len(campaign.accounts) == 3 and len(campaign.jobs) == 12
    assert campaign.accounts["alice"].api_key == "demo-alice-key"
