"""What to do after each attempt: the one place every retry rule lives.

``judge`` reads one outcome (an ``Answer``, a ``TransportError``, or an error nobody
expected) and says what it means: a ``Decision``. ``escalate`` weighs that decision
against the job's history (its attempts, its clock-skew answers, its account's risk-control
answers) and says what the worker pool does next: a ``Step``. The pool carries steps out
and never inspects an outcome itself. Every code's meaning is in ``docs/xt-api.md``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import Enum

from engine.client import AmbiguousError, Answer, TransportError

#: The exchange's own "busy, try again later" codes.
TRANSIENT_CODES = frozenset({"COMMON_002", "COMMON_003", "COPY_TRADE_SPOT_000"})
#: Codes that make an account unusable for the rest of the run: its key, its IP binding, its
#: permissions, or the user behind it.
ACCOUNT_CODES = frozenset(
    {"AUTH_101", "AUTH_102", "AUTH_103", "AUTH_104", "AUTH_106", "COMMON_001"}
)
#: A validate header missing or malformed: every request of every account meets the same.
HEADER_CODES = frozenset(f"AUTH_00{n}" for n in range(1, 8))
#: XT's risk control: the key is held back, and given up on after ``RISK_STRIKES`` answers.
RISK_CODES = frozenset(f"GATEWAY_000{n}" for n in range(1, 5))
#: Timestamp outside the receive window: the clock is skewed.
CLOCK_SKEW_CODE = "AUTH_105"
#: 5xx statuses that say the request never reached the exchange's own servers: a gateway's
#: refusal to forward (Cloudflare 521-523, 525, 526, 530) or to parse (501, 505). Any other
#: 5xx may come after the exchange acted on the request, so it is ambiguous.
NOT_FORWARDED = frozenset({501, 505, 521, 522, 523, 525, 526, 530})

BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
#: Risk-control answers an account may draw before its remaining jobs fail unsent.
RISK_STRIKES = 3
#: Seconds a key is held back after its first risk-control answer; doubled at each next one.
RISK_PAUSE = 2.0


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"
    FAIL = "fail"
    #: The job fails and so does every other job of its account, unsent.
    DISABLE_ACCOUNT = "disable_account"
    #: The job fails and the run sends nothing more: every request would meet the same.
    STOP_RUN = "stop_run"


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
    #: XT's risk control answered.
    risk_control: bool = False
    #: The message code that decided it, for the reasons given to a job's siblings.
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """What the worker pool does after one attempt."""

    #: Record the job with this outcome; None: attempt it again after ``retry_in``.
    finish: Decision | None = None
    retry_in: float = 0.0
    #: Hold the key's limiter back this many seconds.
    pause_key: float = 0.0
    #: The key went over the exchange's limit: widen its margin.
    widen_margin: bool = False
    #: Measure the exchange's clock before the next attempt.
    sync_clock: bool = False
    #: Fail the account's other jobs unsent, for this reason.
    disable_account: str | None = None
    #: Fail every other job of the key's limit unsent (under a per-IP rule: all), for this.
    disable_key: str | None = None
    #: Send nothing more in this run, for this reason.
    stop_run: str | None = None


def judge(outcome: Answer | Exception, *, left: bool = True) -> Decision:
    """What ``outcome`` means. ``left``: the request was written to the connection, so an
    error nobody expected may still have reached the exchange."""
    if isinstance(outcome, TransportError):
        return Decision(Verdict.RETRY, str(outcome), ambiguous=isinstance(outcome, AmbiguousError))
    if not isinstance(outcome, Answer):
        # A bug, or input the client could not handle: retrying would only repeat it.
        return Decision(Verdict.FAIL, f"internal error, not retried: {outcome!r}", ambiguous=left)
    status, envelope = outcome.http_status, outcome.envelope
    if status == 429:
        return Decision(
            Verdict.RETRY, "HTTP 429: rate limited", retry_after=outcome.retry_after, slow_key=True
        )
    if status >= 500:
        return Decision(
            Verdict.RETRY,
            f"HTTP {status}" + (f" {envelope.mc}" if envelope else ""),
            ambiguous=status not in NOT_FORWARDED,
            retry_after=outcome.retry_after,
        )
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
    mc = envelope.mc
    if envelope.rc == 0 and taken:
        if envelope.result is False:
            return Decision(Verdict.FAIL, f"rc=0 mc={mc} but result false: not followed", code=mc)
        return Decision(Verdict.OK)
    if mc in TRANSIENT_CODES:
        return Decision(Verdict.RETRY, f"{mc}: exchange busy", code=mc)
    if mc == CLOCK_SKEW_CODE:
        return Decision(
            Verdict.RETRY, f"{mc}: timestamp outside the window", resync_clock=True, code=mc
        )
    if mc in RISK_CODES:
        return Decision(Verdict.RETRY, f"{mc}: risk control", risk_control=True, code=mc)
    if mc in ACCOUNT_CODES:
        return Decision(Verdict.DISABLE_ACCOUNT, f"{mc}: account rejected", code=mc)
    if mc in HEADER_CODES:
        return Decision(Verdict.STOP_RUN, f"{mc}: request headers refused", code=mc)
    return Decision(Verdict.FAIL, f"HTTP {status} rc={envelope.rc} mc={mc}", code=mc)


def escalate(
    decision: Decision,
    *,
    account: str,
    attempts: int,
    max_attempts: int,
    skews: int,
    risk_strikes: int,
    stopping: bool,
    max_retry_after: float,
    period: float,
    rng: random.Random,
) -> Step:
    """The step after ``decision``, given the job's ``attempts`` so far, the clock-skew answers
    it drew (``skews``) and the risk-control answers its account drew (``risk_strikes``),
    this one included; ``stopping``: the run takes no new attempts; ``period``: the key's
    limiter's, how long a 429 without ``Retry-After`` holds the key back."""
    verdict = decision.verdict
    if verdict is Verdict.DISABLE_ACCOUNT:
        why = f"not sent: account {account} rejected with {decision.code}"
        return Step(finish=decision, disable_account=why)
    if verdict is Verdict.STOP_RUN:
        return Step(finish=decision, stop_run=header_advice(decision.code))
    if verdict is not Verdict.RETRY:
        return Step(finish=decision)
    pause = 0.0
    if decision.slow_key:
        pause = decision.retry_after or period
    if decision.risk_control:
        if risk_strikes >= RISK_STRIKES:
            why = f"not sent: account {account} met XT's risk control ({decision.code})"
            given_up = f"{decision.error}, {risk_strikes} times: account given up"
            return Step(finish=_failed(decision, given_up), disable_account=why)
        pause = RISK_PAUSE * 2 ** (risk_strikes - 1)
    wait = decision.retry_after or 0.0
    if wait > max_retry_after:
        why = (
            f"the exchange asked to wait {wait:g} s (Retry-After), longer than "
            f"max_retry_after {max_retry_after:g} s"
        )
        return Step(
            finish=_failed(decision, f"{decision.error}; {why}"), disable_key=f"not sent: {why}"
        )
    if stopping:
        return Step(finish=_failed(decision, decision.error))
    if attempts >= max_attempts:
        error = f"gave up after {attempts} attempts: {decision.error}"
        return Step(finish=_failed(decision, error))
    return Step(
        retry_in=max(backoff(attempts, rng, decision.retry_after), pause),
        pause_key=pause,
        widen_margin=decision.slow_key,
        sync_clock=decision.resync_clock and skews >= 2,
    )


def _failed(decision: Decision, error: str | None) -> Decision:
    return Decision(Verdict.FAIL, error, ambiguous=decision.ambiguous, code=decision.code)


def header_advice(code: str | None) -> str:
    """The one message for a run stopped by a header code."""
    return (
        f"the exchange refused the request headers ({code}): every request would be refused "
        "the same way, so nothing more is sent. If the key is right, XT may expect the other "
        "header spelling: set settings.headers to validate (or xt-validate) and run again"
    )


def backoff(attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter, never
    sooner than the exchange asked."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return max(rng.uniform(0, ceiling), retry_after or 0.0)


_HEX_RUN = re.compile(r"[0-9a-fA-F]{64}")


def scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` and anything shaped like a signature blotted out: for an
    error whose message nobody vetted."""
    if secret:
        text = text.replace(secret, "<secret>")
    return _HEX_RUN.sub("<redacted>", text)
