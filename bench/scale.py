"""Scale of input: big job files over 1,000 accounts, validated and run.

Validation is ``follow-engine validate`` (wall time includes start-up, as the user waits for
it). The run sends every job to a simulator in another process with the rate limit lifted, so
it ends in seconds rather than hours; its peak RSS is the engine's own (kernel rusage).
Loading is linear when the time per job stays flat from the smallest file to the largest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Env, engine_command
from bench.measure import Usage, run_measured
from bench.overhead import LIFTED
from bench.shapes import Shape, ShapeFiles, write_shape
from bench.simserver import SimProcess, SimStats
from bench.validate import validate_command

ACCOUNTS = 1000


@dataclass(frozen=True, slots=True)
class ScaleRow:
    jobs: int
    files: ShapeFiles
    file_mb: float
    validate: Usage
    #: None when this size was only validated.
    run: Usage | None = None
    stats: SimStats | None = None
    results_mb: float | None = None

    @property
    def validate_us_per_job(self) -> float:
        return self.validate.wall / self.jobs * 1e6


def measure(
    sizes: tuple[int, ...], run_sizes: tuple[int, ...], out: Path, env: Env, repeats: int = 1
) -> list[ScaleRow]:
    """Validation runs ``repeats`` times per size and the fastest counts: it is pure CPU, so
    the fastest run is the one the other users of a shared machine disturbed least."""
    rows = []
    for jobs in sizes:
        accounts = min(ACCOUNTS, jobs)
        shape = Shape.of(f"scale-{jobs}", (accounts, jobs // accounts))
        files = write_shape(shape, out / shape.name)
        name = f"scale-{jobs}"
        tries = [
            run_measured(
                validate_command(files.jobs_yaml), out / "logs", f"{name}-validate", env=env.vars()
            )
            for _ in range(repeats)
        ]
        validate = min(tries, key=lambda usage: usage.wall)
        row = ScaleRow(jobs, files, files.jobs_yaml.stat().st_size / 1e6, validate)
        if jobs in run_sizes:
            results = out / shape.name / "results.jsonl"
            with SimProcess(files.accounts_json, 0.0, rate_limit=1e9, env=env.vars()) as sim:
                argv = engine_command(files, sim.url, results, *env.engine_args, *LIFTED)
                run = run_measured(argv, out / "logs", f"{name}-run", env=env.vars())
                stats = sim.stats()
            row = dataclasses.replace(
                row, run=run, stats=stats, results_mb=results.stat().st_size / 1e6
            )
        print(
            f"  scale {jobs:6} jobs: validate {validate.wall:5.2f} s "
            f"({row.validate_us_per_job:.0f} us/job, peak RSS {validate.peak_rss_mb:.0f} MB)"
            + (f", run peak RSS {row.run.peak_rss_mb:.0f} MB" if row.run else ""),
            flush=True,
        )
        rows.append(row)
    return rows
