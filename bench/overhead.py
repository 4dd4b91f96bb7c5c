"""Engine overhead: the rate limit lifted, no latency, so the engine's own CPU is the limit.

The engine (``follow-engine run --rate-limit 100000``) sends N requests over 20 keys to a
simulator in another process. CPU comes from the kernel for the engine process alone. Start-up
(interpreter, imports) is the same at any N, so the CPU per 1,000 requests is also given as
the difference of two sizes; the part of it spent loading the job file is measured with
``follow-engine validate`` on the same files and taken out, leaving the cost of sending.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.clients import BASELINE, Env, engine_command
from bench.measure import Usage, run_measured
from bench.shapes import Shape, write_shape
from bench.simserver import SimProcess, SimStats
from bench.validate import validate_command

KEYS = 20
#: The options that lift the limit: far above XT's, which the engine refuses unless told.
LIFTED = ("--rate-limit", "100000", "--allow-over-limit")


@dataclass(frozen=True, slots=True)
class OverheadRun:
    requests: int
    run: Usage
    stats: SimStats
    validate: Usage

    @property
    def rate(self) -> float:
        """Requests per second between the first arrival and the last answer."""
        return self.stats.arrivals / (self.stats.makespan or float("nan"))


@dataclass(frozen=True, slots=True)
class Overhead:
    small: OverheadRun
    large: OverheadRun
    repeats: int

    @property
    def cpu_per_1000(self) -> float:
        """Whole engine process, start-up included, at the large size."""
        return self.large.run.cpu / self.large.requests * 1000

    @property
    def marginal_per_1000(self) -> float:
        """One more 1,000 jobs: loading them and sending them."""
        return _slope(self.small.run.cpu, self.large.run.cpu, self.small, self.large)

    @property
    def load_per_1000(self) -> float:
        return _slope(self.small.validate.cpu, self.large.validate.cpu, self.small, self.large)

    @property
    def send_per_1000(self) -> float:
        return self.marginal_per_1000 - self.load_per_1000


def _slope(a: float, b: float, small: OverheadRun, large: OverheadRun) -> float:
    return (b - a) / (large.requests - small.requests) * 1000


def _once(requests: int, out: Path, env: Env, tag: str) -> OverheadRun:
    shape = Shape.of(f"overhead-{requests}", (KEYS, requests // KEYS))
    files = write_shape(shape, out / shape.name)
    validate = run_measured(
        validate_command(files.jobs_yaml), out / "logs", f"{tag}-validate", env=env.vars()
    )
    with SimProcess(files.accounts_json, 0.0, rate_limit=1e9, env=env.sim_vars()) as sim:
        results = out / shape.name / "results.jsonl"
        argv = engine_command(files, sim.url, results, *env.engine_args, *LIFTED, env=env)
        run = run_measured(argv, out / "logs", f"{tag}-run", env=env.vars())
        stats = sim.stats()
    return OverheadRun(requests, run, stats, validate)


def measure(sizes: tuple[int, int], repeats: int, out: Path, env: Env) -> list[Overhead]:
    """Each size ``repeats`` times; the run with the median rate is kept for each. With a
    baseline tree, its engine runs after this one's every time: the load, drifting, falls on
    both alike. This tree's figures first, then the baseline's."""
    trees = {"engine": env} | ({BASELINE: env.of(BASELINE)} if env.baseline_src else {})
    kept: dict[str, list[OverheadRun]] = {name: [] for name in trees}
    for size in sizes:
        runs: dict[str, list[OverheadRun]] = {name: [] for name in trees}
        for i in range(repeats):
            for name, tree in trees.items():
                runs[name].append(_once(size, out, tree, f"overhead-{name}-{size}-{i}"))
        for name, done in runs.items():
            median = statistics.median_low(r.rate for r in done)
            run = next(r for r in done if r.rate == median)
            print(
                f"  overhead {name:8} {size:6} requests: {run.rate:6.0f} req/s, "
                f"CPU {run.run.cpu:5.2f} s, peak RSS {run.run.peak_rss_mb:4.0f} MB",
                flush=True,
            )
            kept[name].append(run)
    return [Overhead(small, large, repeats) for small, large in kept.values()]
