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
