"""Where the engine's time goes: a run under py-spy, summed by function.

``python -m bench.profile [--requests N]`` runs ``follow-engine run --rate-limit 100000``
against the simulator (another process, not sampled) under ``py-spy record`` and prints the
functions with the largest share of samples, whole (inclusive) and own (self).
``--shape wide [--latency 0.02] [--runs 5]`` profiles one of the bench's shapes at the
exchange's limit instead, its runs' samples summed. The raw stacks are kept in
``bench/out/profile/stacks-*.txt`` for a flame graph tool.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path

from bench.clients import REPO, Env, engine_command
from bench.measure import run_measured
from bench.overhead import KEYS, LIFTED
from bench.shapes import RATE_LIMIT, SHAPES, Shape, write_shape
from bench.simserver import SimProcess


def main_thread_stacks(path: Path) -> list[tuple[list[str], int]]:
    """The main thread's stacks (the thread that ran the script's ``<module>``) of a raw
    py-spy file recorded with ``--threads``, with their counts: other threads, such as
    pycares' resolver waiting for work, are not the engine's time."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        stacks.append((thread.split(":")[0], [re.sub(r":\d+\)$", ")", f) for f in frames], count))
    main = {thread for thread, frames, _ in stacks if frames and frames[0].startswith("<module>")}
    return [(frames, int(count)) for thread, frames, count in stacks if thread in main and frames]


def summarise(stacks: list[Path], pattern: str, top: int) -> str:
    """Per function, the share of the main thread's samples it was on the stack (inclusive)
    and on top (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for frames, samples in (s for path in stacks for s in main_thread_stacks(path)):
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples of the main thread", "inclusive (matching):"]
    chosen = [(f, n) for f, n in inclusive.most_common() if re.search(pattern, f)][:top]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in chosen]
    lines.append("self (all):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--shape", choices=SHAPES, help="a bench shape at the limit instead")
    parser.add_argument("--latency", type=float, default=0.02, help="with --shape: seconds")
    parser.add_argument("--runs", type=int, default=1, help="runs whose samples are summed")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--match", default=r"engine/|aiohttp/", help="regex for inclusive rows")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "profile")
    parser.add_argument(
        "--engine-args", default="", help="extra `follow-engine run` options, shell-quoted"
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        parser.error("py-spy is not installed: pip install py-spy (it is in the bench extra)")
    if args.shape:
        shape, latency, rate_limit, lifted = SHAPES[args.shape], args.latency, RATE_LIMIT, ()
    else:
        shape = Shape.of(f"profile-{args.requests}", (KEYS, args.requests // KEYS))
        latency, rate_limit, lifted = 0.0, 1e9, LIFTED
    files = write_shape(shape, args.out / shape.name)
    env = Env(engine_args=tuple(shlex.split(args.engine_args)))
    stacks = []
    for run in range(args.runs):
        stacks.append(args.out / f"stacks-{shape.name}-{run}.txt")
        with SimProcess(files.accounts_json, latency, rate_limit, env=env.vars()) as sim:
            results = args.out / "results.jsonl"
            engine = engine_command(files, sim.url, results, *env.engine_args, *lifted)
            command = [spy, "record", "--format", "raw", "--threads", "--rate", str(args.rate)]
            command += ["--output", str(stacks[-1]), "--", *engine]
            run_measured(command, args.out, "py-spy", env=env.vars())
    print(summarise(stacks, args.match, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
