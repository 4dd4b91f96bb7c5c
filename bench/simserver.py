"""The engine's simulator in its own process, with a read-only stats endpoint for the bench.

The bench never runs the simulator in the process it measures: the simulator's CPU would be
billed to the client. ``SimProcess`` starts ``python -m bench.simserver`` (the unchanged
``engine.simulator.Simulator``, signatures checked) and reads ``GET /_sim/stats``. Times are
taken here, on the server's side, the same way for every client: each connection as it is
accepted, each follow request as it arrives, the last answer as its headers are written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine.launch import fit_open_files
from engine.simulator import TIME_PATH, SimConfig, Simulator, max_in_window

REPO = Path(__file__).resolve().parent.parent
STATS_PATH = "/_sim/stats"
ARRIVALS_PATH = "/_sim/arrivals"


@dataclass(frozen=True, slots=True)
class SimStats:
    """What the simulator saw of one client's run."""

    arrivals: int
    #: Answers by HTTP status (0: connection dropped).
    statuses: dict[int, int]
    #: Answers by XT message code ("SUCCESS", "AUTH_105", ...), for those that had one.
    codes: dict[str, int]
    #: Arrivals refused by the sliding-window rate limit (each answered 429).
    violations: int
    accepted: int
    #: Follows accepted more than once for the same (key, leader).
    duplicates: int
    #: Most arrivals of one key inside any one window, refused ones included.
    max_in_window: int
    first_arrival: float | None
    last_answer: float | None
    #: CPU seconds the simulator process has used so far: near the makespan, it was the limit.
    cpu: float = 0.0
    #: Arrivals the rate limit let through, by limited key (the source address, per IP).
    admitted: dict[str, int] = field(default_factory=dict)
    #: When the client's first connection was accepted: its sender's start, as the exchange
    #: sees it (a client connects as soon as it has a request to send).
    first_connect: float | None = None
    #: Connections accepted before the first request arrived.
    connects_before_first_arrival: int = 0
    #: Connections accepted in all.
    connects: int = 0

    @property
    def http_429(self) -> int:
        return self.statuses.get(429, 0)

    @property
    def makespan(self) -> float | None:
        """Seconds from the first arrival to the last answer (``time.monotonic`` clock)."""
        if self.first_arrival is None or self.last_answer is None:
            return None
        return self.last_answer - self.first_arrival


def _stats(sim: Simulator, last_answer: float | None, connects: list[float]) -> dict[str, Any]:
    cpu = time.process_time()  # before this summing adds to it
    by_key: defaultdict[str, list[float]] = defaultdict(list)
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    admitted: Counter[str] = Counter()
    for arrival in sim.arrivals:
        if arrival.path != TIME_PATH:
            key = arrival.remote if sim.config.per_ip else arrival.api_key
            by_key[key].append(arrival.t)
            statuses[arrival.status] += 1
            codes[arrival.mc or "-"] += 1
            # Only injected faults answer 429 besides the limit, and the bench injects none.
            admitted[key] += arrival.status != 429
    follows = [t for times in by_key.values() for t in times]
    first = min(follows, default=None)
    window = sim.config.window
    return {
        "arrivals": len(follows),
        "statuses": dict(statuses),
        "codes": dict(codes),
        "violations": sim.violations,
        "accepted": sum(sim.accepted.values()),
        "duplicates": sum(n - 1 for n in sim.accepted.values() if n > 1),
        "max_in_window": max(
            (max_in_window(sorted(t), window) for t in by_key.values()), default=0
        ),
        "first_arrival": first,
        "last_answer": last_answer,
        "cpu": cpu,
        "admitted": dict(admitted),
        "first_connect": connects[0] if first is not None else None,
        "connects_before_first_arrival": sum(first is not None and t < first for t in connects),
        "connects": len(connects),
    }


def _record_connections(connects: list[float]) -> None:
    """Note when each connection is accepted: aiohttp's server hands every one to
    ``Server.connection_made``, which the simulator leaves as it is."""
    made = web.Server.connection_made

    def connection_made(self: web.Server, handler: Any, transport: Any) -> None:
        connects.append(time.monotonic())
        made(self, handler, transport)

    web.Server.connection_made = connection_made  # type: ignore[method-assign]


async def _serve(
    port: int, accounts: dict[str, str] | None, config: SimConfig, jitter: float = 0.0
) -> None:
    sim = Simulator(accounts, config)
    last_answer: list[float] = []
    connects: list[float] = []
    _record_connections(connects)
    rng = random.Random(config.seed)

    @web.middleware
    async def jittered(request: web.Request, handler: Any) -> web.StreamResponse:
        """Each answer ``jitter`` s later at most, drawn afresh: latency over a range."""
        response = await handler(request)
        if not request.path.startswith("/_sim/"):
            await asyncio.sleep(rng.uniform(0, jitter))
        return response

    if jitter:
        sim.app.middlewares.append(jittered)

    async def answered(request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith("/_sim/"):
            last_answer[:] = [time.monotonic()]

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(_stats(sim, last_answer[0] if last_answer else None, connects))

    async def arrivals(request: web.Request) -> web.Response:
        rows = [(a.t, a.api_key, a.status, a.remote) for a in sim.arrivals if a.path != TIME_PATH]
        return web.json_response(rows)

    sim.app.on_response_prepare.append(answered)
    sim.app.router.add_get(STATS_PATH, stats)
    sim.app.router.add_get(ARRIVALS_PATH, arrivals)
    url = await sim.start("127.0.0.1", port)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(sim.close())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--accounts", type=Path, help="JSON {api_key: secret}; checks signatures")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=10.0)
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this much more latency")
    parser.add_argument("--per-ip", action="store_true", help="the limit per source address")
    args = parser.parse_args(argv)
    accounts = json.loads(args.accounts.read_text()) if args.accounts else None
    config = SimConfig(latency=args.latency, rate_limit=args.rate_limit, per_ip=args.per_ip)
    fit_open_files(8192)  # a connection for every request of the widest client
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, accounts, config, args.jitter))


class SimProcess:
    """``with SimProcess(...) as sim:`` a fresh simulator process; ``sim.url``, ``sim.stats()``."""

    def __init__(
        self,
        accounts: Path | None,
        latency: float,
        rate_limit: float = 10.0,
        env: dict[str, str] | None = None,
        *options: str,
    ) -> None:
        """``options``: more of ``main``'s, e.g. ``--jitter 0.25 --per-ip``."""
        self.command = [sys.executable, "-m", "bench.simserver", "--latency", str(latency)]
        self.command += ["--rate-limit", str(rate_limit), *options]
        if accounts is not None:
            self.command += ["--accounts", str(accounts)]
        self.env = env
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimProcess:
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, env=self.env, cwd=REPO
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"simulator did not start: {self.url!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def stats(self) -> SimStats:
        return asyncio.run(self._fetch())

    def arrivals(self) -> list[tuple[float, str, int]]:
        """Every follow arrival: (monotonic time, api key, status answered)."""
        return [tuple(row) for row in asyncio.run(self._get(ARRIVALS_PATH))]

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return await r.json()

    async def _fetch(self) -> SimStats:
        data = await self._get(STATS_PATH)
        data["statuses"] = {int(k): v for k, v in data["statuses"].items()}
        return SimStats(**data)


if __name__ == "__main__":
    main()
