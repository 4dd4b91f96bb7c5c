"""Redis for the distributed mode: the connection, the key names, each step as one call.

Keys, under the prefix ``fe:`` (``{c}`` a campaign's id, ``{k}`` an API key's hash, ``{w}`` a
worker's id; no secret and no API key is ever written, only their hashes):

- ``campaigns`` zset c -> first submitted (ms); ``c:{c}`` hash: name, spec (settings and
  base URL as JSON), open (jobs queued or taken), ok, failed
- ``c:{c}:jobs`` hash job -> job (account, key hash, leader id, body); ``c:{c}:keys`` hash
  k -> account
- ``c:{c}:q:{k}`` zset job -> due (ms): the key's queue; ``c:{c}:taken`` hash job -> w;
  ``c:{c}:flight`` hash job -> w, an attempt may be on the wire; ``c:{c}:progress`` hash
  job -> attempts so far, for the next taker
- ``c:{c}:done`` hash job -> its results line; ``c:{c}:log`` stream of (job, line), in order
- ``workers`` zset w -> last heartbeat (ms); ``worker:{w}`` hash of what it tells ``status``;
  ``w:{w}:held`` set "c:job"; ``dead`` zset w -> when declared dead
- ``lim:{name}`` hash: one limit's lanes (``engine.redis_lanes``); ``fastest:{c}`` the
  fastest answer any worker has seen in the campaign (ms)

Every call either completes or raises ``RedisUnavailable``; ``persist`` waits for Redis to
come back instead, for steps that must happen before anything more is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import redis_lanes, redis_lua
from engine.campaign import FollowJob
from engine.client import encode_body
from engine.results import JobResult
from engine.sources import JobProgress

T = TypeVar("T")
#: What a script takes: each value goes to Lua as a string.
Arg = str | int | float

PREFIX = "fe:"
#: Seconds between a worker's heartbeats, and without one before it counts as dead.
HEARTBEAT = 0.5
DEAD_AFTER = 3.0
#: Seconds between two tries while Redis is unreachable.
RETRY_INTERVAL = 0.25
#: Jobs per ``SUBMIT`` call: a script blocks Redis while it runs.
SUBMIT_CHUNK = 1000
#: Redis answers meaning "not now": wait and try again, as when it is unreachable.
_NOT_NOW = ("LOADING", "MISCONF", "READONLY", "MASTERDOWN", "TRYAGAIN")
#: Connections to Redis at most per process; more steps at once wait for one, this many
#: seconds at most (then Redis counts as unreachable for the step, tried again).
MAX_CONNECTIONS, POOL_TIMEOUT = 32, 10.0
#: The oldest Redis with what this needs (ZRANGE ... WITHSCORES in scripts, streams, HSET n).
MIN_VERSION = (6, 2)


class RedisUnavailable(Exception):
    """Redis cannot be reached or refuses: one line, no password, no traceback."""


def describe_url(url: str) -> str:
    """``url`` fit to print: scheme, host, port and database, never a password."""
    try:
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
    except ValueError:
        return "<unreadable URL>"
    return f"{parts.scheme}://{host}{parts.path if parts.hostname else ''}"


def key_hash(api_key: str) -> str:
    """An API key as Redis knows it."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def campaign_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_NOT_NOW)


async def _whole(call: Awaitable[T]) -> T:
    """``call``, left to finish when its caller is cancelled. redis-py gives a connection back
    to its pool in a ``finally`` that awaits: a cancellation landing there (a stop cancels
    many steps at once) lost the connection for good, and once the pool had none left the
    worker waited for one forever."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieved)
    return await asyncio.shield(task)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Nobody may be waiting for a step left to finish: its error is not news."""
    if not task.cancelled():
        task.exception()


async def connect(url: str, name: str = "follow-engine") -> Store:
    """A checked connection to the Redis at ``url``; ``RedisUnavailable`` when it cannot be
    used (unreachable, refusing, too old)."""
    label = describe_url(url)
    try:
        # Blocking: a burst of steps waits for a connection rather than failing past the
        # pool's size, as redis-py's default pool does.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=5,
            socket_connect_timeout=3,
            client_name=name,
        )
    except ValueError as exc:
        raise RedisUnavailable(f"--redis {label}: not a Redis URL: {exc}") from None
    client = Redis(connection_pool=pool)
    try:
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        await client.aclose(close_connection_pool=True)
        raise RedisUnavailable(f"Redis at {label} unreachable or refusing: {exc}") from None
    version = tuple(int(n) for n in str(info.get("redis_version", "0")).split(".")[:2])
    if version < MIN_VERSION:
        await client.aclose(close_connection_pool=True)
        raise RedisUnavailable(f"Redis at {label} is {info.get('redis_version')}; 6.2 or later")
    return Store(client, label)


class Store:
    """One connection pool to Redis and every step of the distributed mode."""

    def __init__(self, client: Redis, label: str) -> None:
        self.client = client
        self.label = label
        #: Milliseconds to pass as Redis's time instead of TIME: tests drive the clock.
        self.clock: Callable[[], int] | None = None
        #: Commands sent so far (a pipeline counts each), for the benchmarks.
        self.round_trips = 0
        self.up = True
        self.on_change: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
        self._scripts = {
            name: client.register_script(getattr(module, name))
            for module in (redis_lua, redis_lanes)
            for name in dir(module)
            if name.isupper() and not name.startswith("_") and name != "NOW"
        }
        self._background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)

    def now_arg(self) -> str:
        return "" if self.clock is None else str(self.clock())

    async def run(self, script: str, *args: Arg) -> Any:
        """One script, once. Raises ``RedisUnavailable``."""
        self.round_trips += 1
        try:
            result = await _whole(self._scripts[script](args=[PREFIX, self.now_arg(), *args]))
        except (RedisError, OSError) as exc:
            if not _unavailable(exc):
                raise
            self._went_down(exc)
            raise RedisUnavailable(f"Redis at {self.label}: {exc}") from None
        self._came_back()
        return result

    async def persist(self, script: str, *args: Arg) -> Any:
        """One script, tried until Redis takes it."""
        while True:
            try:
                return await self.run(script, *args)
            except RedisUnavailable:
                await asyncio.sleep(RETRY_INTERVAL)

    def later(self, script: str, *args: Arg) -> None:
        """``persist`` in the background, for a caller that cannot wait (a send hook)."""
        task = asyncio.get_running_loop().create_task(self.persist(script, *args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every background step; drop those still waiting."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
        for task in list(self._background):
            task.cancel()

    def _went_down(self, exc: Exception) -> None:
        if self.up:
            self.up = False
            self.on_change(f"lost Redis at {self.label} ({exc}); waiting for it, sending nothing")

    def _came_back(self) -> None:
        if not self.up:
            self.up = True
            self.on_change(f"Redis at {self.label} is back")

    async def read(self, work: Callable[[Redis], Any]) -> Any:
        """Plain reads (a pipeline or one command) tried until Redis answers."""
        while True:
            self.round_trips += 1
            try:
                result = await _whole(work(self.client))
            except (RedisError, OSError) as exc:
                if not _unavailable(exc):
                    raise
                self._went_down(exc)
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            self._came_back()
            return result

    # -- campaigns --------------------------------------------------------------------------

    async def submit(
        self, cid: str, name: str, spec: str, rows: Sequence[tuple[str, str, str, str, int]]
    ) -> tuple[list[int], str]:
        """Queue ``rows`` (job, key hash, account, job json, due ms). Returns the jobs queued,
        already ok, already queued or taken, failed and queued again; and the id of the last
        outcome logged before the last of them was queued."""
        totals, tail = [0, 0, 0, 0], "0-0"
        for start in range(0, max(len(rows), 1), SUBMIT_CHUNK):
            flat = [v for row in rows[start : start + SUBMIT_CHUNK] for v in row]
            *counts, tail = await self.run("SUBMIT", cid, name, spec, *flat)
            totals = [a + int(b) for a, b in zip(totals, counts, strict=True)]
        return totals, tail

    async def outcomes(self, cid: str, after: str, block_ms: int) -> list[tuple[str, str, str]]:
        """Outcomes recorded after ``after``: (stream id, job, line), waiting up to ``block_ms``."""
        got = await self.read(
            lambda r: r.xread({f"{PREFIX}c:{cid}:log": after}, count=1000, block=block_ms)
        )
        return [(sid, f["j"], f["l"]) for _, entries in got for sid, f in entries]

    async def done_lines(self, cid: str, jobs: Sequence[str]) -> dict[str, str]:
        if not jobs:
            return {}
        lines = await self.read(lambda r: r.hmget(f"{PREFIX}c:{cid}:done", list(jobs)))
        return {job: line for job, line in zip(jobs, lines, strict=True) if line is not None}


def encode_job(job: FollowJob, kh: str) -> str:
    """A job as Redis keeps it: no secret, the body in the digits the user wrote."""
    return json.dumps(
        {
            "a": job.account,
            "k": kh,
            "l": job.leader_id,
            "b": encode_body(job.params),
            "n": job.line,
        },
        separators=(",", ":"),
    )


def decode_job(job_id: str, text: str) -> tuple[FollowJob, str]:
    """The job, and its API key's hash."""
    data = json.loads(text)
    params = json.loads(data["b"], parse_float=Decimal)
    return FollowJob(job_id, data["a"], data["l"], params, line=data.get("n", 0)), data["k"]


def encode_progress(progress: JobProgress | JobResult) -> str:
    """What the next taker of a job needs to go on from where ``progress`` is."""
    data = {
        "a": progress.attempts,
        "s": progress.sent,
        "am": progress.ambiguous,
        "k": getattr(progress, "skews", 0),
        "t": list(progress.sent_at),
    }
    return json.dumps(data, separators=(",", ":"))


def decode_progress(job: FollowJob, text: str) -> JobProgress:
    """The progress a job brings from earlier takers ('' for a fresh job)."""
    data = json.loads(text) if text else {}
    sent_at = data.get("t")
    return JobProgress(
        job,
        attempts=int(data.get("a", 0)),
        sent=bool(data.get("s", False)),
        ambiguous=bool(data.get("am", False)),
        skews=int(data.get("k", 0)),
        sent_at=list(sent_at) if isinstance(sent_at, list) else [],
    )
