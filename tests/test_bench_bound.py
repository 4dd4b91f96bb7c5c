"""The bench's lower bound, the sliding best, and the check that no client beats it."""

from __future__ import annotations

import pytest

from bench.measure import Usage
from bench.shapes import SHAPES, Shape, sliding_best
from bench.simserver import SimStats
from bench.utilisation import BoundError, UtilRow, check_bound


def test_the_sliding_best_is_the_busiest_keys_last_window_plus_one_answer() -> None:
    # 50 jobs at 10 per window: bursts at 0, 1, 2, 3 and 4 s, the last answered 20 ms later.
    assert SHAPES["uniform"].sliding_best(0.02) == pytest.approx(4.02)
    assert SHAPES["skewed"].sliding_best(0.3) == pytest.approx(19.3)
    # Every key's jobs fit one window: all may leave at once.
    assert SHAPES["wide"].sliding_best(0.3) == pytest.approx(0.3)
    assert sliding_best([10, 11], 0.0) == pytest.approx(1.0)


def test_under_a_per_ip_limit_all_keys_are_one() -> None:
    wide = SHAPES["wide"]  # 2,000 jobs at 2 per window: 999 windows, then one answer
    assert wide.sliding_best(0.02, rate=2, per_ip=True) == pytest.approx(999.02)


def row(shape: Shape, makespan: float, admitted: dict[str, int], violations: int = 0) -> UtilRow:
    stats = SimStats(
        arrivals=sum(admitted.values()) + violations,
        statuses={200: sum(admitted.values()), 429: violations},
        codes={},
        violations=violations,
        accepted=sum(admitted.values()),
        duplicates=0,
        max_in_window=10,
        first_arrival=100.0,
        last_answer=100.0 + makespan,
        admitted=admitted,
    )
    usage = Usage(0, 6.0, 99.0, 105.0, 1.0, 50.0, "", "")
    return UtilRow(shape, 0.02, "engine", stats, usage, None)


def test_a_client_below_its_bound_stops_the_bench() -> None:
    uniform = SHAPES["uniform"]
    admitted = {f"k{i}": 50 for i in range(20)}
    check_bound(row(uniform, 4.02, admitted))  # at the bound: possible
    with pytest.raises(BoundError, match="the bound is wrong"):
        check_bound(row(uniform, 4.0, admitted))


def test_a_client_the_exchange_refused_is_held_to_what_it_let_through() -> None:
    # 12 of each key's 50 refused (429): 38 admitted, at least 3 windows and one answer.
    refused = row(SHAPES["uniform"], 4.007, {f"k{i}": 38 for i in range(20)}, violations=240)
    assert refused.makespan / refused.sliding_best < 1
    check_bound(refused)
    with pytest.raises(BoundError):
        check_bound(row(SHAPES["uniform"], 3.0, {f"k{i}": 38 for i in range(20)}, 240))


def test_both_makespans_end_at_the_last_answer() -> None:
    done = row(SHAPES["uniform"], 4.5, {f"k{i}": 50 for i in range(20)})
    assert done.makespan == pytest.approx(4.5)
    assert done.from_start == pytest.approx(5.5)  # the command started 1 s before
    assert done.to_first_arrival == pytest.approx(1.0)
    assert done.exit_after_answer == pytest.approx(0.5)
