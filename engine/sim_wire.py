"""What the simulated exchange reads from a request and writes back: the rules of XT's follow
parameters, the JSON it parses, the signature it checks (with code of its own, never the
client's: a mistake the two shared would otherwise pass every test) and its envelope."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from aiohttp import web

from engine.profiles import V1, V4

SUCCESS = "SUCCESS"
#: The ``mc`` for a refused parameter, missing field, unknown field or non-JSON request body.
INVALID_PARAMETER = "FAILURE"
#: A client clock this far ahead of the server's is refused (XT's documentation: 1 s).
MAX_AHEAD_MS = 1000

_SUCCESS_BODY = b'{"rc":0,"mc":"SUCCESS","ma":[],"result":true}'
_SYMBOLS = re.compile(r"[a-z0-9]+_[a-z0-9]+(?:,[a-z0-9]+_[a-z0-9]+)*")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value > 0


def _leader(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_RULES: dict[str, Callable[[Any], bool]] = {
    "followType": lambda v: v in ("FUND", "RATE"),
    "followVal": _positive,
    "followLoss": _positive,
    "followLossOperate": lambda v: v in ("MARKET_SELL", "LEADER_CLOSE", "MANUAL_PROCESS"),
    "triggerStopRate": _positive,
    "triggerProfitRate": _positive,
    "autoFollowSymbol": lambda v: isinstance(v, bool),
    "symbols": lambda v: isinstance(v, str) and _SYMBOLS.fullmatch(v) is not None,
}
BY_PATH = {p.path: p for p in (V4, V1)}
FOLLOW_PATHS = frozenset(BY_PATH)
VALIDATE = ("algorithms", "appkey", "recvwindow", "timestamp", "signature")
_REQUIRED = ("followType", "followVal", "followLossOperate", "autoFollowSymbol", "symbols")


def envelope(mc: str, ma: Sequence[str] = (), result: Any = None) -> web.Response:
    if mc == SUCCESS and result is True:
        return web.Response(body=_SUCCESS_BODY, content_type="application/json")
    envelope = {"rc": 0 if mc == SUCCESS else 1, "mc": mc, "ma": list(ma), "result": result}
    return web.json_response(envelope, dumps=_dumps)


def _dumps(data: Any) -> str:
    """JSON with the exact numbers kept as ``Decimal`` written as numbers."""
    return json.dumps(data, default=_number)


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def leader_of(path: str, data: Any, query: Mapping[str, str]) -> int | None:
    """The leader a request names: in a follow's body, or in the query (cancel-follow,
    follow-leader-config); what faults are scripted by."""
    if path in BY_PATH:
        leader = data.get(BY_PATH[path].leader_field) if isinstance(data, dict) else None
        return leader if isinstance(leader, int) and not isinstance(leader, bool) else None
    text = query.get("leaderAccountId", "")
    return int(text) if text.isascii() and text.isdigit() else None


def header_int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: Numbers stay exact (``Decimal``, never float); NaN and Infinity are no JSON.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_refuse_constant)


def parse(body: str | None) -> Any:
    """The JSON body, or None when there is none or it is not JSON."""
    if body is None:
        return None
    try:
        return _DECODER.decode(body)
    except (ValueError, RecursionError):
        return None


def bad_field(data: Any, leader_field: str) -> str | None:
    """The first field the endpoint refuses (``"body"`` for a non-object), else None."""
    if not isinstance(data, dict):
        return "body"
    for name, value in data.items():
        rule = _leader if name == leader_field else _RULES.get(name)
        if rule is None or not rule(value):
            return str(name)
    return next((name for name in (leader_field, *_REQUIRED) if name not in data), None)


def signature(secret: str, request: web.Request, prefix: str, body: str | None) -> str:
    """XT's signature of ``request`` as the exchange would compute it from what arrived: the
    validate headers received (all but the signature), by name, ``name=value`` joined by
    ``&``; then ``#METHOD#PATH``, and ``#`` with the body, or with the query by key."""
    received = sorted(
        (name.lower(), value)
        for name, value in request.headers.items()
        if name.lower().startswith(prefix) and name.lower() != prefix + "signature"
    )
    text = "&".join(f"{name}={value}" for name, value in received)
    text += f"#{request.method}#{request.path}"
    if body is not None:
        text += f"#{body}"
    elif request.query:
        text += "#" + "&".join(f"{k}={v}" for k, v in sorted(request.query.items()))
    return hmac.new(secret.encode(), text.encode(), "sha256").hexdigest()


def refusal(
    request: web.Request,
    prefix: str,
    body: str | None,
    accounts: Mapping[str, str] | None,
    now_ms: int,
) -> tuple[str, Sequence[str]] | None:
    """The ``mc`` and ``ma`` XT refuses a request with for its headers, key, signature,
    clock or content type (its ``errorCode.md``); None when it passes."""
    found = {name: request.headers.get(prefix + name) for name in VALIDATE}
    key, stamp_text, window_text = found["appkey"], found["timestamp"], found["recvwindow"]
    algorithm, given = found["algorithms"], found["signature"]
    stamp, window = header_int(stamp_text), header_int(window_text)
    if not key:
        return "AUTH_001", ()
    if stamp is None:
        return "AUTH_002", ()
    if window_text is None:
        return "AUTH_003", ()
    if not window:
        return "AUTH_004", ()
    if algorithm is None:
        return "AUTH_005", ()
    if algorithm != "HmacSHA256":
        return "AUTH_006", ()
    if not given:
        return "AUTH_007", ()
    if accounts is not None:
        secret = accounts.get(key)
        if secret is None:
            return "AUTH_101", ()
        expected = signature(secret, request, prefix, body)
        if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "replace")):
            return "AUTH_103", ()
    if now_ms - stamp >= window or stamp - now_ms > MAX_AHEAD_MS:
        return "AUTH_105", ()
    if request.method == "POST" and request.content_type != "application/json":
        return INVALID_PARAMETER, ("Content-Type",)
    return None
