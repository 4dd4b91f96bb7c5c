"""The faults the simulated exchange injects on purpose: their names, and what each answers
instead of the exchange's own answer."""

from __future__ import annotations

import re

from aiohttp import web

from engine.sim_wire import SUCCESS, envelope

# Fault kinds. A fault hits an arrival that passed the rate limit, before any other check:
#   http500/502/503  that status with a text body; nothing accepted
#   http429          429 with ``Retry-After: 1`` though the limit was kept; not a violation
#   drop_before      the connection closed, nothing processed or answered: nothing accepted
#   drop_after       processed as usual (accepted when valid), then closed unanswered
#   non_json         HTTP 200 with an HTML body, as a proxy might send; nothing accepted
#   slow             processed as usual, answered after ``slow_seconds``: outlasts a client timeout
#   auth_105         rc 1 ``AUTH_105`` as if the client's clock were skewed; nothing accepted
#   result_false     rc 0 ``SUCCESS`` with ``"result": false``: XT says it did not follow
# Any other fault shaped like an XT message code ("COMMON_002", "COPY_TRADE_SPOT_006") is
# answered rc 1 with that code; nothing accepted.
HTTP500, HTTP502, HTTP503, HTTP429 = "http500", "http502", "http503", "http429"
DROP_BEFORE, DROP_AFTER, NON_JSON = "drop_before", "drop_after", "non_json"
SLOW, AUTH_105, RESULT_FALSE = "slow", "auth_105", "result_false"
MESSAGE_CODE = re.compile(r"[A-Z]+(?:_[A-Z0-9]+)+")
_HTTP_FAULTS = {HTTP500: 500, HTTP502: 502, HTTP503: 503, HTTP429: 429}
FAULT_KINDS = frozenset(
    {*_HTTP_FAULTS, DROP_BEFORE, DROP_AFTER, NON_JSON, SLOW, AUTH_105, RESULT_FALSE}
)
#: What random faults choose from: all a client should retry. ``slow`` is left out because
#: each one holds a request for ``slow_seconds``.
TRANSIENT_FAULTS = (*_HTTP_FAULTS, DROP_BEFORE, DROP_AFTER, NON_JSON, AUTH_105, "COMMON_002")

_HTML = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


def check_fault(kind: str) -> None:
    """Refuse a fault name nobody defined, so a typo in a test fails loudly."""
    if kind not in FAULT_KINDS and not MESSAGE_CODE.fullmatch(kind):
        raise ValueError(f"unknown fault {kind!r}")


def fault_answer(fault: str) -> tuple[web.Response | None, str | None]:
    """What a fault answers instead of processing, and its ``mc``; no response drops."""
    if fault == DROP_BEFORE:
        return None, None
    if fault in _HTTP_FAULTS:
        status = _HTTP_FAULTS[fault]
        retry = {"Retry-After": "1"} if status == 429 else None
        return web.Response(status=status, text=f"{status} injected fault", headers=retry), None
    if fault == NON_JSON:
        return web.Response(text=_HTML, content_type="text/html"), None
    if fault == RESULT_FALSE:
        return web.json_response({"rc": 0, "mc": SUCCESS, "ma": [], "result": False}), SUCCESS
    mc = "AUTH_105" if fault == AUTH_105 else fault
    return envelope(mc), mc
