"""Reading a job file: YAML in, a checked ``Campaign`` out, or every problem at once.

``yamlread`` turns the file into plain data that remembers its lines; pydantic
models (``models``) check it; this module builds the plain ``Campaign`` the engine
runs, and ``problems`` names what is wrong when it cannot. A valid file's jobs are
validated one at a time, so that their models never all live at once; a file with a
problem is validated whole, to name every problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
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
    FollowParamsModel,
    JobFileHeader,
    JobFileModel,
    JobModel,
    SettingsModel,
)
from engine.problems import (
    check_jobs,
    describe,
    format_problem,
    leader_fields,
    locate,
    over_limit,
    redact,
    secret_uses,
)
from engine.profiles import PROFILES, ApiProfile
from engine.yamlread import (
    MAX_FILE_BYTES,
    Builder,
    JobFileError,
    LineDict,
    Loc,
    gc_paused,
    printable,
    read_file,
)

__all__ = ["MAX_FILE_BYTES", "JobFileError", "json_schema", "load"]

#: Where a job's entry was, once the job is built.
_TAKEN = object()


def load(
    path: Path,
    *,
    api: str | None = None,
    env: Mapping[str, str] | None = None,
    rate_limit: float | None = None,
    allow_over_limit: bool = False,
) -> Campaign:
    """Read and check a job file. ``api`` and ``rate_limit`` (``--api``, ``--rate-limit``)
    override ``settings``; ``env`` defaults to ``os.environ``. A rate limit above the API's
    own is a problem, or with ``allow_over_limit`` a warning. Raises ``JobFileError`` naming
    every problem found, never a secret."""
    if api is not None and api not in PROFILES:
        raise ValueError(f"api must be one of {', '.join(PROFILES)}, not {api!r}")
    path = Path(path)
    builder = Builder(os.environ if env is None else env, str(path))
    with gc_paused():
        return _campaign(
            path, _read(path, builder), builder, api, Limit(rate_limit, allow_over_limit)
        )


def _read(path: Path, builder: Builder) -> LineDict:
    where = builder.where
    doc = builder.build(read_file(path, where))
    if doc is None:
        raise JobFileError([f"{where}:1: the job file is empty"])
    if not isinstance(doc, LineDict):
        line = getattr(doc, "line", 1)
        raise JobFileError(
            [f"{where}:{line}: the job file must be a mapping of version, accounts and jobs"]
        )
    _flag_secrets(doc, builder)
    return doc


def _flag_secrets(doc: LineDict, builder: Builder) -> None:
    """A secret anywhere but ``secret_key`` is a problem, named by its field only."""
    for loc, account in secret_uses(doc):
        message = f"holds the secret key of account {account}; a secret belongs in secret_key only"
        builder.problem(locate(doc, loc), loc, message)


def json_schema() -> dict[str, Any]:
    """The job file's JSON Schema, for editors and ``follow-engine schema``."""
    return JobFileModel.model_json_schema()


@dataclass(frozen=True, slots=True)
class Limit:
    """The command line's say on the rate limit."""

    #: ``--rate-limit``, which wins over the file's.
    given: float | None = None
    #: ``--allow-over-limit``: above the API's limit is a warning, not a problem.
    allow_over: bool = False


def _campaign(
    path: Path, doc: LineDict, builder: Builder, api: str | None, limit: Limit
) -> Campaign:
    settings = doc.get("settings")
    name = api or (settings.get("api") if isinstance(settings, dict) else None) or "v4"
    profile = PROFILES.get(name) if isinstance(name, str) else None
    if not builder.problems and profile is not None:
        campaign = _valid_campaign(path, doc, profile, builder, limit)
        if campaign is not None:
            return campaign
        jobs = doc.get("jobs")
        if isinstance(jobs, list) and jobs[:1] == [_TAKEN]:
            # The jobs built before the problem are gone from the tree: read the file again.
            builder = Builder(builder.env, builder.where)
            doc = _read(path, builder)
    # Something is wrong: the whole file in one validation, to name every problem.
    problems = list(builder.problems)

    def add(loc: Loc, message: str) -> None:
        problems.append((locate(doc, loc), loc, message))

    try:
        model = JobFileModel.model_validate(doc)
    except ValidationError as exc:
        model = None
        for error in exc.errors(include_url=False, include_context=False, include_input=False):
            if error["loc"] not in builder.flagged:
                add(error["loc"], describe(error))
    check_jobs(doc, profile, add)
    if problems or model is None or profile is None:
        leaders = leader_fields(profile)
        problems.sort(key=lambda problem: problem[0])
        raise JobFileError(
            redact(
                [format_problem(builder.where, doc, leaders, *p) for p in problems],
                doc,
                builder.env_values,
            )
        )
    return _build(path, doc, model, model.jobs, profile, builder, limit)


def _valid_campaign(
    path: Path, doc: LineDict, profile: ApiProfile, builder: Builder, limit: Limit
) -> Campaign | None:
    """The campaign, built one job at a time; None at the first sign of a problem, and then
    the entries of the jobs built before it are gone from ``doc``."""
    found: list[Loc] = []
    try:
        header = JobFileHeader.model_validate(doc)
        check_jobs(doc, profile, lambda loc, message: found.append(loc))
        if found:
            return None
        job_models = (JobModel.model_validate(job) for job in _let_go(header.jobs))
        return _build(path, doc, header, job_models, profile, builder, limit)
    except ValidationError:
        return None


def _let_go(entries: list[Any]) -> Iterator[Any]:
    """Each entry, taken out of ``entries`` as it is handed over: a job's part of the YAML
    tree is freed once the job is built, so the peak is the larger of tree and campaign,
    not their sum."""
    for i, entry in enumerate(entries):
        entries[i] = _TAKEN
        yield entry


def _build(
    path: Path,
    doc: LineDict,
    model: JobFileModel,
    job_models: Iterable[JobModel],
    profile: ApiProfile,
    builder: Builder,
    limit: Limit,
) -> Campaign:
    given = model.settings or SettingsModel()
    rate_limit = limit.given or given.rate_limit or profile.rate_limit
    warnings = list(_secret_warnings(doc, model, builder))
    over = over_limit(rate_limit, profile)
    if over is not None:
        where = (
            f"{builder.where}: --rate-limit"
            if limit.given
            else f"{builder.where}:{locate(doc, ('settings', 'rate_limit'))}: settings.rate_limit"
        )
        if not limit.allow_over:
            raise JobFileError(
                [f"{where}: {over}; lower it, or pass --allow-over-limit if XT raised your limit"]
            )
        warnings.append(f"{where}: {over}, allowed by --allow-over-limit")
    settings = Settings(
        api=profile,
        rate_limit=rate_limit,
        concurrency=given.concurrency,
        max_attempts=given.max_attempts,
        timeout=given.timeout,
        recv_window_ms=given.recv_window,
        margin=given.margin,
        max_retry_after=given.max_retry_after,
        headers=given.headers,
    )
    defaults = model.defaults or FollowParamsModel()
    lines = doc["jobs"].item_lines
    jobs = tuple(_follow_job(job, defaults, profile, lines[i]) for i, job in enumerate(job_models))
    when = model.schedule
    schedule = (
        None if when is None else Schedule(at=when.at, cron=when.cron, timezone=when.timezone)
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
        warnings=tuple(printable(w) for w in warnings),
    )


def _follow_job(
    job: JobModel, defaults: FollowParamsModel, profile: ApiProfile, line: int
) -> FollowJob:
    """Job values win over defaults; a job's explicit ``null`` leaves an optional one out."""
    leader: int = getattr(job, profile.leader_field)
    params: dict[str, FollowValue] = {profile.leader_field: leader}
    own = job.model_fields_set
    for name in FOLLOW_FIELDS if job.action == "follow" else ():
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
        action=job.action,
    )


def _secret_warnings(doc: LineDict, model: JobFileModel, builder: Builder) -> Iterator[str]:
    for name in model.accounts:
        var = "XT_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_SECRET_KEY"
        where = f"{builder.where}:{locate(doc, ('accounts', name, 'secret_key'))}: account {name}"
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
