"""What is wrong with a job file, said so that its author can find and fix it.

Every problem is named by file, line, job and field. The rules that need the whole file
(defaults merged in, duplicate ids, unknown accounts) are checked on the raw data here, so
they are reported together with whatever pydantic found.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from typing import Any

from engine.fields import WHEN
from engine.models import FOLLOW_FIELDS, MANDATORY_FIELDS, SECTIONS, JobFileModel
from engine.profiles import LEADER_FIELDS, ApiProfile
from engine.yamlread import LineDict, LineList, Loc, printable

#: A mandatory field missing from more jobs than this is reported once, not once per job.
MAX_MISSING_LISTED = 3
#: A secret shorter than this is no real key, and blotting it out would garble messages.
MIN_SECRET = 6


def _secrets(doc: LineDict) -> dict[str, str]:
    """Every account's secret key as read (``${VAR}`` resolved) -> the account's name."""
    accounts = doc.get("accounts")
    return {
        secret: str(name)
        for name, account in (accounts.items() if isinstance(accounts, dict) else ())
        if isinstance(account, dict)
        and isinstance(secret := account.get("secret_key"), str)
        and len(secret) >= MIN_SECRET
    }


def secret_uses(doc: LineDict) -> list[tuple[Loc, str]]:
    """Every value outside a ``secret_key`` that holds an account's secret key (a job id
    written ``${XT_ALICE_SECRET_KEY}``, a base_url), with the account: a secret may appear
    only where it is used, or it would be printed, recorded and sent as something else."""
    secrets = _secrets(doc)
    if not secrets:
        return []
    shortest = min(map(len, secrets))
    pattern: re.Pattern[str] | None = None
    seen: dict[str, str | None] = {}
    found: list[tuple[Loc, str]] = []
    path: list[Any] = []

    def walk(node: dict[Any, Any] | list[Any]) -> None:
        nonlocal pattern
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if type(value) is str:
                if len(value) < shortest or _is_secret_key((*path, key)):
                    continue  # too short to hold one, or a secret where it belongs
                if value not in seen:
                    # 12 ms for 500 accounts, paid only here: most files never get this far.
                    pattern = pattern or re.compile(
                        "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
                    )
                    match = pattern.search(value)
                    seen[value] = secrets[match[0]] if match else None
                if (account := seen[value]) is not None:
                    found.append(((*path, key), account))
            elif isinstance(value, (dict, list)):
                path.append(key)
                walk(value)
                path.pop()

    walk(doc)
    return found


def _is_secret_key(loc: Loc) -> bool:
    return len(loc) == 3 and loc[0] == "accounts" and loc[2] == "secret_key"


def redact(messages: list[str], doc: LineDict, env_values: Iterable[str] = ()) -> list[str]:
    """``messages`` with any secret key, and any value read from the environment, blotted
    out, as written and as quoted back escaped (``repr``, JSON): a value quoted back to the
    user may hold a secret in the wrong place."""
    hidden = {*_secrets(doc), *(value for value in env_values if len(value) >= MIN_SECRET)}
    forms = {
        form
        for secret in hidden
        for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], printable(secret))
    }
    everything = "\n".join(messages)
    for form in sorted(forms, key=len, reverse=True):
        if form in everything:  # rarely any: the common case costs one scan per form
            messages = [message.replace(form, "<secret>") for message in messages]
    return messages


def _close(word: str, choices: Iterable[str]) -> list[str]:
    """The choice ``word`` most likely misspells, if any."""

    return difflib.get_close_matches(word, choices, n=1)


def describe(error: Any) -> str:
    """A pydantic error in words the file's author can act on."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model = SECTIONS.get(parent[0]) if parent else JobFileModel
        depth = 2 if parent[:1] in (("accounts",), ("jobs",)) else 1
        keys = model.model_fields if model and len(parent) in (0, depth) else ()
        close = _close(str(loc[-1]), keys)
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


def locate(doc: LineDict, loc: Loc) -> int:
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


def format_problem(
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


def leader_fields(profile: ApiProfile | None) -> tuple[str, ...]:
    """Leader id fields, the profile's first: a job written for the other API still gets a name."""
    first = (profile.leader_field,) if profile else ()
    return first + tuple(sorted(LEADER_FIELDS - set(first)))


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _leader(job: dict[Any, Any], field: str) -> int | None:
    """The job's leader id under ``field``, read from the raw entry as the model reads it."""
    leader = job.get(field)
    if isinstance(leader, str) and leader.isascii() and leader.isdigit() and len(leader) < 30:
        leader = int(leader)
    return leader if isinstance(leader, int) and not isinstance(leader, bool) else None


def _job_id(job: object, leaders: tuple[str, ...]) -> str | None:
    """The job's ``id``, else ``<account>:<leader id>``, read from the raw entry."""
    if not isinstance(job, dict):
        return None
    account = _text(job.get("account"))
    for field in leaders:
        leader = _leader(job, field)
        if account and leader is not None:
            return _text(job.get("id")) or f"{account}:{leader}"
    return _text(job.get("id"))


def over_limit(rate_limit: float, profile: ApiProfile) -> str | None:
    """Why ``rate_limit`` is more than XT allows under ``profile``, or None."""
    if rate_limit <= profile.rate_limit:
        return None
    scope = "per IP, all keys together" if profile.per_ip else "per API key"
    return (
        f"{rate_limit:g} requests/s is above the {profile.name} API's limit of "
        f"{profile.rate_limit:g} requests/s {scope}"
    )


def check_jobs(doc: LineDict, profile: ApiProfile | None, add: Any) -> None:
    """The rules that need defaults merged in or the whole list: on the raw data, so they
    are reported together with whatever else is wrong."""
    jobs, defaults, accounts = doc.get("jobs"), doc.get("defaults"), doc.get("accounts")
    if not isinstance(jobs, LineList):
        return
    explained = _explained_by_defaults(defaults)
    defaults = defaults if isinstance(defaults, dict) else {}
    names = {_text(name) for name in accounts} if isinstance(accounts, dict) else None
    leaders = leader_fields(profile)
    seen: dict[str, int] = {}
    follows: dict[tuple[str, int], int] = {}
    missing: dict[str, list[int]] = {field: [] for field in MANDATORY_FIELDS}
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue
        if job.get("action") == "unfollow":
            for field in FOLLOW_FIELDS:
                if field in job:
                    add(("jobs", i, field), "an unfollow job takes no follow parameters")
            if profile is not None and not profile.readable:
                message = f"needs api v1: XT's cancel-follow is not part of the {profile.name} API"
                add(("jobs", i, "action"), message)
        else:
            for field in MANDATORY_FIELDS:
                if (job[field] if field in job else defaults.get(field)) is None:
                    missing[field].append(i)
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
        elif account and (leader := _leader(job, leaders[0])) is not None:
            # One follow per account and leader: a second would set the first's settings anew.
            first = follows.setdefault((account, leader), i)
            if first != i:
                line = jobs.item_lines[first]
                add(
                    ("jobs", i, leaders[0]),
                    f"account {account} follows leader {leader} twice: jobs[{first}] at line "
                    f"{line} and jobs[{i}] at line {jobs.item_lines[i]}",
                )
    for field, where in missing.items():
        if field in explained:
            continue
        if len(where) <= MAX_MISSING_LISTED:
            for i in where:
                add(("jobs", i, field), "required: set it in the job or in defaults")
            continue
        named = ", ".join(f"jobs[{i}] (line {jobs.item_lines[i]})" for i in where[:3])
        at: Loc = ("defaults", field) if "defaults" in doc else ("jobs",)
        lack = f"{len(where)} of {len(jobs)} jobs lack it: {named}, ..."
        prefix = "" if "defaults" in doc else f"{field}: "
        add(at, f"{prefix}required: set it in defaults or in each job; {lack}")


def _explained_by_defaults(defaults: object) -> set[str]:
    """Mandatory fields whose absence a problem of ``defaults`` already explains: a key that
    is not a mapping, or a misspelt key (``followtype``) whose "did you mean" names them."""
    if defaults is None:
        return set()
    if not isinstance(defaults, dict):
        return set(MANDATORY_FIELDS)
    return {
        close
        for key in defaults
        if key not in FOLLOW_FIELDS
        for close in _close(str(key), FOLLOW_FIELDS)
    }
