"""Garbage collection tuned while runs go on: a run allocates a few short-lived objects per
request, millions of them, and CPython's defaults collect far more often than they pay for."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations between collections of the youngest generation while a run goes on.
GC_YOUNG_THRESHOLD = 10_000

_tuned_runs = 0
_saved_threshold = gc.get_threshold()


@contextmanager
def collector_tuned() -> Iterator[None]:
    """While runs go on: what exists when the first starts (modules, campaigns) is frozen, so
    no full collection walks it again and stalls the loop for tens of ms; and the youngest
    generation is collected less often, since a request's objects die before a collection
    sees them. At CPython's defaults collections took ~12% of a run's CPU (bench/RESULTS.md)."""
    global _tuned_runs, _saved_threshold
    if _tuned_runs == 0:
        _saved_threshold = gc.get_threshold()
        gc.freeze()
        if _saved_threshold[0]:
            gc.set_threshold(max(_saved_threshold[0], GC_YOUNG_THRESHOLD), *_saved_threshold[1:])
    _tuned_runs += 1
    try:
        yield
    finally:
        _tuned_runs -= 1
        if _tuned_runs == 0:
            gc.set_threshold(*_saved_threshold)
            gc.unfreeze()
