"""Limit utilisation: each client runs each shape against a fresh simulator process.

Makespan is the simulator's, from the first follow request's arrival to the last answer
written, so interpreter start-up and job-file loading count for no client. It is set against
two lower bounds: the issue's minimum (busiest key's jobs / rate) and the best a sliding-window
limit allows (bursts of 10 one window apart, plus one latency).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Env, command, is_engine
from bench.measure import Usage, run_measured
from bench.shapes import Shape, write_shape
from bench.simserver import SimProcess, SimStats


@dataclass(frozen=True, slots=True)
class UtilRow:
    shape: Shape
    latency: float
    client: str
    stats: SimStats
    usage: Usage
    #: The client's own tally of outcomes (the baselines print one), else None.
    tally: dict[str, int] | None
    #: The makespans of every repeat of this case, this row's among them.
    makespans: tuple[float, ...] = ()

    @property
    def minimum(self) -> float:
        return self.shape.minimum()

    @property
    def sliding_best(self) -> float:
        return self.shape.sliding_best(self.latency)

    @property
    def makespan(self) -> float:
        return self.stats.makespan or float("nan")

    @property
    def to_exit(self) -> float:
        """Seconds from the first arrival until the client process had exited: the makespan
        plus whatever the client still did with the answers, and its shutdown."""
        first = self.stats.first_arrival
        return float("nan") if first is None else self.usage.ended - first

    @property
    def failed(self) -> int:
        """Jobs never accepted by the simulator."""
        return self.shape.jobs - (self.stats.accepted - self.stats.duplicates)


def run_one(shape: Shape, latency: float, client: str, out: Path, env: Env) -> UtilRow:
    files = write_shape(shape, out / shape.name)
    name = f"{shape.name}-{latency * 1000:g}ms-{client.replace(' ', '')}"
    with SimProcess(files.accounts_json, latency, env=env.vars()) as sim:
        results = out / shape.name / f"{name}.results.jsonl"
        argv = command(client, files, sim.url, results, env)
        usage = run_measured(argv, out / "logs", name, env=env.vars())
        stats = sim.stats()
    tally = None
    if not is_engine(client) and usage.returncode == 0:
        tally = json.loads(usage.stdout.strip().splitlines()[-1])
    return UtilRow(shape, latency, client, stats, usage, tally)


def run_all(
    plan: list[tuple[Shape, float, str]], out: Path, env: Env, repeats: int = 1
) -> list[UtilRow]:
    """Each case ``repeats`` times (once when its minimum is over 5 s: those vary little),
    keeping the run with the median makespan: the machine is shared, a stray run is not news."""
    rows = []
    for shape, latency, client in plan:
        runs = []
        for _ in range(repeats if shape.minimum() <= 5 else 1):
            row = run_one(shape, latency, client, out, env)
            print(
                f"  {shape.name:8} {latency * 1000:4.0f} ms {client:6} makespan "
                f"{row.makespan:7.3f} s  429s {row.stats.http_429:4}  failed {row.failed:4}  "
                f"CPU {row.usage.cpu:5.2f} s (simulator {row.stats.cpu:5.2f} s)",
                flush=True,
            )
            runs.append(row)
        runs.sort(key=lambda r: r.makespan)
        median = runs[(len(runs) - 1) // 2]
        rows.append(dataclasses.replace(median, makespans=tuple(r.makespan for r in runs)))
    return rows
