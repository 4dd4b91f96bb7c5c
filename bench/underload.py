"""The limit under load: a campaign run while busy loops take the machine's CPU.

On a machine short of CPU the simulator reads some requests late, and a burst read late
followed by one read at once can land 11 of a key in a second: the exchange's 429. The
margin covers 50 ms of such lateness; how the limiter guards beyond it is a trade against
links whose answers jitter (bench/RESULTS.md, "Under load"). This measures the trade's one
side, reproducibly: ``python -m bench.underload [--runs 10] [--busy 2] [--baseline-src DIR]``
runs uniform at 20 ms (the engine, and a baseline tree's engine in turns with it) beside
``--busy`` loops of ``sh``, and prints each run's 429s and makespan against the sliding best,
then how many runs drew any.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.clients import BASELINE, ENGINE, Env
from bench.shapes import SHAPES
from bench.utilisation import run_one


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes spinning on a CPU each until the block ends."""
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.underload", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs of each client")
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the runs")
    parser.add_argument("--shape", choices=SHAPES, default="uniform")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds")
    parser.add_argument("--baseline-src", type=Path, help="another tree's engine, in turns")
    parser.add_argument("--out", type=Path, default=Path("bench") / "out" / "underload")
    args = parser.parse_args(argv)
    env = Env(baseline_src=args.baseline_src)
    clients = [ENGINE] + ([BASELINE] if args.baseline_src else [])
    drew = dict.fromkeys(clients, 0)
    print("| run | client | 429s | violations | failed | vs sliding best |")
    print("|---|---|---|---|---|---|")
    with busy_loops(args.busy):
        for run in range(args.runs):
            for client in clients:
                row = run_one(SHAPES[args.shape], args.latency, client, args.out, env)
                drew[client] += row.stats.http_429 > 0
                ratio = row.makespan / row.sliding_best
                print(
                    f"| {run} | {client} | {row.stats.http_429} | {row.stats.violations} | "
                    f"{row.failed} | {ratio:.3f} |",
                    flush=True,
                )
    for client, count in drew.items():
        print(f"{client}: 429s in {count} of {args.runs} runs, {args.busy} busy loops beside")
    return 0


if __name__ == "__main__":
    sys.exit(main())
