"""What the XT client can tell of a request: the exchange's answer, or why there is none.

Every outcome is one of three kinds, because what may be done next depends on which: the
request never left (``NotSentError``), it left but no answer came (``AmbiguousError``), or the
exchange answered (an ``Answer``, whatever its status).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any


class XtError(Exception):
    """Base of everything the client raises. Messages never hold secrets."""


class TransportError(XtError):
    """No answer came back."""


class NotSentError(TransportError):
    """The request never reached the exchange (connection refused, connect timeout)."""


class Withheld(NotSentError):
    """The caller held the request back at the last moment, before it was written (a stop,
    an account given up, a request signed too long ago): it never left."""


class AmbiguousError(TransportError):
    """The request left but no answer came: the exchange may have acted on it."""


@dataclass(frozen=True, slots=True)
class Envelope:
    rc: int
    mc: str
    ma: list[Any]
    result: Any


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP response. ``envelope`` is None when the body was not XT's JSON envelope."""

    http_status: int
    envelope: Envelope | None
    retry_after: float | None = None
    #: The start of a body that was not an envelope, for the record.
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_status == 200 and self.envelope is not None and self.envelope.rc == 0


def parse_envelope(data: Any) -> Envelope | None:
    if not isinstance(data, dict):
        return None
    rc, mc = data.get("rc"), data.get("mc")
    if isinstance(rc, bool) or not isinstance(rc, int) or not isinstance(mc, str):
        return None
    ma = data.get("ma")
    return Envelope(rc=rc, mc=mc, ma=ma if isinstance(ma, list) else [], result=data.get("result"))


def retry_after(value: str | None, clock: Callable[[], float]) -> float | None:
    """Seconds to wait from a ``Retry-After``: delay-seconds, or an HTTP-date (read against
    ``clock``, epoch seconds); None when absent or unreadable. Never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110: an HTTP-date is GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - clock())
