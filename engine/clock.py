"""The wall clock, as one injectable function.

``schedule.at``, cron firings, ``not_before`` and the ``finished_at`` of every result are read
from the same ``Clock``, so a test drives a campaign's time instead of waiting for it, and
the scheduler and the runner never disagree on what time it is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime, timespec: str = "seconds") -> str:
    """``2026-12-01T09:00:00Z``: how every time is shown and recorded, whatever zone it was
    given in."""
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")
