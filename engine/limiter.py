"""Per-key rate limiting that holds in ANY sliding window, built on aiolimiter.

``AsyncLimiter(10, 1)`` is a leaky bucket: a full burst of 10, then a drip of
10/s, so 19 requests can land inside one second. A ``KeyLimiter`` instead runs
``n`` lanes, each an ``AsyncLimiter(1, period)`` with ``period`` a little over the
window: a lane admits at most one request per window, so ``n`` lanes admit at
most ``n`` in any window, yet a key may still send its ``n`` at once and then
``n`` again one period later. That is as fast as a sliding-window limit allows.
"""

from __future__ import annotations

import asyncio
import math
from itertools import cycle

from aiolimiter import AsyncLimiter

#: Lanes wait this fraction of the window longer than the rule needs, so network
#: jitter cannot make two of a lane's requests arrive inside one window.
DEFAULT_MARGIN = 0.05


class KeyLimiter:
    """At most ``rate`` requests in any ``window`` seconds for one key."""

    def __init__(self, rate: float, window: float = 1.0, margin: float = DEFAULT_MARGIN) -> None:
        if rate <= 0 or window <= 0 or margin < 0:
            raise ValueError("rate and window must be positive, margin not negative")
        lanes = max(1, math.floor(rate * window))
        self.rate = rate
        self.window = window
        #: Seconds between two requests of one lane.
        self.period = max(window, lanes / rate) * (1 + margin)
        self._lanes = [AsyncLimiter(1, self.period) for _ in range(lanes)]
        self._next_lane = cycle(self._lanes)
        self._paused_until = 0.0

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    async def acquire(self) -> None:
        """Wait until one more request may be sent now; send it straight after."""
        loop = asyncio.get_running_loop()
        while True:
            if (wait := self._paused_until - loop.time()) > 0:
                await asyncio.sleep(wait)
            await next(self._next_lane).acquire()
            if self._paused_until <= loop.time():
                return
            # Paused while queued: the lane's slot is forfeit, take a fresh one after the pause.

    def pause(self, seconds: float) -> None:
        """Hold every lane back for ``seconds`` (the exchange said we went too fast)."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)
