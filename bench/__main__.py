"""``python -m bench``: run the benchmarks, print the tables, optionally rewrite RESULTS.md.

``--quick`` (the default) takes under two minutes; ``--full`` runs everything the issue asks
for; ``--smoke`` runs a tiny campaign through every section in seconds (for the test suite).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import distributed, overhead, scale, utilisation
from bench.clients import CCXT, CLIENTS, ENGINE, IDEAL, REPO, Env
from bench.report import render, write_results
from bench.shapes import RATE_LIMIT, SHAPES, TINY, Shape

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = ("utilisation", "overhead", "scale", "distributed")
#: Sections a run without --only runs: the distributed mode's (two minutes) with --full only.
DEFAULT_SECTIONS = {"smoke": SECTIONS[:3], "quick": SECTIONS[:3], "full": SECTIONS}


@dataclass(frozen=True)
class Plan:
    util: list[tuple[Shape, float, str]]
    overhead_sizes: tuple[int, int]
    #: Runs of each short utilisation case and of each overhead size; the median is kept.
    repeats: int
    scale_sizes: tuple[int, ...]
    scale_runs: tuple[int, ...]


def cases(
    shapes: list[Shape], latencies: list[float], clients: tuple[str, ...]
) -> list[tuple[Shape, float, str]]:
    """Every client on every shape at every latency, and the ideal client beside the engine on
    the shapes it applies to (every key's jobs within one window)."""
    util = []
    for shape in shapes:
        for latency in latencies:
            util += [(shape, latency, c) for c in clients]
            if ENGINE in clients and max(shape.jobs_per_key) <= RATE_LIMIT:
                util.append((shape, latency, IDEAL))
    return util


def plan_for(mode: str, clients: tuple[str, ...]) -> Plan:
    uniform, skewed, wide = SHAPES["uniform"], SHAPES["skewed"], SHAPES["wide"]
    if mode == "smoke":
        util = cases([TINY], [0.005], tuple(c for c in clients if c != CCXT))
        return Plan(util, (100, 200), 1, (100,), (100,))
    if mode == "quick":
        util = cases([uniform, wide], [0.02], clients)
        util += cases([skewed], [0.02], (ENGINE,)) if ENGINE in clients else []
        return Plan(util, (2000, 10000), 1, (10000,), (10000,))
    util = cases([uniform, skewed, wide], [0.02, 0.3], clients)
    sizes = (10_000, 50_000, 100_000)
    return Plan(util, (5000, 40000), 3, sizes, sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    for name, what in (
        ("quick", "20 ms only, fewer sizes, one run each: about a minute (the default)"),
        ("full", "every shape, latency, size and repeat the issue asks for: about 8 minutes"),
        ("smoke", "a tiny campaign through every section in seconds (the test suite's)"),
    ):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=what)
    parser.add_argument(
        "--write", action="store_true", help=f"rewrite the tables in {RESULTS_MD.name} (--full)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="scratch dir")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="sections to run")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated of {', '.join(CLIENTS)}"
    )
    parser.add_argument("--shapes", help=f"comma-separated of {', '.join(SHAPES)}: only these")
    parser.add_argument("--latencies", help="comma-separated seconds, e.g. 0.02,0.3: only these")
    parser.add_argument("--engine-src", type=Path, help="run the engine from this source tree")
    parser.add_argument(
        "--engine-args", default="", help="extra `follow-engine run` options, shell-quoted"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    mode_name = args.mode or "quick"
    if args.write and mode_name != "full":
        parser.error(f"--write takes --full: {RESULTS_MD.name} holds the latest full run")
    clients = tuple(c for c in args.clients.split(",") if c)
    if unknown := set(clients) - set(CLIENTS):
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    if CCXT in clients and importlib.util.find_spec("ccxt") is None:
        print("ccxt is not installed (pip install -e '.[bench]'): its baseline is left out")
        clients = tuple(c for c in clients if c != CCXT)
    plan = plan_for(mode_name, clients)
    if args.shapes or args.latencies:
        shapes = [SHAPES[n] for n in (args.shapes or ",".join(SHAPES)).split(",")]
        latencies = [float(x) for x in (args.latencies or "0.02,0.3").split(",")]
        plan = dataclasses.replace(plan, util=cases(shapes, latencies, clients))
    sections = tuple(args.only or DEFAULT_SECTIONS[mode_name])
    env = Env(
        args.engine_src.resolve() if args.engine_src else None,
        tuple(shlex.split(args.engine_args)),
    )
    out = args.out.resolve()
    started, load = time.monotonic(), os.getloadavg()[0]

    util = []
    if "utilisation" in sections:
        print("limit utilisation", flush=True)
        util = utilisation.run_all(plan.util, out, env, plan.repeats)
    over = None
    if "overhead" in sections:
        print("engine overhead", flush=True)
        over = overhead.measure(plan.overhead_sizes, plan.repeats, out, env)
    rows = []
    if "scale" in sections:
        print("scale of input", flush=True)
        rows = scale.measure(plan.scale_sizes, plan.scale_runs, out, env, plan.repeats)

    dist = []
    if "distributed" in sections:
        print("distributed mode (Redis)", flush=True)
        dist = distributed.measure(out, env)

    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    minutes = (time.monotonic() - started) / 60
    text = render(command.strip(), util, over, rows, load, minutes, plan.repeats)
    if dist:
        text += "\n\n" + distributed.render(dist)
    print(f"\n{text}")
    if args.markdown:
        args.markdown.write_text(text)
    if args.write:
        write_results(RESULTS_MD, text)
        print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
