"""``follow-engine worker``: takes jobs from Redis, sends them, records their outcomes there.

A worker holds the credentials of some accounts (its own job files, read from its own
environment) and serves every campaign with jobs of those accounts: one ``WorkerPool`` per
campaign, fed by a ``RedisSource``, limited by ``RedisLimits``, recording through a
``RedisCollector``. It beats every ``HEARTBEAT`` seconds; a worker without a heartbeat for
``DEAD_AFTER`` seconds is dead, and any live worker hands what it held back to the queues
(``REAP``). A slow request on a live worker is never taken from it: only heartbeats count.
A worker reaps only once its own heartbeats have gone through for ``DEAD_AFTER``, so after
Redis comes back (restarted, or reachable again) every live worker has had time to beat.
A worker found declared dead (it was cut off) drops every job it held and starts afresh:
Redis refuses it each step on those jobs, so none is sent or recorded by two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

from engine.campaign import Account, Settings
from engine.clock import iso_utc, wall_clock
from engine.exits import EXIT_FAILED, EXIT_INTERRUPTED
from engine.openfiles import fit_open_files
from engine.pool import GRACE_SECONDS, WorkerPool
from engine.reconcile import Reader, settle_taken
from engine.redis_client import FlightClient
from engine.redis_collector import Outbox, RedisCollector
from engine.redis_limits import RedisLimits
from engine.redis_source import RedisSource
from engine.redis_store import DEAD_AFTER, HEARTBEAT, PREFIX, Arg, RedisUnavailable, Store
from engine.signals import StopSignals
from engine.submit import decode_spec
from engine.urls import InsecureTransportError, check_transport

#: Seconds between looks for campaigns with work for this worker.
DISCOVER_INTERVAL = 0.5
#: Seconds a stopping worker waits for Redis to take its last outcomes.
FLUSH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    source_ip: str | None = None
    #: Requests in flight at most, over every campaign served (each campaign also keeps to its
    #: own ``settings.concurrency``); None: the default setting's, 2048.
    concurrency: int | None = None
    insecure: bool = False
    dead_after: float = DEAD_AFTER


class Worker:
    def __init__(
        self,
        store: Store,
        credentials: Mapping[str, Account],
        options: WorkerOptions,
        signals: StopSignals,
        stream: TextIO | None = None,
    ) -> None:
        """``credentials``: API key hash -> the account of that key this worker holds."""
        self.store, self.credentials, self.options = store, credentials, options
        self.signals = signals
        self.stream = stream or sys.stderr
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.outbox = Outbox(store, self.id)
        self.stopping = False
        self._pools: dict[str, WorkerPool] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        #: Requests in flight over every campaign: each holds a connection, an open file.
        wanted = options.concurrency or Settings().concurrency
        fits, self._fewer = fit_open_files(wanted)
        self._slots = asyncio.Semaphore(fits)
        #: Campaigns this worker will not serve, and why (said once).
        self._refused: dict[str, str] = {}
        self._registered = asyncio.Event()
        self._beating_since: float | None = None
        store.on_change = self.say

    def say(self, *words: str) -> None:
        print(iso_utc(wall_clock()), *words, file=self.stream, flush=True)

    async def run(self) -> int:
        """Serve until stopped; the exit code."""
        self.signals.attach(self)
        await self._register()
        ip = self.options.source_ip or "the default address"
        self.say(f"worker {self.id}: {len(self.credentials)} API keys, sending from {ip}")
        if self._fewer is not None:
            self.say(self._fewer)
        tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._discover())]
        try:
            await self.signals.stopped().wait()
            self.stop()
            await self._runs_ended()
            unrecorded = await self.outbox.flush(FLUSH_TIMEOUT)
            await self.store.settled(FLUSH_TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.signals.attach(None)
        if unrecorded:
            self.say(f"error: Redis did not take {len(unrecorded)} outcomes; they follow:")
            for result in unrecorded:
                print(result.to_json(), file=self.stream, flush=True)
            return EXIT_FAILED
        with contextlib.suppress(RedisUnavailable):
            back, wire = await self.store.run("LEAVE", self.id)
            if back:
                self.say(f"gave back {back} jobs still held ({wire} may have been sent)")
        self.say(f"worker {self.id}: stopped after {self.store.round_trips} Redis round trips")
        return EXIT_INTERRUPTED

    async def _runs_ended(self) -> None:
        """Wait for every campaign's pool to wind down (its grace, and some); a pool still not
        done then is cut short, so that a stop always ends."""
        runs = list(self._runs.values())
        if runs:
            _, late = await asyncio.wait(runs, timeout=GRACE_SECONDS + FLUSH_TIMEOUT)
            for task in late:
                self.say("a campaign did not wind down in time: cut short")
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    def stop(self) -> None:
        self.stopping = True
        for pool in self._pools.values():
            pool.stop()

    def abort(self) -> None:
        self.stopping = True
        for pool in self._pools.values():
            pool.abort()

    async def _register(self) -> None:
        info: dict[str, Arg] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ip": self.options.source_ip or "",
            "keys": " ".join(sorted(self.credentials)),
            "started": iso_utc(wall_clock()),
        }
        await self.store.persist("BEAT", self.id, *[v for kv in info.items() for v in kv])
        self._registered.set()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                beat = await self.store.run("BEAT", self.id)
            except RedisUnavailable:
                self._beating_since = None
            else:
                if beat == -1:
                    await self._fenced()
                elif self._beating_since is None:
                    self._beating_since = loop.time()
                elif loop.time() - self._beating_since >= self.options.dead_after:
                    with contextlib.suppress(RedisUnavailable):
                        await self._reap()
            await asyncio.sleep(HEARTBEAT)

    async def _reap(self) -> None:
        found = await self.store.run("REAP", math.ceil(self.options.dead_after * 1000))
        for i in range(0, len(found), 3):
            wid, jobs, wire = found[i : i + 3]
            self.say(
                f"worker {wid}: no heartbeat for {self.options.dead_after:g} s, declared dead; "
                f"{jobs} of its jobs back in the queues ({wire} may have been sent: ambiguous)"
            )

    async def _fenced(self) -> None:
        """Declared dead while cut off: what this worker held went to others. Drop it all."""
        self.say("this worker was declared dead while cut off from Redis: dropping its jobs")
        self._registered.clear()
        self._beating_since = None
        for pool in self._pools.values():
            pool.abort()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)
        if not self.stopping:
            await self._register()

    async def _discover(self) -> None:
        while not self.stopping:
            await self._registered.wait()
            for cid, name, spec, keys in await self._campaigns_with_work():
                if cid not in self._runs and cid not in self._refused and not self.stopping:
                    task = asyncio.create_task(self._serve(cid, name, spec, keys))
                    self._runs[cid] = task
                    task.add_done_callback(partial(self._ended, cid))
            await asyncio.sleep(DISCOVER_INTERVAL)

    def _ended(self, cid: str, task: asyncio.Task[None]) -> None:
        self._runs.pop(cid, None)

    async def _campaigns_with_work(self) -> list[tuple[str, str, str, list[str]]]:
        """Campaigns with jobs queued for keys this worker holds: (id, name, spec, keys)."""
        cids = await self.store.read(lambda r: r.zrange(f"{PREFIX}campaigns", 0, -1))

        async def heads(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for cid in cids:
                pipe.hmget(f"{PREFIX}c:{cid}", ["name", "spec", "open"])
                pipe.hkeys(f"{PREFIX}c:{cid}:keys")
            return list(await pipe.execute())

        found = []
        got = await self.store.read(heads) if cids else []
        for cid, (name, spec, open_), keys in zip(cids, got[::2], got[1::2], strict=True):
            mine = [k for k in keys if k in self.credentials]
            if mine and int(open_ or 0) > 0:
                found.append((cid, name, spec, mine))

        async def queued(r: Any) -> list[int]:
            pipe = r.pipeline(transaction=False)
            for cid, _, _, mine in found:
                for key in mine:
                    pipe.zcard(f"{PREFIX}c:{cid}:q:{key}")
            return list(await pipe.execute())

        counts = iter(await self.store.read(queued) if found else [])
        return [c for c in found if sum(next(counts) for _ in c[3]) > 0]

    async def _serve(self, cid: str, name: str, spec: str, keys: list[str]) -> None:
        accounts: dict[str, Account] = {}
        campaign = decode_spec(name, spec, accounts)
        try:
            check_transport(campaign.base_url, self.options.insecure)
        except InsecureTransportError as exc:
            self._refused[cid] = str(exc)
            self.say(f"campaign {name}: not served: {exc}")
            return
        settings = campaign.settings
        limits = RedisLimits(
            self.store,
            self.id,
            settings.rate_limit,
            settings.margin,
            per_ip=settings.api.per_ip,
            source_ip=self.options.source_ip,
            exchange=cid,
        )
        queues: dict[str, list[str]] = {}
        for key in keys:
            mine = self.credentials[key]
            queues.setdefault(limits.key_of(mine.api_key, mine.name)[0], []).append(key)
        lanes = {name: limits.limiter(name).lanes for name in queues}
        source = RedisSource(self.store, cid, self.id, queues, lanes, self.credentials, accounts)
        client = FlightClient(
            campaign.base_url,
            settings.api,
            timeout=settings.timeout,
            recv_window_ms=settings.recv_window_ms,
            headers=settings.headers,
            local_addr=self.options.source_ip,
            source=source,
        )
        collector = RedisCollector(self.outbox, cid, lambda: self.stopping)
        if settings.api.readable:
            reader = Reader(client, limits, settings, halted=lambda: self.signals.requested)
            warn = partial(self.say, "warning:")
            source.settle = partial(settle_taken, reader, accounts, collector.finish, warn)
        pool = WorkerPool(
            campaign,
            client,
            collector,
            limits=limits,
            halted=lambda: self.signals.requested,
            shared_slots=self._slots,
        )
        self._pools[cid] = pool
        try:
            stats = await pool.serve(source)
        finally:
            self._pools.pop(cid, None)
            back = await source.stop()
            if back and not source.fenced:
                pairs = [v for job in back for v in (job, "")]
                await self.store.persist("GIVE_BACK", cid, self.id, *pairs)
            await client.close()
        if stats.internal_error or stats.stopped_by:
            self._refused[cid] = stats.internal_error or stats.stopped_by or ""
            self.say(f"campaign {name}: stopped serving it: {self._refused[cid]}")
        elif stats.finished:
            self.say(f"campaign {name}: {stats.ok} ok, {stats.failed} failed here")
