"""``follow-engine status --redis URL [JOBS.yaml]``: where every campaign's jobs are.

Per campaign, per account and per worker: jobs queued, in flight (taken by a worker: being
sent, or waiting there for their lane or a retry), ok and failed; the workers alive (a
heartbeat within ``DEAD_AFTER``) and the keys they hold; and the accounts whose jobs wait
because no live worker holds their credentials.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from engine.redis_store import DEAD_AFTER, PREFIX, Store


@dataclass
class _Campaign:
    id: str
    name: str
    #: account -> key hash
    keys: dict[str, str] = field(default_factory=dict)
    queued: Counter[str] = field(default_factory=Counter)
    taken: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    #: worker -> jobs it holds
    by_worker: Counter[str] = field(default_factory=Counter)
    #: worker -> jobs it recorded ok, failed
    ok_by_worker: Counter[str] = field(default_factory=Counter)
    failed_by_worker: Counter[str] = field(default_factory=Counter)


async def _campaign(store: Store, cid: str) -> _Campaign:
    base = f"{PREFIX}c:{cid}"

    async def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.hget(base, "name").hgetall(f"{base}:keys").hgetall(f"{base}:taken")
        pipe.hgetall(f"{base}:done")
        return list(await pipe.execute())

    name, keys, taken, done = await store.read(read)
    found = _Campaign(cid, name or cid, {account: kh for kh, account in keys.items()})
    lengths = await store.read(lambda r: _cards(r, [f"{base}:q:{kh}" for kh in keys]))
    for account, length in zip(keys.values(), lengths, strict=True):
        found.queued[account] += length
    # Only the jobs taken, of all the campaign's bodies: to name their accounts.
    bodies = await store.read(lambda r: r.hmget(f"{base}:jobs", list(taken))) if taken else []
    for worker, body in zip(taken.values(), bodies, strict=True):
        found.taken[json.loads(body)["a"]] += 1
        found.by_worker[worker] += 1
    for line in done.values():
        outcome = json.loads(line)
        ok = outcome["status"] == "ok"
        (found.ok if ok else found.failed)[outcome["account"]] += 1
        (found.ok_by_worker if ok else found.failed_by_worker)[outcome.get("worker", "-")] += 1
    return found


def _folded(header: str) -> Column:
    """A column whose long values (a job file's path) wrap rather than get cut."""
    return Column(header, overflow="fold")


async def _cards(r: Any, queues: list[str]) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        pipe.zcard(queue)
    return list(await pipe.execute()) if queues else []


async def _workers(store: Store) -> tuple[int, list[tuple[str, float, dict[str, str]]]]:
    """Redis's time (ms), and each worker: its id, its last heartbeat, what it told."""
    now = await store.read(lambda r: r.time())
    beats = await store.read(lambda r: r.zrange(f"{PREFIX}workers", 0, -1, withscores=True))

    async def infos(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for wid, _ in beats:
            pipe.hgetall(f"{PREFIX}worker:{wid}")
        return list(await pipe.execute())

    told = await store.read(infos) if beats else []
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    return now_ms, [(wid, beat, info) for (wid, beat), info in zip(beats, told, strict=True)]


async def show_status(store: Store, only: str | None, console: Console) -> None:
    """Print the state of every campaign (of the campaign ``only`` when given)."""
    cids = await store.read(lambda r: r.zrange(f"{PREFIX}campaigns", 0, -1))
    if only is not None:
        cids = [cid for cid in cids if cid == only]
    campaigns = [await _campaign(store, cid) for cid in cids]
    now, workers = await _workers(store)
    live = {wid: info for wid, beat, info in workers if now - beat <= DEAD_AFTER * 1000}
    served = Counter(key for info in live.values() for key in info.get("keys", "").split())

    summary = Table(
        _folded("campaign"),
        "queued",
        "in flight",
        "ok",
        "failed",
        title="campaigns",
        title_justify="left",
    )
    accounts = Table(
        _folded("campaign"),
        "account",
        "queued",
        "in flight",
        "ok",
        "failed",
        "live workers with its key",
        title="accounts",
        title_justify="left",
    )
    stranded = []
    for c in campaigns:
        totals = [sum(n.values()) for n in (c.queued, c.taken, c.ok, c.failed)]
        summary.add_row(c.name, *map(str, totals))
        for account, kh in sorted(c.keys.items()):
            counts = (c.queued[account], c.taken[account], c.ok[account], c.failed[account])
            accounts.add_row(c.name, account, *map(str, counts), str(served[kh]))
            if not served[kh] and (c.queued[account] or c.taken[account]):
                stranded.append(f"{c.name}: {account} ({c.queued[account]} queued)")
    holding, oks, fails = Counter[str](), Counter[str](), Counter[str]()
    for c in campaigns:
        holding.update(c.by_worker)
        oks.update(c.ok_by_worker)
        fails.update(c.failed_by_worker)
    table = Table(
        _folded("worker"),
        "source IP",
        "last heartbeat",
        "state",
        "in flight",
        "ok",
        "failed",
        "API keys",
        title="workers",
        title_justify="left",
    )
    for wid, beat, info in workers:
        state = "live" if wid in live else "no heartbeat: to be declared dead"
        table.add_row(wid, info.get("ip") or "-", f"{(now - beat) / 1000:.1f} s ago", state,
                      str(holding[wid]), str(oks[wid]), str(fails[wid]),
                      str(len(info.get("keys", "").split())))  # fmt: skip
    for wid in sorted((oks | fails).keys() - {w for w, _, _ in workers}):
        table.add_row(wid, "-", "-", "gone", "0", str(oks[wid]), str(fails[wid]), "-")
    if not campaigns:
        console.print("no campaign submitted" + (" under that name" if only else ""))
    for part in (summary, accounts, table):
        if part.row_count:
            console.print(part)
    if not live:
        console.print("no live worker")
    if stranded:
        console.print("accounts no live worker can serve (their jobs wait):", soft_wrap=True)
        for line in stranded:
            console.print(f"  {line}", markup=False, soft_wrap=True)
