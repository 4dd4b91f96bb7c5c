"""Benchmarks for follow-engine: limit utilisation against the sliding best, baselines,
overhead, input scale and the read paths (resume, dry run, validation memory).

Run ``python -m bench --quick`` (under two minutes) or ``python -m bench --full --write``
(everything, and ``bench/RESULTS.md`` rewritten). Every measurement talks to the engine's own
simulator on 127.0.0.1, run in a separate process so its CPU is never counted as the client's.
"""
