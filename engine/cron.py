"""Cron expressions, through croniter: the only module that imports it.

croniter asks ``platform.architecture()`` at import, which runs ``file -b`` on the Python
binary with this process's environment, and that environment holds API secrets. The
import is therefore made with an environment holding only ``PATH``, so that no child
process ever inherits a secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

#: The environment a child process started during the import may see.
_CHILD_ENVIRONMENT = ("PATH",)


@contextmanager
def _bare_environment() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name in set(saved) - set(_CHILD_ENVIRONMENT):
            del os.environ[name]
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


with _bare_environment():
    from croniter import croniter


def is_valid(expression: str) -> bool:
    return bool(croniter.is_valid(expression))


def ever_fires(expression: str) -> bool:
    """False for a valid expression no date matches, such as ``0 0 30 2 *``."""
    try:
        croniter(expression, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except (ValueError, KeyError, OverflowError):  # CroniterBadDateError is a ValueError
        return False
    return True


def next_firing(expression: str, zone: str, after: datetime) -> datetime:
    """The first firing of ``expression`` in ``zone`` strictly after ``after``, in UTC."""
    local = after.astimezone(ZoneInfo(zone))
    return croniter(expression, local).get_next(datetime).astimezone(timezone.utc)
