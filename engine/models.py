"""The job file's shape as pydantic models: what ``jobfile.load`` validates and
``jobfile.json_schema`` exports, so an editor can check a file as it is typed.

Follow parameters keep the wire's camelCase names so a job reads like the request
it becomes. Every model forbids unknown keys: a typo such as ``followtype`` must be
an error, not a silently dropped setting. Numbers are validated here by hand
because pydantic's lax mode takes ``true`` for 1 and turns a float into digits the
user never wrote.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.campaign import Settings
from engine.urls import base_url_problem

#: XT's ids are Java longs; a larger number would be mangled by the exchange.
MAX_LEADER_ID = 2**63 - 1
SYMBOL_RE = re.compile(r"[a-z0-9]+_[a-z0-9]+")
DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: A follow parameter's digits in plain notation, at most: no amount or rate needs more.
MAX_DIGITS = 40
#: What an API key or secret may hold: printable ASCII, no spaces. A CRLF env file leaves
#: a carriage return at the end of each value, which no HTTP header may carry.
CREDENTIAL_RE = re.compile(r"[!-~]+")
_SETTINGS = Settings()
_NUMBER_SCHEMA = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]}
_MARGIN_SCHEMA = {"type": "number", "minimum": 0, "maximum": 1}


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _decimal(value: object) -> Decimal:
    """A number as written: YAML numbers arrive as int or Decimal, ``${VAR}`` ones as text,
    which must be plain ASCII decimal notation (no ``0x10``, ``1_0``, full-width digits)."""
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        text = value.strip(" ")
        if DECIMAL_RE.fullmatch(text):
            return Decimal(text)
        if _other_notation(text):
            raise _error("number_notation", "must be written in plain decimal digits, as 0.5")
    raise _error("number_type", "must be a number")


def _other_notation(text: str) -> bool:
    """A number Python would read that is not plain ASCII decimal: ``1_0.5``, ``0x10``,
    full-width or Arabic-Indic digits."""
    try:
        Decimal(text)
    except ArithmeticError:
        try:
            int(text, 0)
        except ValueError:
            return False
    return True


def _positive(value: object) -> Decimal:
    number = _decimal(value)
    if not number.is_finite() or number <= 0:
        raise _error("greater_than", "must be a number greater than 0")
    return number


def _follow_number(value: object) -> Decimal:
    """A follow parameter: positive, and sent written out in full (1.5e+3 as 1500), so
    bounded before it is."""
    number = _positive(value)
    if not -MAX_DIGITS < number.adjusted() < MAX_DIGITS or len(format(number, "f")) > MAX_DIGITS:
        raise _error("number_digits", f"has more than {MAX_DIGITS} digits once written out")
    return number


def _positive_float(value: object) -> float:
    number = float(_positive(value))
    if not 0 < number < float("inf"):  # 1e-999 and 1e999 survive as Decimal, not as float
        raise _error("float_range", "is too small or too large")
    return number


def _whole(low: int, high: int) -> PlainValidator:
    """Bounded before conversion, so ``1e999999999`` cannot turn into a huge int."""

    def check(value: object) -> int:
        number = _decimal(value)
        if not number.is_finite() or number != number.to_integral_value():
            raise _error("int_type", "must be a whole number")
        if not low <= number <= high:
            raise _error("int_range", f"must be between {low} and {high}")
        return int(number)

    return PlainValidator(check, json_schema_input_type=int)


def _leader_id(value: object) -> int:
    """Kept exact: a YAML int or a string of digits, never a float that lost digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_LEADER_ID:
        return value
    raise _error(
        "leader_id", f"must be a whole number from 1 to {MAX_LEADER_ID}, written as digits"
    )


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _error("bool_type", "must be true or false (yes, no, on and off are not booleans here)")


def _symbols(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise _error("symbols_type", "must be a list of symbols or a comma-separated string")
    if not items or items == [""]:
        raise _error("symbols_empty", "must name at least one symbol")
    bad = ", ".join(repr(item) for item in items if not SYMBOL_RE.fullmatch(item))
    if bad:
        raise _error("symbol", f"{bad}: not a lower-case base_quote pair such as btc_usdt")
    return tuple(items)


def _base_url(value: str) -> str:
    problem = base_url_problem(value)
    if problem is not None:
        raise _error("url", problem)
    return value.rstrip("/")


def _cron(value: str) -> str:
    from engine import cron  # only a file with schedule.cron pays for croniter

    if len(value.split()) != 5 or not cron.is_valid(value):
        raise _error("cron", "must be a 5-field cron expression such as '0 9 * * mon-fri'")
    if not cron.ever_fires(value):
        raise _error("cron", "never fires (no such date, as 30 February)")
    return value


def _at(value: datetime) -> datetime:
    try:
        value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise _error("at", "is out of range in UTC") from None
    return value


def _credential(value: str) -> str:
    if not CREDENTIAL_RE.fullmatch(value):
        raise _error(
            "credential",
            "must be printable ASCII without spaces, tabs or line breaks (an env file saved "
            "with CRLF line endings leaves a carriage return at the end of each value)",
        )
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _error("timezone", "must be an IANA time zone name such as Europe/Paris") from None
    return value


def _margin(value: object) -> float:
    number = _decimal(value)
    if not number.is_finite() or not 0 <= number <= 1:
        raise _error("margin", "must be a number from 0 to 1 (0.05 is 5 %)")
    return float(number)


def _version(value: object) -> int:
    if type(value) is int and value == 1:
        return value
    raise _error("version", "must be 1")


def _id_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Positive = Annotated[Decimal, PlainValidator(_follow_number), WithJsonSchema(_NUMBER_SCHEMA)]
PositiveFloat = Annotated[float, PlainValidator(_positive_float), WithJsonSchema(_NUMBER_SCHEMA)]
LeaderId = Annotated[
    int,
    PlainValidator(_leader_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_LEADER_ID},
                {"type": "string", "pattern": "^[0-9]+$"},
            ]
        }
    ),
]
Bool = Annotated[bool, PlainValidator(_bool), WithJsonSchema({"type": "boolean"})]
Symbols = Annotated[
    tuple[str, ...],
    PlainValidator(_symbols),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string", "pattern": f"^{SYMBOL_RE.pattern}$"}},
                {"type": "string"},
            ]
        }
    ),
]
Text = Annotated[str, Field(min_length=1)]
Credential = Annotated[str, Field(min_length=1), AfterValidator(_credential)]
When = Annotated[AwareDatetime, AfterValidator(_at)]
WHEN = "a date and time with a UTC offset, e.g. 2026-12-01T09:00:00Z"


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
    concurrency: Annotated[int, _whole(1, 10**9)] = Field(
        _SETTINGS.concurrency, description="Requests in flight at most, all keys together."
    )
    max_attempts: Annotated[int, _whole(1, 10**9)] = Field(
        _SETTINGS.max_attempts, description="Tries per job, the first one included."
    )
    timeout: PositiveFloat = Field(_SETTINGS.timeout, description="Seconds to wait for one answer.")
    recv_window: Annotated[int, _whole(1, 60_000)] = Field(
        _SETTINGS.recv_window_ms,
        description="Milliseconds a signed request stays valid (XT advises <= 5000).",
    )
    margin: Annotated[float, PlainValidator(_margin), WithJsonSchema(_MARGIN_SCHEMA)] = Field(
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
    id: Annotated[Text, BeforeValidator(_id_text)] | None = Field(
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
    cron: Annotated[str, AfterValidator(_cron)] | None = Field(
        None, description="Run on this 5-field cron expression (quote it in YAML)."
    )
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        "UTC", description="IANA time zone the cron expression is read in."
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleModel:
        if (self.at is None) == (self.cron is None):
            raise _error("schedule", "give exactly one of at or cron")
        return self


class JobFileModel(_Model):
    """A follow-engine job file: accounts, the jobs each of them follows, and how to run."""

    model_config = ConfigDict(title="follow-engine job file")

    version: Annotated[int, PlainValidator(_version), WithJsonSchema({"const": 1})] = Field(
        description="Format version of the job file; must be 1."
    )
    base_url: Annotated[str, AfterValidator(_base_url)] | None = Field(
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
    raise _error("jobs", "must be a list of at least one job")


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
