"""Stopping on a signal: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed).

The first signal asks for a stop (no new requests; those in flight get a grace period), a
second for a stop at once. Python's own signal handler takes them, not the event loop's:
it runs the moment a signal comes, even while the loop is busy loading a job file, so a
stop asked for before the first request leaves is seen before it leaves (``requested``).
What the stop does is then carried out on the loop: the worker pool attached, if any, is
stopped, and whoever waits on ``stopped`` wakes up.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType
from typing import Any, Protocol, TextIO

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stoppable(Protocol):
    def stop(self) -> None: ...

    def abort(self) -> None: ...


class StopSignals:
    """The stop signals of one command, from ``install`` to ``restore``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        #: Signals received so far.
        self.count = 0
        self._saved: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._pool: Stoppable | None = None

    @property
    def requested(self) -> bool:
        """A stop was asked for: send nothing more."""
        return self.count > 0

    def install(self) -> StopSignals:
        for sig in SIGNALS:
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def stopped(self) -> asyncio.Event:
        """Set once a stop is asked for; an event of the running loop."""
        loop = asyncio.get_running_loop()
        if self._stopped is None or self._loop is not loop:
            self._loop, self._stopped = loop, asyncio.Event()
            if self.requested:
                self._stopped.set()
        return self._stopped

    def attach(self, pool: Stoppable | None) -> None:
        """Stop ``pool`` on the next signal (None: no pool any more); at once if one came."""
        self.stopped()
        self._pool = pool
        if pool is not None and self.requested:
            self._act(quiet=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._act)

    def _act(self, quiet: bool = False) -> None:
        if self._stopped is not None:
            self._stopped.set()
        pool = self._pool
        if pool is None:
            return
        if self.count > 1:
            if not quiet:
                print("stopping now", file=self.stream, flush=True)
            pool.abort()
        else:
            if not quiet:
                print(
                    "stopping: no new requests; requests in flight get a few seconds to finish "
                    "(interrupt again to stop at once)",
                    file=self.stream,
                    flush=True,
                )
            pool.stop()
