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
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

#: Lanes wait this fraction of the window longer than the rule needs, so network
#: jitter cannot make two of a lane's requests arrive inside one window.
DEFAULT_MARGIN = 0.05


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
        #: Seconds between two requests of one lane.
        self.period = max(window, self._count / rate) * (1 + margin)
        self._lanes: list[_Lane] = []
        self._next_lane = 0
        self._paused_until = 0.0

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
