"""The limit held across every worker: ``KeyLimiter``'s lanes, kept in Redis.

A limit of ``rate`` per window has ``floor(rate * window)`` lanes. A lane admits one request
(``acquire``, the ``LANE_TAKE`` script), which holds it until the request left (``sent``: the
lane then admits nothing for one period, counted by Redis's clock from that moment) or never
will (``release``). Whichever worker asks, a key has at most ``rate`` requests left in any
window, as in ``KeyLimiter``: counting from admissions alone let 13-20 requests of a key into
one window when 200 fell due together, since a burst's requests leave up to tens of ms after
admission and the next burst's at once.

The pool calls ``sent`` from the request body's write hook, synchronously: the lane's new
time goes to Redis in the background, the lane held until it lands. A lane held by a worker
declared dead is free one period after the declaration: its request left before then.
``pause`` and ``widen`` act for every worker, the margin widened once per 429 whoever met it.

An answer does not free a lane sooner here (that would cost a round trip per request), but a
request that opened its connection and was answered later than the fastest answer of any
worker lengthens its lane's wait by the excess (``LANE_LATE``), as ``KeyLimiter.answered``
does: an exchange accepting a burst of new connections may read their requests late, and
the next burst, on those connections, at once. A worker whose whole first burst was read
late has no faster answer of its own to tell, so each worker's fastest goes to Redis
(``FASTEST``, when it improves: a few times a run) and the excess is taken there. A request
on a connection in use is weighed against the requests its worker sent with it, as in one
process (``engine.lateness``), once they have been answered too; a hold goes the same way.
"""

from __future__ import annotations

import asyncio
import math

from engine.lateness import Fastest
from engine.limiter import DEFAULT_MARGIN, MAX_MARGIN, lane_span
from engine.profiles import ACCOUNT_ENDPOINTS_RATE
from engine.redis_store import Store, key_hash

#: Seconds after an answer on a connection in use before it is weighed against its
#: neighbours' (``Fastest.reading_late``): those that left with it have been answered by then.
NEIGHBOURS_WAIT = 0.2
#: Milliseconds before asking again when every lane is held (admitted, not yet left).
HELD_POLL_MS = 10


class RedisLimiter:
    """At most ``rate`` requests in any ``window`` seconds for one limit, over all workers."""

    def __init__(
        self,
        store: Store,
        name: str,
        worker: str,
        rate: float,
        margin: float,
        window: float = 1.0,
        fastest: Fastest | None = None,
        exchange: str = "",
    ) -> None:
        """``exchange``: what shares the fastest answer across workers (a campaign's id)."""
        self.store = store
        self.name = name
        self.worker = worker
        self.exchange = exchange
        self.lanes = max(1, math.floor(rate * window))
        #: The window a lane's period stretches, in ms.
        self.base_ms = math.ceil(lane_span(rate, window) * 1000)
        self.margin = margin
        self.period = self.base_ms * (1 + margin) / 1000
        self._fastest = Fastest() if fastest is None else fastest
        self._admissions = 0
        #: Tokens admitted, not yet left nor released.
        self._held: set[int] = set()
        #: Tokens whose request left: loop time it did, and whether it opened its connection.
        self._left: dict[int, tuple[float, bool]] = {}

    async def acquire(self) -> int:
        """A token for the lane taken: ``lane + lanes * admission``, so that news of an
        earlier request of the lane is told apart."""
        while True:
            lane, wait_ms, margin = await self.store.persist(
                "LANE_TAKE", self.name, self.lanes, self.base_ms, self.margin, self.worker
            )
            self._set_margin(int(margin) / 1_000_000)
            if lane >= 0:
                token = int(lane) + self.lanes * self._admissions
                self._admissions += 1
                self._held.add(token)
                return token
            # -1: every lane is held by a request about to leave; its time comes in a moment.
            await asyncio.sleep((HELD_POLL_MS if wait_ms < 0 else max(int(wait_ms), 1)) / 1000)

    def sent(self, lane: int, opened: bool = False) -> None:
        self._held.discard(lane)
        self._left[lane] = (asyncio.get_running_loop().time(), opened)
        lane %= self.lanes
        self.store.later("LANE_SENT", self.name, lane, self.worker, self.base_ms, self.margin)

    def answered(self, lane: int) -> None:
        """How long a request that opened its connection took goes to Redis, and this
        worker's fastest answer when it improves; an answer frees no lane sooner
        (``KeyLimiter.answered``): that is not shared. A request on a connection in use is
        weighed against its neighbours once they have been answered too (``_weigh``)."""
        if (left := self._left.pop(lane, None)) is None:
            return
        sent_at, opened = left
        loop = asyncio.get_running_loop()
        took = loop.time() - sent_at
        fastest = self._fastest.seconds
        if self._fastest.took(sent_at, took) < fastest:
            self.store.later("FASTEST", self.exchange, math.floor(took * 1000))
        if opened:
            self._late(lane, took)
        else:
            loop.call_later(NEIGHBOURS_WAIT, self._weigh, lane, sent_at)

    def _weigh(self, lane: int, sent_at: float) -> None:
        """As ``KeyLimiter`` does at a lane's next admission: the lateness of the requests
        that left about when this one did, beyond half the margin, lengthens its lane's wait,
        if there is still time before the lane could admit again."""
        late = self._fastest.hold(sent_at, self.period - self.base_ms / 1000)
        time_left = sent_at + self.period - asyncio.get_running_loop().time()
        if late > 0 and time_left > NEIGHBOURS_WAIT:
            self._late(lane, self._fastest.seconds + late)

    def _late(self, lane: int, took: float) -> None:
        """The lane's request may have arrived as much later than the fastest answer any
        worker has seen as ``took`` is longer: Redis holds the lane by that (``LANE_LATE``)."""
        took_ms = math.ceil(took * 1000)
        self.store.later(
            "LANE_LATE", self.name, lane % self.lanes, self.worker, took_ms, self.exchange
        )

    def release(self, lane: int) -> None:
        self._left.pop(lane, None)
        if lane in self._held:
            self._held.discard(lane)
            self.store.later("LANE_RELEASE", self.name, lane % self.lanes, self.worker)

    def pause(self, seconds: float) -> None:
        self.store.later("LANE_PAUSE", self.name, math.ceil(seconds * 1000))

    def widen(self) -> float:
        seen = self.margin
        self._set_margin(min(MAX_MARGIN, max(2 * seen, seen + DEFAULT_MARGIN)))
        self.store.later("LANE_WIDEN", self.name, repr(seen), repr(self.margin), self.base_ms)
        return self.margin

    def _set_margin(self, margin: float) -> None:
        if margin > self.margin:
            self.margin = margin
            self.period = self.base_ms * (1 + margin) / 1000


class RedisLimits:
    """Limits shared by every worker: one per API key, or under a per-IP rule one per egress
    IP (a worker's ``--source-ip``; workers that name none are taken to share one)."""

    def __init__(
        self,
        store: Store,
        worker: str,
        rate: float,
        margin: float = DEFAULT_MARGIN,
        *,
        per_ip: bool = False,
        source_ip: str | None = None,
        exchange: str = "",
    ) -> None:
        """``exchange``: what shares the fastest answer across workers (a campaign's id)."""
        self.store, self.worker, self.rate, self.margin = store, worker, rate, margin
        self.per_ip, self.source_ip, self.exchange = per_ip, source_ip, exchange
        #: The fastest answer this worker has seen, from any of its limits (one exchange).
        self.fastest = Fastest()

    def key_of(self, api_key: str, account: str, *, read: bool = False) -> tuple[str, str]:
        ip = self.source_ip or "default"
        if self.per_ip:
            return f"ip:{ip}", f"egress IP {self.source_ip or '(not named)'}"
        if read:
            return f"reads:{ip}", f"reads from egress IP {self.source_ip or '(not named)'}"
        return f"key:{key_hash(api_key)}", account

    def limiter(self, name: str) -> RedisLimiter:
        rate = ACCOUNT_ENDPOINTS_RATE if name.startswith("reads:") else self.rate
        return RedisLimiter(
            self.store,
            name,
            self.worker,
            rate,
            self.margin,
            fastest=self.fastest,
            exchange=self.exchange,
        )
