"""Per-key rate limiting that holds in ANY sliding window, built on aiolimiter.

``AsyncLimiter(10, 1)`` is a leaky bucket: a full burst of 10, then a drip of
10/s, so 19 requests can land inside one second. A ``KeyLimiter`` instead runs
``n`` lanes, each an ``AsyncLimiter(1, period)`` with ``period`` a little over the
window: a lane admits at most one request per window, so ``n`` lanes admit at
most ``n`` in any window, yet a key may still send its ``n`` at once and then
``n`` again one period later. That is as fast as a sliding-window limit allows.

The exchange counts arrivals, not admissions, and a request can leave well after
it was admitted (a burst's new connections, a busy event loop, a lost SYN). With
``track_sends`` the caller reports when each request left (``sent``) or that it is
done with it (``release``); until then its lane admits nothing, and after ``sent``
nothing for one period. Lanes are made as first used, so a limit lifted to
100,000/s costs nothing up front.

The margin starts at ``settings.margin`` and ``widen`` doubles it when the exchange
still answered 429 (a jittery link bunches arrivals by more than the margin), so a run
converges to zero 429s instead of repeating them. ``Limiter`` is what the worker pool
needs of any limiter: this one in process, or one shared by many workers (Redis).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Protocol

from aiolimiter import AsyncLimiter

#: Lanes wait this fraction of the window longer than the rule needs, so network
#: jitter cannot make two of a lane's requests arrive inside one window.
DEFAULT_MARGIN = 0.05
#: ``widen`` never goes past this: a lane's period at most doubles.
MAX_MARGIN = 1.0


class Limiter(Protocol):
    """One limit's gate: wait for a slot (``acquire``), say the request left (``sent``) or
    never will (``release``), hold back after a 429 (``pause``), give jitter more room
    (``widen``)."""

    #: Seconds between two requests of one slot: the window, margin included.
    period: float
    margin: float

    async def acquire(self) -> int: ...

    def sent(self, lane: int) -> None: ...

    def release(self, lane: int) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def widen(self) -> float: ...


@dataclass(slots=True, eq=False)
class _Lane:
    bucket: AsyncLimiter
    #: No admission before this loop time: its last request left, plus one period.
    free_at: float = 0.0
    #: Set while the lane's last admitted request has neither left nor been released.
    held: asyncio.Event | None = None


class KeyLimiter:
    """At most ``rate`` requests in any ``window`` seconds for one key."""

    def __init__(
        self,
        rate: float,
        window: float = 1.0,
        margin: float = DEFAULT_MARGIN,
        *,
        track_sends: bool = False,
    ) -> None:
        if rate <= 0 or window <= 0 or margin < 0:
            raise ValueError("rate and window must be positive, margin not negative")
        self.rate = rate
        self.window = window
        self.track_sends = track_sends
        self._count = max(1, math.floor(rate * window))
        self.margin = margin
        #: Seconds between two requests of one lane.
        self.period = self._period()
        self._lanes: list[_Lane] = []
        self._next_lane = 0
        self._paused_until = 0.0

    def _period(self) -> float:
        return max(self.window, self._count / self.rate) * (1 + self.margin)

    async def acquire(self) -> int:
        """Wait until one more request may be sent now; send it straight after. Returns its
        lane, for ``sent`` and ``release`` when tracking sends."""
        loop = asyncio.get_running_loop()
        index = self._next_lane
        self._next_lane = (index + 1) % self._count
        if index == len(self._lanes):
            self._lanes.append(_Lane(AsyncLimiter(1, self.period)))
        lane = self._lanes[index]
        while True:
            if (wait := self._paused_until - loop.time()) > 0:
                await asyncio.sleep(wait)
            await lane.bucket.acquire()
            while lane.held is not None or lane.free_at > loop.time():
                if lane.held is not None:
                    await lane.held.wait()
                else:
                    await asyncio.sleep(lane.free_at - loop.time())
            if self._paused_until <= loop.time():
                if self.track_sends:
                    lane.held = asyncio.Event()
                return index
            # Paused while queued: the lane's slot is forfeit, take a fresh one after the pause.

    def sent(self, lane: int) -> None:
        """The request admitted on ``lane`` left just now: the lane waits one period from here."""
        self._lanes[lane].free_at = asyncio.get_running_loop().time() + self.period
        self.release(lane)

    def release(self, lane: int) -> None:
        """Done with the request admitted on ``lane`` (sent or not): stop holding the lane."""
        held, self._lanes[lane].held = self._lanes[lane].held, None
        if held is not None:
            held.set()

    def pause(self, seconds: float) -> None:
        """Hold every lane back for ``seconds`` (the exchange said we went too fast)."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)

    def widen(self) -> float:
        """Double the margin (at least +5 points, at most ``MAX_MARGIN``), from now on and for
        the requests already sent; the new margin."""
        old = self.period
        self.margin = min(MAX_MARGIN, max(2 * self.margin, self.margin + DEFAULT_MARGIN))
        self.period = self._period()
        longer = self.period - old
        for lane in self._lanes:
            lane.bucket = AsyncLimiter(1, self.period)
            if lane.free_at:
                lane.free_at += longer
        return self.margin


class Limits(Protocol):
    """Which limit a request counts against, and that limit's gate."""

    def key_of(self, api_key: str, account: str) -> tuple[str, str]:
        """The limit's name and its label for people."""
        ...

    def limiter(self, name: str) -> Limiter: ...


class LocalLimits:
    """This process's limits: one ``KeyLimiter`` per API key, or one for all under a
    per-IP rule (this process is the IP's only sender)."""

    def __init__(self, rate: float, margin: float = DEFAULT_MARGIN, *, per_ip: bool = False):
        self.rate, self.margin, self.per_ip = rate, margin, per_ip

    def key_of(self, api_key: str, account: str) -> tuple[str, str]:
        return ("*", "all keys (per IP)") if self.per_ip else (api_key, account)

    def limiter(self, name: str) -> Limiter:
        return KeyLimiter(self.rate, margin=self.margin, track_sends=True)
