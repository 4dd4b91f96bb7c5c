"""The rules of the job file's values, one annotated type each: numbers as the user wrote
them, leader ids, symbols, credentials, times, settings' ranges, and their JSON Schema.

Numbers are validated here by hand because pydantic's lax mode takes ``true`` for 1 and turns a
float into digits the user never wrote; and only plain ASCII decimal notation is a number, so
that what is sent is what was written.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainValidator,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

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
_NUMBER_SCHEMA = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]}
_MARGIN_SCHEMA = {"type": "number", "minimum": 0, "maximum": 1}


def error(kind: str, message: str) -> PydanticCustomError:
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
            raise error("number_notation", "must be written in plain decimal digits, as 0.5")
    raise error("number_type", "must be a number")


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
        raise error("greater_than", "must be a number greater than 0")
    return number


def _follow_number(value: object) -> Decimal:
    """A follow parameter: positive, and sent written out in full (1.5e+3 as 1500), so
    bounded before it is."""
    number = _positive(value)
    if not -MAX_DIGITS < number.adjusted() < MAX_DIGITS or len(format(number, "f")) > MAX_DIGITS:
        raise error("number_digits", f"has more than {MAX_DIGITS} digits once written out")
    return number


def _positive_float(value: object) -> float:
    number = float(_positive(value))
    if not 0 < number < float("inf"):  # 1e-999 and 1e999 survive as Decimal, not as float
        raise error("float_range", "is too small or too large")
    return number


def whole(low: int, high: int) -> PlainValidator:
    """Bounded before conversion, so ``1e999999999`` cannot turn into a huge int."""

    def check(value: object) -> int:
        number = _decimal(value)
        if not number.is_finite() or number != number.to_integral_value():
            raise error("int_type", "must be a whole number")
        if not low <= number <= high:
            raise error("int_range", f"must be between {low} and {high}")
        return int(number)

    return PlainValidator(check, json_schema_input_type=int)


def _leader_id(value: object) -> int:
    """Kept exact: a YAML int or a string of digits, never a float that lost digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_LEADER_ID:
        return value
    raise error("leader_id", f"must be a whole number from 1 to {MAX_LEADER_ID}, written as digits")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise error("bool_type", "must be true or false (yes, no, on and off are not booleans here)")


def _symbols(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise error("symbols_type", "must be a list of symbols or a comma-separated string")
    if not items or items == [""]:
        raise error("symbols_empty", "must name at least one symbol")
    bad = ", ".join(repr(item) for item in items if not SYMBOL_RE.fullmatch(item))
    if bad:
        raise error("symbol", f"{bad}: not a lower-case base_quote pair such as btc_usdt")
    return tuple(items)


def _base_url(value: str) -> str:
    problem = base_url_problem(value)
    if problem is not None:
        raise error("url", problem)
    return value.rstrip("/")


def _cron(value: str) -> str:
    from engine import cron  # only a file with schedule.cron pays for croniter

    if len(value.split()) != 5 or not cron.is_valid(value):
        raise error("cron", "must be a 5-field cron expression such as '0 9 * * mon-fri'")
    if not cron.ever_fires(value):
        raise error("cron", "never fires (no such date, as 30 February)")
    return value


def _at(value: datetime) -> datetime:
    try:
        value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise error("at", "is out of range in UTC") from None
    return value


def _credential(value: str) -> str:
    if not CREDENTIAL_RE.fullmatch(value):
        raise error(
            "credential",
            "must be printable ASCII without spaces, tabs or line breaks (an env file saved "
            "with CRLF line endings leaves a carriage return at the end of each value)",
        )
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise error("timezone", "must be an IANA time zone name such as Europe/Paris") from None
    return value


def _margin(value: object) -> float:
    number = _decimal(value)
    if not number.is_finite() or not 0 <= number <= 1:
        raise error("margin", "must be a number from 0 to 1 (0.05 is 5 %)")
    return float(number)


def _version(value: object) -> int:
    if type(value) is int and value == 1:
        return value
    raise error("version", "must be 1")


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
Margin = Annotated[float, PlainValidator(_margin), WithJsonSchema(_MARGIN_SCHEMA)]
Version = Annotated[int, PlainValidator(_version), WithJsonSchema({"const": 1})]
JobId = Annotated[Text, BeforeValidator(_id_text)]
CronText = Annotated[str, AfterValidator(_cron)]
TimeZoneName = Annotated[str, AfterValidator(_timezone)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
