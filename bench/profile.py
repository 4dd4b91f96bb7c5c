"""Where the engine's time goes: the overhead run under py-spy, summed by function.

``python -m bench.profile [--requests N]`` runs ``follow-engine run --rate-limit 100000``
against the simulator (another process, not sampled) under ``py-spy record`` and prints the
functions with the largest share of samples, whole (inclusive) and own (self). The raw stacks
are kept in ``bench/out/profile/stacks.txt`` for a flame graph tool.
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
from bench.shapes import Shape, write_shape
from bench.simserver import SimProcess


def summarise(stacks: Path, pattern: str, top: int) -> str:
    """Per function, the share of samples it was on the stack (inclusive) and on top (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "inclusive (matching):"]
    chosen = [(f, n) for f, n in inclusive.most_common() if re.search(pattern, f)][:top]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in chosen]
    lines.append("self (all):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
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
    shape = Shape.of(f"profile-{args.requests}", (KEYS, args.requests // KEYS))
    files = write_shape(shape, args.out / shape.name)
    stacks = args.out / "stacks.txt"
    env = Env(engine_args=tuple(shlex.split(args.engine_args)))
    with SimProcess(files.accounts_json, 0.0, rate_limit=1e9, env=env.vars()) as sim:
        results = args.out / "results.jsonl"
        engine = engine_command(files, sim.url, results, *env.engine_args, *LIFTED)
        command = [spy, "record", "--format", "raw", "--rate", str(args.rate)]
        command += ["--output", str(stacks), "--", *engine]
        run_measured(command, args.out, "py-spy", env=env.vars())
    print(summarise(stacks, args.match, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
