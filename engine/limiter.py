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
nothing for one period. The period's margin is a guess at how much later one request
may arrive than another sent as soon after it left; an answer is proof: a request
answered had arrived before its answer came. So the caller also reports each answer
(``answered``), and the lane may go again one window after it, when that is sooner. A
request that opened its connection may arrive later than the margin allows (an exchange
accepting a burst of new connections reads their requests late, then reads the next burst,
on those connections, at once), and its answer bounds how late: one answered later after
leaving than the fastest answer of any key (``Fastest``, one per exchange) may have waited
that much longer on the way in, so its lane waits the excess on top of its period. On a
connection in use one answer's excess alone may be its jitter on the way back, so the lane
weighs its neighbours': an exchange short of time reads everything that came in together
late, and if every request that left about when this one did was answered late, this one was
read late too (``Fastest.reading_late``); beyond half the margin, its lane waits that much
longer. One answered quickly among them says the exchange read them at once.
Lanes are made as first used, so a limit lifted to 100,000/s costs nothing up front.

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

from engine.lateness import Fastest

#: Lanes wait this fraction of the window longer than the rule needs, so network
#: jitter cannot make two of a lane's requests arrive inside one window.
DEFAULT_MARGIN = 0.05
#: ``widen`` never goes past this: a lane's period at most doubles.
MAX_MARGIN = 1.0


def lane_span(rate: float, window: float) -> float:
    """Seconds between two arrivals of one lane that the rule needs: at most ``rate * window``
    (at least one) in any window, and at most ``rate`` per second (0.5/s: one in any 2 s)."""
    return max(window, max(1, math.floor(rate * window)) / rate)


class Limiter(Protocol):
    """One limit's gate: wait for a slot (``acquire``), say the request left (``sent``),
    was answered (``answered``) or never will leave (``release``), hold back after a 429
    (``pause``), give jitter more room (``widen``)."""

    #: Seconds between two requests of one slot: the window, margin included.
    period: float
    margin: float

    async def acquire(self) -> int: ...

    def sent(self, lane: int, opened: bool = False) -> None: ...

    def answered(self, lane: int) -> None: ...

    def release(self, lane: int) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def widen(self) -> float: ...


@dataclass(slots=True, eq=False)
class _Lane:
    bucket: AsyncLimiter
    #: No admission before this loop time: its last request left, plus one period; or it
    #: was answered, plus one window.
    free_at: float = 0.0
    #: Set while the lane's last admitted request has neither left nor been released.
    held: asyncio.Event | None = None
    #: The token ``acquire`` gave the lane's last admission: news of any other is about an
    #: earlier request of the lane, and changes nothing.
    token: int = -1
    #: Loop time the lane's last admitted request left, None while it has not (an answer to
    #: it counts only once it has).
    sent_at: float | None = None
    #: The lane's last request was the first on its connection.
    opened: bool = False
    #: Loop time its last request was answered, until its next admission has weighed how late
    #: the exchange was reading then (``Fastest.reading_late``).
    answered_at: float | None = None


class KeyLimiter:
    """At most ``rate`` requests in any ``window`` seconds for one key."""

    def __init__(
        self,
        rate: float,
        window: float = 1.0,
        margin: float = DEFAULT_MARGIN,
        *,
        track_sends: bool = False,
        fastest: Fastest | None = None,
    ) -> None:
        if rate <= 0 or window <= 0 or margin < 0:
            raise ValueError("rate and window must be positive, margin not negative")
        self.rate = rate
        self.window = window
        self.track_sends = track_sends
        self._count = max(1, math.floor(rate * window))
        self._span = lane_span(rate, window)
        self.margin = margin
        #: The margin that ``widen`` has added since.
        self._added = 0.0
        #: Seconds between two requests of one lane, from the first leaving.
        self.period = self._span * (1 + self.margin)
        self._lanes: list[_Lane] = []
        self._admissions = 0
        self._paused_until = 0.0
        self._fastest = Fastest() if fastest is None else fastest

    def _answer_gap(self) -> float:
        """Seconds from an answer to the lane's next request: the span, and what ``widen``
        added to the margin (a 429 says the exchange counts otherwise than we think)."""
        return self._span * (1 + self._added)

    def _bucket(self) -> AsyncLimiter:
        """A lane's own pace of admissions. When sends are tracked, ``free_at`` and ``held``
        keep the margin and the bucket only the rule, so that an answer can free a lane early."""
        return AsyncLimiter(1, self._answer_gap() if self.track_sends else self.period)

    async def acquire(self) -> int:
        """Wait until one more request may be sent now; send it straight after. Returns a
        token naming its lane and this admission, for ``sent``, ``answered`` and
        ``release`` when tracking sends."""
        loop = asyncio.get_running_loop()
        token = self._admissions
        self._admissions += 1
        index = token % self._count
        if index == len(self._lanes):
            self._lanes.append(_Lane(self._bucket()))
        lane = self._lanes[index]
        while True:
            if (wait := self._paused_until - loop.time()) > 0:
                await asyncio.sleep(wait)
            await lane.bucket.acquire()
            while (
                lane.held is not None or lane.free_at > loop.time() or lane.answered_at is not None
            ):
                if lane.held is not None:
                    await lane.held.wait()
                elif lane.free_at > loop.time():
                    await asyncio.sleep(lane.free_at - loop.time())
                else:
                    self._hold_if_read_late(lane)
            if self._paused_until <= loop.time():
                lane.token, lane.sent_at = token, None
                if self.track_sends:
                    lane.held = asyncio.Event()
                return token
            # Paused while queued: the lane's slot is forfeit, take a fresh one after the pause.

    def _hold_if_read_late(self, lane: _Lane) -> None:
        """Weigh how late the exchange read the lane's last request, by the requests that left
        with it, now that they have been answered too: a burst read later than the margin
        allows would let the next land inside its window. An answer still frees the lane one
        window after it, whatever the lateness."""
        answered_at, lane.answered_at = lane.answered_at, None
        assert answered_at is not None and lane.sent_at is not None
        late = self._fastest.hold(lane.sent_at, self.period - self._span)
        held = min(lane.sent_at + self.period + late, answered_at + self._answer_gap())
        lane.free_at = max(lane.free_at, held)

    def _lane(self, token: int) -> _Lane | None:
        """The lane of admission ``token``, unless it has admitted another since."""
        lane = self._lanes[token % self._count]
        return lane if lane.token == token else None

    def sent(self, lane: int, opened: bool = False) -> None:
        """The request admitted as ``lane`` left just now (the first on its connection if
        ``opened``): its lane waits one period from here."""
        if (admitted := self._lane(lane)) is not None:
            admitted.sent_at = now = asyncio.get_running_loop().time()
            admitted.free_at = now + self.period
            admitted.opened = opened
        self.release(lane)

    def answered(self, lane: int) -> None:
        """The request admitted as ``lane`` was answered just now, so it had arrived: its
        lane may go again one window from here, whatever the jitter, if that is sooner; and
        if it opened its connection, not before one period after it left plus however much
        longer than the fastest its answer took."""
        admitted = self._lane(lane)
        if admitted is not None and (sent_at := admitted.sent_at) is not None:
            now = asyncio.get_running_loop().time()
            took = now - sent_at
            fastest = self._fastest.took(sent_at, took)
            if admitted.opened:
                admitted.free_at += took - fastest
            else:
                admitted.answered_at = now
            admitted.free_at = min(admitted.free_at, now + self._answer_gap())

    def release(self, lane: int) -> None:
        """Done with the request admitted as ``lane`` (sent or not): stop holding its lane."""
        admitted = self._lane(lane)
        if admitted is not None and admitted.held is not None:
            held, admitted.held = admitted.held, None
            held.set()

    def pause(self, seconds: float) -> None:
        """Hold every lane back for ``seconds`` (the exchange said we went too fast)."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)

    def widen(self) -> float:
        """Double the margin (at least +5 points, at most ``MAX_MARGIN``), from now on and for
        the requests already sent; the new margin."""
        old = self.margin
        self.margin = min(MAX_MARGIN, max(2 * self.margin, self.margin + DEFAULT_MARGIN))
        self._added += self.margin - old
        longer = self._span * (self.margin - old)
        self.period += longer
        for lane in self._lanes:
            lane.bucket = self._bucket()
            if lane.free_at:
                lane.free_at += longer
        return self.margin


class Limits(Protocol):
    """Which limit a request counts against, and that limit's gate."""

    def key_of(self, api_key: str, account: str, *, read: bool = False) -> tuple[str, str]:
        """The limit's name and its label for people; ``read``: a call to XT's account
        endpoints (per IP) rather than a follow."""
        ...

    def limiter(self, name: str) -> Limiter:
        """The one gate of limit ``name``: the same object every time it is asked for."""
        ...


#: The name of the per-IP limit of XT's account endpoints when follows are limited per key.
READS = "reads (per IP)"


class LocalLimits:
    """This process's limits: one ``KeyLimiter`` per API key, or one for all under a
    per-IP rule (this process is the IP's only sender). Under a per-IP rule, reads of the
    account endpoints share the one limit with follows; otherwise they have their own, at
    ``read_rate`` per IP. All share one ``Fastest``: they send to one exchange."""

    def __init__(
        self,
        rate: float,
        margin: float = DEFAULT_MARGIN,
        *,
        per_ip: bool = False,
        read_rate: float = 2,
    ) -> None:
        self.rate, self.margin, self.per_ip, self.read_rate = rate, margin, per_ip, read_rate
        self._limiters: dict[str, Limiter] = {}
        self._fastest = Fastest()

    def key_of(self, api_key: str, account: str, *, read: bool = False) -> tuple[str, str]:
        if self.per_ip:
            return "*", "all keys (per IP)"
        return (READS, READS) if read else (api_key, account)

    def limiter(self, name: str) -> Limiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            rate = self.read_rate if name == READS else self.rate
            limiter = KeyLimiter(rate, margin=self.margin, track_sends=True, fastest=self._fastest)
            self._limiters[name] = limiter
        return limiter
