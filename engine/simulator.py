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
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.profiles import (
    CANCEL_FOLLOW_PATH,
    LEADER_CONFIG_PATH,
    MY_LEADERS_PATH,
    TIME_PATH,
    USER_STATUS_PATH,
)
from engine.sim_accounts import SimAccounts
from engine.sim_faults import (
    AUTH_105,
    DROP_AFTER,
    DROP_BEFORE,
    FAULT_KINDS,
    HTTP429,
    HTTP500,
    HTTP502,
    HTTP503,
    NON_JSON,
    RESULT_FALSE,
    SLOW,
    TRANSIENT_FAULTS,
    check_fault,
    fault_answer,
)
from engine.sim_window import SlidingWindows, max_in_window, window_of
from engine.sim_wire import (
    BY_PATH,
    FOLLOW_PATHS,
    INVALID_PARAMETER,
    SUCCESS,
    bad_field,
    envelope,
    leader_of,
    parse,
    refusal,
)

__all__ = [
    "AUTH_105",
    "DROP_AFTER",
    "DROP_BEFORE",
    "FAULT_KINDS",
    "FOLLOW_PATHS",
    "HTTP429",
    "HTTP500",
    "HTTP502",
    "HTTP503",
    "INVALID_PARAMETER",
    "NON_JSON",
    "RESULT_FALSE",
    "SLOW",
    "SUCCESS",
    "Arrival",
    "SimConfig",
    "Simulator",
    "check_fault",
    "max_in_window",
    "serve",
]


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
        self._windows = SlidingWindows(self.config.window)
        self._scripts: dict[int | str, deque[str]] = {}
        self._follows = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        #: Who follows whom, with which settings; what the account endpoints answer from.
        self.state = SimAccounts()
        self.app = web.Application()
        self.app.router.add_get(TIME_PATH, self._time)
        for path in BY_PATH:
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
        data = parse(body)
        leader_id = leader_of(path, data, request.query)

        fault: str | None = None
        response: web.Response | None
        mc: str | None = None
        remote = request.remote or ""
        config = self.config
        window = window_of(path, api_key, remote, config.rate_limit, per_ip=config.per_ip)
        retry_after = self._windows.admit(*window, t)
        if retry_after:
            self.violations += 1
            response = web.Response(status=429, headers={"Retry-After": str(retry_after)})
        else:
            fault = self._fault(path, leader_id)
            if fault in (None, DROP_AFTER, SLOW):
                refused = refusal(request, prefix, body, self.accounts, self.server_time_ms())
                result: Any = None
                if refused is None:
                    mc, ma, result = self._answer(path, api_key, data, request.query)
                else:
                    mc, ma = refused
                response = None if fault == DROP_AFTER else envelope(mc, ma, result)
            else:
                response, mc = fault_answer(fault)
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

    def _answer(
        self, path: str, api_key: str, data: Any, query: Mapping[str, str]
    ) -> tuple[str, Sequence[str], Any]:
        """``mc``, ``ma`` and ``result`` of a request that passed XT's checks."""
        if path in BY_PATH:
            field = bad_field(data, BY_PATH[path].leader_field)
            if field:
                return INVALID_PARAMETER, (field,), None
            leader = data[BY_PATH[path].leader_field]
            mc = self.state.follow(api_key, leader, data)
            if mc == SUCCESS:
                self.accepted[(api_key, leader)] += 1
            return mc, (), True if mc == SUCCESS else None
        if path == CANCEL_FOLLOW_PATH:
            leader_id = leader_of(path, data, query)
            if leader_id is None:
                return INVALID_PARAMETER, ("leaderAccountId",), None
            mc = self.state.cancel(api_key, leader_id)
            return mc, (), True if mc == SUCCESS else None
        if path == USER_STATUS_PATH:
            return SUCCESS, (), self.state.role(api_key)
        read = self.state.my_leaders if path == MY_LEADERS_PATH else self.state.config
        mc, result = read(api_key, query)
        return mc, ("query",) if mc != SUCCESS else (), result

    def _fault(self, path: str, leader_id: int | None) -> str | None:
        for target in (path, leader_id):
            script = self._scripts.get(target) if target is not None else None
            if script:
                return script.popleft()
        if self.config.fault_rate and self._rng.random() < self.config.fault_rate:
            return self._rng.choice(self.config.fault_kinds)
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
