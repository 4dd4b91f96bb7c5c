"""What a YAML scalar's text becomes, by its tag: YAML 1.2 where 1.1 would surprise. Only
``true``/``false`` are booleans, ``0123`` is decimal, floats become ``Decimal`` from the text
written, and other notations (hex, ``1_000``, base 60) stay text, which no number field takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

import yaml

_SAFE = yaml.constructor.SafeConstructor()
#: First character -> (tag, pattern) pairs, as PyYAML resolves plain scalars.
_RESOLVERS: dict[str | None, list[tuple[str, re.Pattern[str]]]] = (
    yaml.resolver.Resolver.yaml_implicit_resolvers
)
T = "tag:yaml.org,2002:"
STR = T + "str"


def _int(text: str) -> int | str:
    """Plain decimal digits only (YAML 1.2: 0123 is decimal, not 1.1's octal). Hex, binary,
    ``1_000`` and base 60 are left as text, which no number field takes: a number is sent
    in the digits the user wrote, never converted from another notation."""
    if text.isascii() and text.lstrip("+-").isdigit():
        if len(text) > 100:
            raise ValueError(text)
        return int(text)
    return text


def _decimal(text: str) -> Decimal | str:
    plain = text.lower()
    if plain.lstrip("+-") == ".inf":
        return Decimal("-Infinity" if plain[0] == "-" else "Infinity")
    if plain == ".nan":
        return Decimal("NaN")
    if "_" in plain or ":" in plain:
        return text  # 1_000.5 or base 60 (1:30.5): left as text, which no number field takes
    number = Decimal(plain)
    if number.is_snan():
        raise ValueError(text)
    return number


def _timestamp(text: str) -> object:
    if not _SAFE.timestamp_regexp.match(text):
        raise ValueError(text)
    return _SAFE.construct_yaml_timestamp(yaml.ScalarNode(T + "timestamp", text))


def _bool(text: str) -> bool | str:
    lowered = text.lower()
    return lowered == "true" if lowered in ("true", "false") else text  # yes/no/on/off stay text


SCALARS: dict[str, Callable[[str], object]] = {
    T + "null": lambda _: None,
    T + "bool": _bool,
    T + "int": _int,
    T + "float": _decimal,
    T + "timestamp": _timestamp,
    T + "merge": str,  # merge keys (<<) are not supported: defaults do that job
    T + "value": str,
}


def implicit_tag(text: str) -> str:
    for tag, regexp in _RESOLVERS.get(text[:1], ()):
        if regexp.match(text):
            return tag
    return STR
