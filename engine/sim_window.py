"""The simulated exchange's rate limit: a sliding window of arrival times per limited key, as
XT counts them, and the measure tests and benchmarks hold a client to."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Sequence

from engine.profiles import ACCOUNT_ENDPOINTS_RATE
from engine.sim_wire import FOLLOW_PATHS


class SlidingWindows:
    """At most ``rate`` arrivals of one key in any ``window`` seconds; an arrival over it is
    refused and not counted."""

    def __init__(self, window: float) -> None:
        self.window = window
        #: Arrival times within the window of each limited key.
        self._recent: defaultdict[str, deque[float]] = defaultdict(deque)

    def admit(self, key: str, rate: float, now: float) -> int:
        """0 when the arrival fits the sliding window, else whole seconds until it would."""
        times = self._recent[key]
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) + 1 > rate:
            return max(1, math.ceil(times[0] - horizon))
        times.append(now)
        return 0


def window_of(
    path: str, api_key: str, remote: str, rate: float, *, per_ip: bool
) -> tuple[str, float]:
    """Which sliding window an arrival counts in, and its limit. Under a per-IP rule every
    signed endpoint of one source address shares a window (as the engine assumes: XT does
    not say whether its endpoints' 2/s per IP are counted apart); else a follow counts per
    key (at ``rate``) and the account endpoints per address, at their own rate."""
    if per_ip:
        return f"ip {remote}", rate
    if path in FOLLOW_PATHS:
        return f"key {api_key}", rate
    return f"account endpoints {remote}", ACCOUNT_ENDPOINTS_RATE


def max_in_window(times: Sequence[float], window: float) -> int:
    """Most of the sorted ``times`` inside any half-open ``window``, by two pointers."""
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
