"""What to do after each attempt: the one place every retry rule lives.

An outcome is an ``Answer`` or a ``TransportError``; ``judge`` turns it into a
``Decision``. The runner acts on decisions and never inspects outcomes itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from engine.client import AmbiguousError, Answer, TransportError

#: The exchange's own "busy, try again later" codes (``xt-api-notes.md``).
TRANSIENT_CODES = frozenset({"COMMON_002", "COMMON_003", "COPY_TRADE_SPOT_000"})
#: Codes that make an account unusable for the rest of the run.
ACCOUNT_CODES = frozenset({"AUTH_101", "AUTH_102", "AUTH_103", "AUTH_104", "AUTH_106"})
#: Timestamp outside the receive window: the clock is skewed.
CLOCK_SKEW_CODE = "AUTH_105"

BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"
    FAIL = "fail"
    #: The job fails and so does every other job of its account, unsent.
    DISABLE_ACCOUNT = "disable_account"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: Why, for the results file; None when ok.
    error: str | None = None
    #: The request may have been acted on though no answer says so.
    ambiguous: bool = False
    #: The exchange said when to come back (``Retry-After``).
    retry_after: float | None = None
    #: The key hit the exchange's limit: hold it back.
    slow_key: bool = False
    resync_clock: bool = False


def judge(outcome: Answer | TransportError) -> Decision:
    if isinstance(outcome, TransportError):
        return Decision(Verdict.RETRY, str(outcome), ambiguous=isinstance(outcome, AmbiguousError))
    status, envelope = outcome.http_status, outcome.envelope
    if status == 429:
        return Decision(
            Verdict.RETRY, "HTTP 429: rate limited", retry_after=outcome.retry_after, slow_key=True
        )
    if status >= 500:
        return Decision(Verdict.RETRY, f"HTTP {status}", retry_after=outcome.retry_after)
    # XT answers 200; any 2xx (a proxy's 202 or 204) still means the request was taken in.
    taken = 200 <= status < 300
    if envelope is None:
        if not taken:
            return Decision(Verdict.FAIL, f"HTTP {status}: {outcome.excerpt!r}")
        # A 2xx we cannot read may still have been acted on.
        return Decision(
            Verdict.RETRY,
            f"HTTP {status} with a body that is not XT's JSON: {outcome.excerpt!r}",
            ambiguous=True,
        )
    if envelope.rc == 0 and taken:
        return Decision(Verdict.OK)
    mc = envelope.mc
    if mc in TRANSIENT_CODES:
        return Decision(Verdict.RETRY, f"{mc}: exchange busy")
    if mc == CLOCK_SKEW_CODE:
        return Decision(Verdict.RETRY, f"{mc}: timestamp outside the window", resync_clock=True)
    if mc in ACCOUNT_CODES:
        return Decision(Verdict.DISABLE_ACCOUNT, f"{mc}: account rejected")
    return Decision(Verdict.FAIL, f"HTTP {status} rc={envelope.rc} mc={mc}")


def backoff(attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter, never
    sooner than the exchange asked."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return max(rng.uniform(0, ceiling), retry_after or 0.0)
