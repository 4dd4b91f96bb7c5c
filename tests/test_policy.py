"""The retry rules, one table: every outcome kind to its decision."""

from __future__ import annotations

import random

import pytest

from engine.client import AmbiguousError, Answer, Envelope, NotSentError
from engine.policy import BACKOFF_CAP, Verdict, backoff, judge


def envelope(mc: str, rc: int = 1) -> Envelope:
    return Envelope(rc=rc, mc=mc, ma=[], result=None)


@pytest.mark.parametrize(
    ("outcome", "verdict", "ambiguous"),
    [
        (Answer(200, envelope("SUCCESS", rc=0)), Verdict.OK, False),
        (NotSentError("not sent: refused"), Verdict.RETRY, False),
        (AmbiguousError("no answer"), Verdict.RETRY, True),
        (Answer(429, None, retry_after=2), Verdict.RETRY, False),
        (Answer(500, None), Verdict.RETRY, True),
        (Answer(502, None, excerpt="<html>"), Verdict.RETRY, True),
        (Answer(503, envelope("COMMON_002")), Verdict.RETRY, True),
        (Answer(504, None), Verdict.RETRY, True),
        (Answer(520, None), Verdict.RETRY, True),
        (Answer(524, None), Verdict.RETRY, True),
        (Answer(521, None), Verdict.RETRY, False),
        (Answer(522, None), Verdict.RETRY, False),
        (Answer(523, None), Verdict.RETRY, False),
        (Answer(525, None), Verdict.RETRY, False),
        (Answer(200, None, excerpt="<html>"), Verdict.RETRY, True),
        (Answer(200, envelope("COMMON_002")), Verdict.RETRY, False),
        (Answer(200, envelope("COMMON_003")), Verdict.RETRY, False),
        (Answer(200, envelope("COPY_TRADE_SPOT_000")), Verdict.RETRY, False),
        (Answer(200, envelope("AUTH_105")), Verdict.RETRY, False),
        (Answer(200, envelope("AUTH_101")), Verdict.DISABLE_ACCOUNT, False),
        (Answer(200, envelope("AUTH_103")), Verdict.DISABLE_ACCOUNT, False),
        (Answer(200, envelope("AUTH_106")), Verdict.DISABLE_ACCOUNT, False),
        (Answer(200, envelope("AUTH_001")), Verdict.STOP_RUN, False),
        (Answer(200, envelope("AUTH_007")), Verdict.STOP_RUN, False),
        (Answer(200, envelope("COMMON_001")), Verdict.DISABLE_ACCOUNT, False),
        (Answer(200, envelope("GATEWAY_0001")), Verdict.RETRY, False),
        (Answer(200, envelope("GATEWAY_0004")), Verdict.RETRY, False),
        (Answer(200, Envelope(rc=0, mc="SUCCESS", ma=[], result=False)), Verdict.FAIL, False),
        (Answer(200, envelope("COPY_TRADE_SPOT_006")), Verdict.FAIL, False),
        (Answer(200, envelope("SOMETHING_NEW_999")), Verdict.FAIL, False),
        (Answer(404, None, excerpt="not found"), Verdict.FAIL, False),
    ],
)
def test_judge(outcome, verdict: Verdict, ambiguous: bool) -> None:
    decision = judge(outcome)
    assert decision.verdict is verdict
    assert decision.ambiguous is ambiguous
    assert (decision.error is None) is (verdict is Verdict.OK)


def test_unknown_code_is_recorded_verbatim() -> None:
    decision = judge(Answer(200, envelope("SOMETHING_NEW_999")))
    assert decision.error == "HTTP 200 rc=1 mc=SOMETHING_NEW_999"


def test_429_slows_the_key_and_keeps_retry_after() -> None:
    decision = judge(Answer(429, None, retry_after=3))
    assert decision.slow_key
    assert decision.retry_after == 3


def test_clock_skew_asks_for_a_resync() -> None:
    assert judge(Answer(200, envelope("AUTH_105"))).resync_clock


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (10, BACKOFF_CAP)]:
        delays = [backoff(attempt, rng) for _ in range(500)]
        assert 0 <= min(delays) < ceiling * 0.1
        assert ceiling * 0.9 < max(delays) <= ceiling


def test_backoff_never_comes_back_before_retry_after() -> None:
    rng = random.Random(2)
    assert all(backoff(1, rng, retry_after=2.0) >= 2.0 for _ in range(100))
