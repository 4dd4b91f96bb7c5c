"""The job file's shape as pydantic models: what ``jobfile.load`` validates and
``jobfile.json_schema`` exports, so an editor can check a file as it is typed.

Follow parameters keep the wire's camelCase names so a job reads like the request
it becomes. Every model forbids unknown keys: a typo such as ``followtype`` must be
an error, not a silently dropped setting. Numbers are validated here by hand
because pydantic's lax mode takes ``true`` for 1 and turns a float into digits the
user never wrote (``engine.fields`` holds those rules).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator

from engine.campaign import Settings
from engine.fields import (
    WHEN,
    BaseUrl,
    Bool,
    Credential,
    CronText,
    JobId,
    LeaderId,
    Margin,
    Positive,
    PositiveFloat,
    Symbols,
    Text,
    TimeZoneName,
    Version,
    When,
    error,
    whole,
)

_SETTINGS = Settings()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SettingsModel(_Model):
    api: Literal["v4", "v1"] = Field(
        "v4",
        description="XT follow endpoint: v4 (/v4/account/...) or v1 (/v1/copy-trade-account/...).",
    )
    rate_limit: PositiveFloat | None = Field(
        None,
        description="Requests per second per API key (per IP under v1). Default: the API's limit.",
    )
    concurrency: Annotated[int, whole(1, 10**9)] = Field(
        _SETTINGS.concurrency, description="Requests in flight at most, all keys together."
    )
    max_attempts: Annotated[int, whole(1, 10**9)] = Field(
        _SETTINGS.max_attempts, description="Tries per job, the first one included."
    )
    timeout: PositiveFloat = Field(_SETTINGS.timeout, description="Seconds to wait for one answer.")
    recv_window: Annotated[int, whole(1, 60_000)] = Field(
        _SETTINGS.recv_window_ms,
        description="Milliseconds a signed request stays valid (XT advises <= 5000).",
    )
    margin: Margin = Field(
        _SETTINGS.margin,
        description="How much longer than the 1 s window a limiter slot waits, 0 to 1 "
        "(0.05: 5 %), for network jitter; a key that still draws a 429 has it doubled.",
    )
    max_retry_after: PositiveFloat = Field(
        _SETTINGS.max_retry_after,
        description="Seconds: a Retry-After longer than this fails the job (and its key's "
        "other jobs) instead of waiting.",
    )
    headers: Literal["xt-validate", "validate"] = Field(
        "xt-validate",
        description="Spelling of the signed headers: xt-validate-* (as ccxt and pyxt send) or "
        "validate-* (as XT's current documentation writes).",
    )


class AccountModel(_Model):
    api_key: Credential = Field(
        repr=False, description="API key; write ${VAR} to read it from the environment."
    )
    secret_key: Credential = Field(
        repr=False, description="Secret key; write ${VAR}, never the key itself."
    )


class FollowParamsModel(_Model):
    """Follow parameters in wire order, all optional: defaults may set any of them."""

    followType: Literal["FUND", "RATE"] | None = Field(
        None, description="FUND: follow with a fixed amount; RATE: follow at a ratio."
    )
    followVal: Positive | None = Field(None, description="The amount (FUND) or ratio (RATE), > 0.")
    followLoss: Positive | None = Field(None, description="Optional loss limit of the follow, > 0.")
    followLossOperate: Literal["MARKET_SELL", "LEADER_CLOSE", "MANUAL_PROCESS"] | None = Field(
        None, description="What happens when followLoss is reached."
    )
    triggerStopRate: Positive | None = Field(
        None, description="Optional stop-loss rate per trade, > 0."
    )
    triggerProfitRate: Positive | None = Field(
        None, description="Optional take-profit rate per trade, > 0."
    )
    autoFollowSymbol: Bool | None = Field(
        None, description="Follow the leader's new symbols automatically: true or false."
    )
    symbols: Symbols | None = Field(
        None, description="Symbols to copy: a list, or one string such as 'xt_usdt,btc_usdt'."
    )


class JobModel(FollowParamsModel):
    id: JobId | None = Field(
        None, description="Unique name of the job. Default: '<account>:<leader id>'."
    )
    account: Text = Field(description="Which entry of accounts follows.")
    leaderOrderId: LeaderId | None = Field(None, description="Whom to follow under the v4 API.")
    leaderAccountId: LeaderId | None = Field(None, description="Whom to follow under the v1 API.")
    not_before: When | None = Field(None, description=f"Not sent before then: {WHEN}.")
    action: Literal["follow", "unfollow"] = Field(
        "follow",
        description="follow (the default) or unfollow: stop following the leader (api v1).",
    )


class ScheduleModel(_Model):
    at: When | None = Field(None, description=f"Run once at this time: {WHEN}.")
    cron: CronText | None = Field(
        None, description="Run on this 5-field cron expression (quote it in YAML)."
    )
    timezone: TimeZoneName = Field(
        "UTC", description="IANA time zone the cron expression is read in."
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleModel:
        if (self.at is None) == (self.cron is None):
            raise error("schedule", "give exactly one of at or cron")
        return self


class JobFileModel(_Model):
    """A follow-engine job file: accounts, the jobs each of them follows, and how to run."""

    model_config = ConfigDict(title="follow-engine job file")

    version: Version = Field(description="Format version of the job file; must be 1.")
    base_url: BaseUrl | None = Field(
        None, description="Exchange REST host. Default: https://sapi.xt.com."
    )
    settings: SettingsModel | None = Field(None, description="How the run behaves.")
    accounts: dict[str, AccountModel] = Field(
        min_length=1, description="API keys by account name; jobs name one of these."
    )
    defaults: FollowParamsModel | None = Field(
        None, description="Follow parameters for every job; a job's own value wins."
    )
    jobs: list[JobModel] = Field(min_length=1, description="The follows to make, one request each.")
    schedule: ScheduleModel | None = Field(None, description="Optional: when the campaign runs.")


def _job_entries(value: object) -> list[Any]:
    """The entries themselves, not a copy: each is let go of once its job is built."""
    if isinstance(value, list) and value:
        return value
    raise error("jobs", "must be a list of at least one job")


class JobFileHeader(JobFileModel):
    """The job file with its jobs only counted: a valid file's jobs are then validated one at
    a time, so that one job's model is alive at once, not all of them (74 MB at 100,000)."""

    jobs: Annotated[list[Any], PlainValidator(_job_entries)]


#: The follow parameters in wire order (after the leader id).
FOLLOW_FIELDS: tuple[str, ...] = tuple(FollowParamsModel.model_fields)
#: What every job needs once defaults are applied (the leader id is checked per API).
MANDATORY_FIELDS: tuple[str, ...] = (
    "followType",
    "followVal",
    "followLossOperate",
    "autoFollowSymbol",
    "symbols",
)
#: The model of each section, of each entry for accounts and jobs: for "did you mean".
SECTIONS: dict[str, type[BaseModel]] = {
    "settings": SettingsModel,
    "accounts": AccountModel,
    "defaults": FollowParamsModel,
    "jobs": JobModel,
    "schedule": ScheduleModel,
}
