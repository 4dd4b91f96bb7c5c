"""``python -m bench``: run the benchmarks, print the tables, optionally rewrite RESULTS.md.

``--quick`` (the default) takes under two minutes; ``--full`` runs everything the issue asks
for; ``--smoke`` runs a tiny campaign through every section in seconds (for the test suite).
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import importlib.util
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import distributed, overhead, readpaths, scale, startup, utilisation
from bench.clients import AIOHTTP, BASELINE, CCXT, CLIENTS, ENGINE, IDEAL, REPO, Env
from bench.report import Results, render, write_results
from bench.shapes import RATE_LIMIT, SHAPES, TINY, Shape

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = ("utilisation", "overhead", "scale", "startup", "distributed")
#: Sections a run without --only runs: the distributed mode's (two minutes) with --full only.
DEFAULT_SECTIONS = {"smoke": SECTIONS[:4], "quick": SECTIONS[:4], "full": SECTIONS}
#: Runs of each start-up command, by mode.
STARTUP_RUNS = {"smoke": 2, "quick": 15, "full": 40}


@dataclass(frozen=True)
class Plan:
    util: list[tuple[Shape, float, str]]
    overhead_sizes: tuple[int, int]
    #: Runs of each short utilisation case and of each overhead size; the median is kept.
    repeats: int
    scale_sizes: tuple[int, ...]
    scale_runs: tuple[int, ...]
    #: Scale sizes whose read paths (resume, dry run) are measured.
    read_sizes: tuple[int, ...]
    #: Validate a job file at the 64 MiB limit too (about a minute).
    dense: bool = False


def cases(
    shapes: list[Shape], latencies: list[float], clients: tuple[str, ...]
) -> list[tuple[Shape, float, str]]:
    """Every client on every shape at every latency, the ideal client and aiohttp alone next
    to the engine on the shapes they apply to (every key's jobs within one window)."""
    util = []
    for shape in shapes:
        for latency in latencies:
            for client in clients:
                util.append((shape, latency, client))
                if client == ENGINE and max(shape.jobs_per_key) <= RATE_LIMIT:
                    util += [(shape, latency, IDEAL), (shape, latency, AIOHTTP)]
    return util


def plan_for(mode: str, clients: tuple[str, ...]) -> Plan:
    uniform, skewed, wide = SHAPES["uniform"], SHAPES["skewed"], SHAPES["wide"]
    if mode == "smoke":
        util = cases([TINY], [0.005], tuple(c for c in clients if c != CCXT))
        return Plan(util, (100, 200), 1, (200,), (200,), (200,))
    if mode == "quick":
        util = cases([uniform, wide], [0.02], clients)
        util += cases([skewed], [0.02], (ENGINE,)) if ENGINE in clients else []
        return Plan(util, (2000, 10000), 1, (10000,), (10000,), (10000,))
    util = cases([uniform, skewed, wide], [0.02, 0.3], clients)
    sizes = (10_000, 50_000, 100_000)
    return Plan(util, (5000, 40000), 3, sizes, sizes, (100_000,), dense=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    for name, what in (
        ("quick", "20 ms only, fewer sizes, one run each: under two minutes (the default)"),
        ("full", "every shape, latency, size and repeat the issue asks for: 10 to 15 minutes"),
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
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="run this source tree's engine (an older commit) as the client 'baseline' beside "
        "this one's, interleaved, in utilisation and overhead; start-up: its commands beside",
    )
    args = parser.parse_args(argv)
    mode_name = args.mode or "quick"
    if args.write and mode_name != "full":
        parser.error(f"--write takes --full: {RESULTS_MD.name} holds the latest full run")
    clients = tuple(c for c in args.clients.split(",") if c)
    if args.baseline_src and ENGINE in clients:  # the engine before, beside the engine after
        at = clients.index(ENGINE) + 1
        clients = (*clients[:at], BASELINE, *clients[at:])
    if unknown := set(clients) - {*CLIENTS, BASELINE}:
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
        args.baseline_src.resolve() if args.baseline_src else None,
    )
    out = args.out.resolve()
    # Every client starts from bytecode, as installed code does: compiled once here, where
    # PYTHONDONTWRITEBYTECODE would have each process compile what changed since.
    trees = {REPO / "bench", (env.engine_src or REPO) / "engine"}
    for tree in trees | ({env.baseline_src / "engine"} if env.baseline_src else set()):
        compileall.compile_dir(tree, quiet=1)
    started = time.monotonic()
    results = Results()
    if "utilisation" in sections:
        print("limit utilisation", flush=True)
        util = utilisation.run_all(plan.util, out, env, plan.repeats)
        results = dataclasses.replace(results, util=util)
    if "overhead" in sections:
        print("engine overhead", flush=True)
        over, *base = overhead.measure(plan.overhead_sizes, plan.repeats, out, env)
        results = dataclasses.replace(
            results, overhead=over, overhead_baseline=base[0] if base else None
        )
    if "scale" in sections:
        print("scale of input and read paths", flush=True)
        rows = scale.measure(plan.scale_sizes, plan.scale_runs, out, env, plan.repeats)
        resume = [readpaths.measure_resume(r, out, env) for r in rows if r.jobs in plan.read_sizes]
        dense = readpaths.measure_dense(out, env) if plan.dense else None
        results = dataclasses.replace(results, scale=rows, resume=resume, dense=dense)

    starts = ""
    if "startup" in sections:
        print("start-up", flush=True)
        runs = STARTUP_RUNS[mode_name]
        baseline = args.baseline_src.resolve() if args.baseline_src else None
        starts = startup.table(startup.measure(runs, out, env, baseline), runs)

    dist = []
    if "distributed" in sections:
        print("distributed mode (Redis)", flush=True)
        dist = distributed.measure(out, env)

    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    minutes = (time.monotonic() - started) / 60
    text = render(command.strip(), results, _load(results), minutes, plan.repeats)
    text += f"\n\n{starts}\n" if starts else ""
    if dist:
        text += "\n\n" + distributed.render(dist)
    print(f"\n{text}")
    if args.markdown:
        args.markdown.write_text(text)
    if args.write:
        write_results(RESULTS_MD, text)
        print(f"wrote {RESULTS_MD}")
    return 0


def _load(results: Results) -> str:
    """The machine's load over the measured runs: the other users of a shared machine."""
    runs = [r.usage for r in results.util]
    runs += [usage for r in results.scale for usage in (r.validate, r.run) if usage is not None]
    loads = sorted(usage.load for usage in runs)
    if not loads:
        return "not sampled"
    return (
        f"{statistics.median(loads):.2f} median as each measured run ended "
        f"({loads[0]:.2f} to {loads[-1]:.2f})"
    )


if __name__ == "__main__":
    sys.exit(main())
