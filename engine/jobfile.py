"""Reading a job file: YAML in, a checked ``Campaign`` out, or every problem at once.

``yamlread`` turns the file into plain data that remembers its lines; pydantic
models (``models``) check it; this module maps every error back to its line and
builds the plain ``Campaign`` the engine runs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.campaign import (
    DEFAULT_BASE_URL,
    Account,
    Campaign,
    FollowJob,
    FollowValue,
    Schedule,
    Settings,
)
from engine.models import (
    FOLLOW_FIELDS,
    MANDATORY_FIELDS,
    SECTIONS,
    WHEN,
    FollowParamsModel,
    JobFileModel,
    JobModel,
    SettingsModel,
)
from engine.profiles import LEADER_FIELDS, PROFILES, ApiProfile
from engine.yamlread import (
    MAX_FILE_BYTES,
    Builder,
    JobFileError,
    LineDict,
    LineList,
    Loc,
    gc_paused,
    printable,
    read_file,
)

__all__ = ["MAX_FILE_BYTES", "JobFileError", "json_schema", "load"]


def load(path: Path, *, api: str | None = None, env: Mapping[str, str] | None = None) -> Campaign:
    """Read and check a job file. ``api`` overrides ``settings.api``; ``env`` defaults to
    ``os.environ``. Raises ``JobFileError`` naming every problem found, never a secret."""
    if api is not None and api not in PROFILES:
        raise ValueError(f"api must be one of {', '.join(PROFILES)}, not {api!r}")
    path = Path(path)
    where = str(path)
    builder = Builder(os.environ if env is None else env, where)
    with gc_paused():
        doc = builder.build(read_file(path, where))
        if doc is None:
            raise JobFileError([f"{where}:1: the job file is empty"])
        if not isinstance(doc, LineDict):
            line = getattr(doc, "line", 1)
            raise JobFileError(
                [f"{where}:{line}: the job file must be a mapping of version, accounts and jobs"]
            )
        return _campaign(path, doc, builder, api)


def json_schema() -> dict[str, Any]:
    """The job file's JSON Schema, for editors and ``follow-engine schema``."""
    return JobFileModel.model_json_schema()


def _campaign(path: Path, doc: LineDict, builder: Builder, api: str | None) -> Campaign:
    settings = doc.get("settings")
    name = api or (settings.get("api") if isinstance(settings, dict) else None) or "v4"
    profile = PROFILES.get(name) if isinstance(name, str) else None
    problems = list(builder.problems)

    def add(loc: Loc, message: str) -> None:
        problems.append((_locate(doc, loc), loc, message))

    try:
        model = JobFileModel.model_validate(doc)
    except ValidationError as exc:
        model = None
        for error in exc.errors(include_url=False, include_context=False, include_input=False):
            if error["loc"] not in builder.flagged:
                add(error["loc"], _message(error))
    _check_jobs(doc, profile, add)
    if problems or model is None or profile is None:
        leaders = _leaders(profile)
        problems.sort(key=lambda problem: problem[0])
        raise JobFileError(
            _redact([_format(builder.where, doc, leaders, *p) for p in problems], doc)
        )
    return _build(path, doc, model, profile, builder)


#: A secret shorter than this is no real key, and blotting it out would garble messages.
_MIN_SECRET = 6


def _secrets(doc: LineDict) -> list[str]:
    """Every account's secret key as read (``${VAR}`` resolved), longest first."""
    accounts = doc.get("accounts")
    found = {
        secret
        for account in (accounts.values() if isinstance(accounts, dict) else ())
        if isinstance(account, dict)
        and isinstance(secret := account.get("secret_key"), str)
        and len(secret) >= _MIN_SECRET
    }
    return sorted(found, key=len, reverse=True)


def _redact(messages: list[str], doc: LineDict) -> list[str]:
    """``messages`` with any secret key blotted out: a value quoted back to the user (a job
    id, a symbol) may be a secret put in the wrong place, ``${XT_ALICE_SECRET_KEY}``."""
    everything = "\n".join(messages)
    found = [secret for secret in _secrets(doc) if secret in everything]
    for secret in found:  # rarely any: the common case costs one scan per secret
        messages = [message.replace(secret, "<secret>") for message in messages]
    return messages


def _message(error: Any) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model = SECTIONS.get(parent[0]) if parent else JobFileModel
        depth = 2 if parent[:1] in (("accounts",), ("jobs",)) else 1
        keys = model.model_fields if model and len(parent) in (0, depth) else ()
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        return "unknown key" + (f"; did you mean {close[0]}?" if close else "")
    if kind == "timezone_aware" or kind.startswith("datetime"):
        return f"must be {WHEN}"
    messages = {
        "missing": "required",
        "model_type": "must be a mapping",
        "dict_type": "must be a mapping",
        "list_type": "must be a list",
        "string_type": "must be text (quote values that look like numbers)",
        "invalid_key": "keys must be text",
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
    }
    return messages.get(kind) or error["msg"].replace("Input should be ", "must be ")


def _locate(doc: LineDict, loc: Loc) -> int:
    """The line of the deepest part of ``loc`` the file has (a missing key: its mapping's)."""
    node: Any = doc
    line = doc.line
    for part in loc:
        if isinstance(node, LineDict) and part in node.key_lines:
            line = node.key_lines[part]
        elif isinstance(node, LineList) and type(part) is int and 0 <= part < len(node):
            line = node.item_lines[part]
        else:
            break
        node = node[part]
    return line


def _format(
    where: str, doc: LineDict, leaders: tuple[str, ...], line: int, loc: Loc, message: str
) -> str:
    label = ""
    for part in loc[2:] if _is_job(loc) else loc:
        if part == "[key]":  # pydantic's marker for a bad mapping key: the key is named already
            continue
        label += f"[{part}]" if type(part) is int else f".{part}" if label else str(part)
    if _is_job(loc):
        # Not always there: a problem inside a duplicate ``jobs:`` the reader set aside.
        jobs = doc.get("jobs")
        entry = jobs[loc[1]] if isinstance(jobs, list) and loc[1] < len(jobs) else None
        job = f"job {_job_id(entry, leaders) or '?'} (jobs[{loc[1]}])"
        label = f"{job}: {label}" if label else job
    return f"{where}:{line}: {label}: {message}" if label else f"{where}:{line}: {message}"


def _is_job(loc: Loc) -> bool:
    return len(loc) >= 2 and loc[0] == "jobs" and type(loc[1]) is int


def _leaders(profile: ApiProfile | None) -> tuple[str, ...]:
    """Leader id fields, the profile's first: a job written for the other API still gets a name."""
    first = (profile.leader_field,) if profile else ()
    return first + tuple(sorted(LEADER_FIELDS - set(first)))


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _job_id(job: object, leaders: tuple[str, ...]) -> str | None:
    """The job's ``id``, else ``<account>:<leader id>``, read from the raw entry."""
    if not isinstance(job, dict):
        return None
    account = _text(job.get("account"))
    for field in leaders:
        leader = job.get(field)
        if isinstance(leader, str) and leader.isascii() and leader.isdigit() and len(leader) < 30:
            leader = int(leader)
        if account and isinstance(leader, int) and not isinstance(leader, bool):
            return _text(job.get("id")) or f"{account}:{leader}"
    return _text(job.get("id"))


def _check_jobs(doc: LineDict, profile: ApiProfile | None, add: Any) -> None:
    """The rules that need defaults merged in or the whole list: on the raw data, so they
    are reported together with whatever else is wrong."""
    jobs, defaults, accounts = doc.get("jobs"), doc.get("defaults"), doc.get("accounts")
    if not isinstance(jobs, LineList):
        return
    defaults = defaults if isinstance(defaults, dict) else {}
    names = {_text(name) for name in accounts} if isinstance(accounts, dict) else None
    leaders = _leaders(profile)
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue
        for field in MANDATORY_FIELDS:
            if (job[field] if field in job else defaults.get(field)) is None:
                add(("jobs", i, field), "required: set it in the job or in defaults")
        if profile is not None:
            wrong = [field for field in leaders[1:] if field in job]
            for field in wrong:
                add(("jobs", i, field), f"not taken by the {profile.name} API; write {leaders[0]}")
            if not wrong and job.get(leaders[0]) is None:
                add(("jobs", i, leaders[0]), "required")
        account = _text(job.get("account"))
        if names is not None and account and account not in names:
            add(("jobs", i, "account"), f"no account named {account} in accounts")
        job_id = _job_id(job, leaders)
        if job_id is not None and seen.setdefault(job_id, i) != i:
            first = seen[job_id]
            loc = ("jobs", i, "id") if "id" in job else ("jobs", i)
            line = jobs.item_lines[first]
            add(loc, f"duplicate job id {job_id}: jobs[{first}] at line {line} has it too")


def _build(
    path: Path, doc: LineDict, model: JobFileModel, profile: ApiProfile, builder: Builder
) -> Campaign:
    given = model.settings or SettingsModel()
    settings = Settings(
        api=profile,
        rate_limit=profile.rate_limit if given.rate_limit is None else given.rate_limit,
        concurrency=given.concurrency,
        max_attempts=given.max_attempts,
        timeout=given.timeout,
        recv_window_ms=given.recv_window,
    )
    defaults = model.defaults or FollowParamsModel()
    lines = doc["jobs"].item_lines
    jobs = tuple(_follow_job(job, defaults, profile, lines[i]) for i, job in enumerate(model.jobs))
    schedule = model.schedule and Schedule(
        at=model.schedule.at, cron=model.schedule.cron, timezone=model.schedule.timezone
    )
    return Campaign(
        path=path,
        base_url=model.base_url or DEFAULT_BASE_URL,
        settings=settings,
        accounts={
            name: Account(name, a.api_key, a.secret_key) for name, a in model.accounts.items()
        },
        jobs=jobs,
        schedule=schedule,
        warnings=tuple(printable(w) for w in _secret_warnings(doc, model, builder)),
    )


def _follow_job(
    job: JobModel, defaults: FollowParamsModel, profile: ApiProfile, line: int
) -> FollowJob:
    """Job values win over defaults; a job's explicit ``null`` leaves an optional one out."""
    leader: int = getattr(job, profile.leader_field)
    params: dict[str, FollowValue] = {profile.leader_field: leader}
    own = job.model_fields_set
    for name in FOLLOW_FIELDS:
        value = getattr(job if name in own else defaults, name)
        if value is not None:
            params[name] = ",".join(value) if name == "symbols" else value
    return FollowJob(
        id=job.id or f"{job.account}:{leader}",
        account=job.account,
        leader_id=leader,
        params=params,
        line=line,
        not_before=job.not_before,
    )


def _secret_warnings(doc: LineDict, model: JobFileModel, builder: Builder) -> Iterator[str]:
    for name in model.accounts:
        var = "XT_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_SECRET_KEY"
        where = f"{builder.where}:{_locate(doc, ('accounts', name, 'secret_key'))}: account {name}"
        defaulted = builder.secret_refs.get(name)
        if defaulted is None:
            yield (
                f"{where}: secret_key is written literally in the job file; "
                f"move it to an environment variable (${{{var}}})"
            )
        elif defaulted:
            yield (
                f"{where}: secret_key is the default written in the job file "
                f"because {', '.join(defaulted)} is not set"
            )
