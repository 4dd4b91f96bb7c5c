"""A fake of XT's follow endpoint for end-to-end tests, ``run --simulate`` and benchmarks.

It checks requests as the exchange does (headers, signature, clock, parameters, a sliding-window
rate limit) and records every arrival, so a test can prove what the engine sent rather than trust
what the engine says. Faults are injected on purpose: scripted per leader id, or at random from a
seed so that a failing run can be replayed.

Answers follow ``docs/xt-api.md``: HTTP 200 with ``{"rc","mc","ma","result"}``, except 429/5xx.
A refused parameter is answered ``rc 1`` with ``INVALID_PARAMETER`` and the field's name in ``ma``:
XT documents no code for it, so this is an assumption (``FAILURE``, its generic "fail").
Signatures are checked by code of the simulator's own, never the client's: a mistake the two
shared would otherwise pass every test.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import random
import re
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from engine.profiles import (
    ACCOUNT_ENDPOINTS_RATE,
    CANCEL_FOLLOW_PATH,
    LEADER_CONFIG_PATH,
    MY_LEADERS_PATH,
    TIME_PATH,
    USER_STATUS_PATH,
    V1,
    V4,
)
from engine.sim_accounts import SimAccounts

SUCCESS = "SUCCESS"
#: The ``mc`` for a refused parameter, missing field, unknown field or non-JSON request body.
INVALID_PARAMETER = "FAILURE"
#: A client clock this far ahead of the server's is refused (XT's documentation: 1 s).
MAX_AHEAD_MS = 1000

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

_SUCCESS_BODY = b'{"rc":0,"mc":"SUCCESS","ma":[],"result":true}'
_HTML = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"
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
_BY_PATH = {p.path: p for p in (V4, V1)}
FOLLOW_PATHS = frozenset(_BY_PATH)
_VALIDATE = ("algorithms", "appkey", "recvwindow", "timestamp", "signature")
_REQUIRED = ("followType", "followVal", "followLossOperate", "autoFollowSymbol", "symbols")


def check_fault(kind: str) -> None:
    """Refuse a fault name nobody defined, so a typo in a test fails loudly."""
    if kind not in FAULT_KINDS and not MESSAGE_CODE.fullmatch(kind):
        raise ValueError(f"unknown fault {kind!r}")


@dataclass
class SimConfig:
    #: Seconds before every answer.
    latency: float = 0.0
    #: Arrivals allowed per ``window`` seconds, per API key (all keys together when ``per_ip``).
    rate_limit: float = 10
    window: float = 1.0
    per_ip: bool = False
    #: Server clock minus local clock.
    skew_ms: int = 0
    #: Share of arrivals (0..1) given a random fault from ``fault_kinds``.
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = TRANSIENT_FAULTS
    seed: int = 0
    slow_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.rate_limit <= 0 or self.window <= 0:
            raise ValueError("rate_limit and window must be positive")
        if not 0 <= self.fault_rate <= 1 or (self.fault_rate and not self.fault_kinds):
            raise ValueError("fault_rate must be within 0..1, with fault_kinds to choose from")
        for kind in self.fault_kinds:
            check_fault(kind)


@dataclass(slots=True)
class Arrival:
    #: ``time.monotonic()`` at arrival.
    t: float
    #: The key the request named; "" when it named none.
    api_key: str
    path: str
    leader_id: int | None
    #: The HTTP status answered; 0 when the connection was dropped instead.
    status: int
    #: The ``mc`` decided (also for ``drop_after``, though never sent); None without an envelope.
    mc: str | None
    fault: str | None
    #: The address it came from: under a per-IP limit, what is counted.
    remote: str = ""


def _envelope(mc: str, ma: Sequence[str] = (), result: Any = None) -> web.Response:
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


def _leader_of(path: str, data: Any, query: Mapping[str, str]) -> int | None:
    """The leader a request names: in a follow's body, or in the query (cancel-follow,
    follow-leader-config); what faults are scripted by."""
    if path in _BY_PATH:
        leader = data.get(_BY_PATH[path].leader_field) if isinstance(data, dict) else None
        return leader if isinstance(leader, int) and not isinstance(leader, bool) else None
    text = query.get("leaderAccountId", "")
    return int(text) if text.isascii() and text.isdigit() else None


def _fault_answer(fault: str) -> tuple[web.Response | None, str | None]:
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
    return _envelope(mc), mc


def _header_int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


#: Numbers stay exact (``Decimal``, never float); NaN and Infinity are no JSON.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_refuse_constant)


def _parse(body: str | None) -> Any:
    """The JSON body, or None when there is none or it is not JSON."""
    if body is None:
        return None
    try:
        return _DECODER.decode(body)
    except (ValueError, RecursionError):
        return None


def _bad_field(data: Any, leader_field: str) -> str | None:
    """The first field the endpoint refuses (``"body"`` for a non-object), else None."""
    if not isinstance(data, dict):
        return "body"
    for name, value in data.items():
        rule = _leader if name == leader_field else _RULES.get(name)
        if rule is None or not rule(value):
            return str(name)
    return next((name for name in (leader_field, *_REQUIRED) if name not in data), None)


def _signature(secret: str, request: web.Request, prefix: str, body: str | None) -> str:
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


def max_in_window(times: Sequence[float], window: float) -> int:
    """Most of the sorted ``times`` inside any half-open ``window``, by two pointers."""
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class Simulator:
    """XT's follow endpoint (v4 and v1 paths) and server time, in process."""

    def __init__(
        self, accounts: Mapping[str, str] | None = None, config: SimConfig | None = None
    ) -> None:
        #: api_key -> secret_key, a copy that may be added to while serving; None accepts any
        #: key and checks no signature.
        self.accounts = dict(accounts) if accounts is not None else None
        self.config = config or SimConfig()
        self.arrivals: list[Arrival] = []
        #: Follows accepted, by (api_key, leader_id): a count above 1 is a duplicate.
        self.accepted: Counter[tuple[str, int | None]] = Counter()
        #: Arrivals refused by the rate limit (not counting injected ``http429`` faults).
        self.violations = 0
        #: Set by ``start``.
        self.base_url: str | None = None
        #: Arrival times within the window of each limited key (per IP: of each address).
        self._recent: defaultdict[str | None, deque[float]] = defaultdict(deque)
        self._scripts: dict[int | str, deque[str]] = {}
        self._follows = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        #: Who follows whom, with which settings; what the account endpoints answer from.
        self.state = SimAccounts()
        self.app = web.Application()
        self.app.router.add_get(TIME_PATH, self._time)
        for path in _BY_PATH:
            self.app.router.add_post(path, self._signed)
        self.app.router.add_post(CANCEL_FOLLOW_PATH, self._signed)
        for path in (USER_STATUS_PATH, MY_LEADERS_PATH, LEADER_CONFIG_PATH):
            self.app.router.add_get(path, self._signed)

    def script(self, target: int | str, faults: Sequence[str]) -> None:
        """The next arrivals for ``target`` get ``faults`` in order, after earlier scripts:
        a leader id (a follow, cancel or settings read naming it), or an endpoint's path."""
        for kind in faults:
            check_fault(kind)
        self._scripts.setdefault(target, deque()).extend(faults)

    def server_time_ms(self) -> int:
        return int(time.time() * 1000) + self.config.skew_ms

    async def wait_for_arrivals(self, count: int) -> None:
        """Return once ``count`` follow requests have arrived, so a test can act mid-run."""
        if self._follows < count:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            await future

    def _wake_waiters(self) -> None:
        for count, future in self._waiters:
            if count <= self._follows and not future.done():
                future.set_result(None)
        self._waiters = [(c, f) for c, f in self._waiters if not f.done()]

    def max_in_window(
        self,
        api_key: str | None,
        window: float = 1.0,
        paths: Collection[str] = FOLLOW_PATHS,
        remote: str | None = None,
    ) -> int:
        """Most arrivals at ``paths`` (the follow endpoints unless told) of ``api_key``
        (every key when None) within any ``window`` seconds, of those from ``remote`` only
        when given."""
        times = sorted(
            a.t
            for a in self.arrivals
            if a.path in paths
            and (api_key is None or a.api_key == api_key)
            and (remote is None or a.remote == remote)
        )
        return max_in_window(times, window)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; returns the base URL. Port 0 picks a free port."""
        # Nothing graceful to wait for at close: a slow fault would otherwise hold it for long.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=1024).start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _time(self, request: web.Request) -> web.Response:
        self.arrivals.append(Arrival(time.monotonic(), "", TIME_PATH, None, 200, SUCCESS, None))
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        return web.json_response(
            {"rc": 0, "mc": SUCCESS, "ma": [], "result": {"serverTime": self.server_time_ms()}}
        )

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        """Every signed endpoint: the limit, then a fault, then XT's checks, then the
        endpoint's own answer from the accounts' state."""
        t = time.monotonic()
        path = request.path
        raw = await request.read()
        prefix = "xt-validate-" if "xt-validate-appkey" in request.headers else "validate-"
        api_key = request.headers.get(prefix + "appkey", "")
        body = raw.decode("utf-8", "replace") if raw else None
        data = _parse(body)
        leader_id = _leader_of(path, data, request.query)

        fault: str | None = None
        response: web.Response | None
        mc: str | None = None
        remote = request.remote or ""
        retry_after = self._admit(*self._window_of(path, api_key, remote), t)
        if retry_after:
            self.violations += 1
            response = web.Response(status=429, headers={"Retry-After": str(retry_after)})
        else:
            fault = self._fault(path, leader_id)
            if fault in (None, DROP_AFTER, SLOW):
                refused = self._refusal(request, prefix, body)
                result: Any = None
                if refused is None:
                    mc, ma, result = self._answer(path, api_key, data, request.query)
                else:
                    mc, ma = refused
                response = None if fault == DROP_AFTER else _envelope(mc, ma, result)
            else:
                response, mc = _fault_answer(fault)
        status = response.status if response is not None else 0
        self.arrivals.append(Arrival(t, api_key, path, leader_id, status, mc, fault, remote))
        if path in FOLLOW_PATHS:
            self._follows += 1
            if self._waiters:
                self._wake_waiters()

        delay = self.config.latency + (self.config.slow_seconds if fault == SLOW else 0)
        if delay:
            await asyncio.sleep(delay)
        if response is None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response()
        return response

    def _window_of(self, path: str, api_key: str, remote: str) -> tuple[str, float]:
        """Which sliding window an arrival counts in, and its limit. Under a per-IP rule every
        signed endpoint of one source address shares a window (as the engine assumes: XT
        does not say whether its endpoints' 2/s per IP are counted apart); else a follow
        counts per key and the account endpoints per address, at their own rate."""
        if self.config.per_ip:
            return f"ip {remote}", self.config.rate_limit
        if path in FOLLOW_PATHS:
            return f"key {api_key}", self.config.rate_limit
        return f"account endpoints {remote}", ACCOUNT_ENDPOINTS_RATE

    def _answer(
        self, path: str, api_key: str, data: Any, query: Mapping[str, str]
    ) -> tuple[str, Sequence[str], Any]:
        """``mc``, ``ma`` and ``result`` of a request that passed XT's checks."""
        if path in _BY_PATH:
            field = _bad_field(data, _BY_PATH[path].leader_field)
            if field:
                return INVALID_PARAMETER, (field,), None
            leader = data[_BY_PATH[path].leader_field]
            mc = self.state.follow(api_key, leader, data)
            if mc == SUCCESS:
                self.accepted[(api_key, leader)] += 1
            return mc, (), True if mc == SUCCESS else None
        if path == CANCEL_FOLLOW_PATH:
            leader_id = _leader_of(path, data, query)
            if leader_id is None:
                return INVALID_PARAMETER, ("leaderAccountId",), None
            mc = self.state.cancel(api_key, leader_id)
            return mc, (), True if mc == SUCCESS else None
        if path == USER_STATUS_PATH:
            return SUCCESS, (), self.state.role(api_key)
        read = self.state.my_leaders if path == MY_LEADERS_PATH else self.state.config
        mc, result = read(api_key, query)
        return mc, ("query",) if mc != SUCCESS else (), result

    def _admit(self, key: str | None, rate: float, now: float) -> int:
        """0 when the arrival fits the sliding window, else whole seconds until it would."""
        times = self._recent[key]
        horizon = now - self.config.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) + 1 > rate:
            return max(1, math.ceil(times[0] - horizon))
        times.append(now)
        return 0

    def _fault(self, path: str, leader_id: int | None) -> str | None:
        for target in (path, leader_id):
            script = self._scripts.get(target) if target is not None else None
            if script:
                return script.popleft()
        if self.config.fault_rate and self._rng.random() < self.config.fault_rate:
            return self._rng.choice(self.config.fault_kinds)
        return None

    def _refusal(
        self, request: web.Request, prefix: str, body: str | None
    ) -> tuple[str, Sequence[str]] | None:
        """The ``mc`` and ``ma`` XT refuses a request with for its headers, key, signature,
        clock or content type (its ``errorCode.md``); None when it passes."""
        found = {name: request.headers.get(prefix + name) for name in _VALIDATE}
        key, stamp_text, window_text = found["appkey"], found["timestamp"], found["recvwindow"]
        algorithm, signature = found["algorithms"], found["signature"]
        stamp, window = _header_int(stamp_text), _header_int(window_text)
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
        if not signature:
            return "AUTH_007", ()
        if self.accounts is not None:
            secret = self.accounts.get(key)
            if secret is None:
                return "AUTH_101", ()
            expected = _signature(secret, request, prefix, body)
            given = signature.lower().encode("utf-8", "replace")
            if not hmac.compare_digest(expected.encode(), given):
                return "AUTH_103", ()
        now = self.server_time_ms()
        if now - stamp >= window or stamp - now > MAX_AHEAD_MS:
            return "AUTH_105", ()
        if request.method == "POST" and request.content_type != "application/json":
            return INVALID_PARAMETER, ("Content-Type",)
        return None


async def serve(
    host: str, port: int, accounts: Mapping[str, str] | None, config: SimConfig
) -> None:
    """Serve until cancelled, saying on stderr where and whether signatures are checked."""
    sim = Simulator(accounts, config)
    url = await sim.start(host, port)
    checked = "not checked" if accounts is None else f"checked for {len(accounts)} keys"
    print(f"simulator listening on {url} (signatures {checked})", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        # Shielded: aiohttp's shutdown gives up early inside a task being cancelled.
        await asyncio.shield(sim.close())
