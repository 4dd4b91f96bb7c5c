"""Small asyncio tools of the worker pool."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable


async def first_of(*awaitables: Awaitable[object], timeout: float | None = None) -> None:
    """Wait until any of ``awaitables`` is done (or ``timeout``), then drop the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Turns:
    """At most ``per_turn`` callers start work in each turn of the event loop; the others
    wait, in order, for the next turns. What a caller starts in the turn it took (``turn``
    is still the one ``take`` returned) is up to it.

    Work that becomes ready all at once (2,000 requests whose limiters let them all go) would
    otherwise run breadth first: every request does its first step (sign, connect) before any
    does its second, so the first request leaves only once every connection is open. Taking
    turns lets the requests started earlier leave while later ones start.
    """

    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        #: The current turn's number.
        self.turn = 0
        self._left = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_ends = False

    async def take(self) -> int:
        """Start in this turn if it has room, else in the first turn that has; its number."""
        if self._left and not self._waiting:
            self._left -= 1
            self._end_turn_soon()
            return self.turn
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._end_turn_soon()
        await waiter
        return self.turn

    def _end_turn_soon(self) -> None:
        if not self._turn_ends:
            self._turn_ends = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Runs once per turn of the loop while anyone started or waits."""
        self._turn_ends = False
        self.turn += 1
        self._left = self.per_turn
        waiting = self._waiting
        while self._left and waiting:
            waiter = waiting.popleft()
            if not waiter.done():  # a waiter cancelled (its run stopped) gives its place up
                waiter.set_result(None)
                self._left -= 1
        if waiting or self._left < self.per_turn:
            self._end_turn_soon()


class Slots:
    """Requests in flight at most: ``n`` of one pool's own and, when ``shared`` is given, no
    more than it lets every pool of the process hold together (a worker serving several
    campaigns: each request holds a connection, an open file of the process)."""

    def __init__(self, n: int, shared: asyncio.Semaphore | None = None) -> None:
        self._own = asyncio.Semaphore(n)
        self._shared = shared

    async def acquire(self) -> None:
        await self._own.acquire()
        if self._shared is not None:
            try:
                await self._shared.acquire()
            except BaseException:
                self._own.release()
                raise

    def release(self) -> None:
        if self._shared is not None:
            self._shared.release()
        self._own.release()
