"""Limit utilisation: each client runs each shape against a fresh simulator process.

Two makespans end at the last answer written (the simulator's clock, ``time.monotonic``): one
from the first follow request's arrival, one from the command's start (the moment the bench
started the client's process, taken the same way for every client). Both are set against the
sliding best (``shapes.sliding_best``), the least any client can take under the limit. A client
found below the least its own admitted requests allow would prove the bound wrong, and every
ratio with it: the bench stops there (``BoundError``).

Repeats are interleaved, engine, ideal, naive, ccxt, engine, ..., so that the load of a shared
machine, drifting, falls on every client alike.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Env, command, is_engine
from bench.measure import Usage, run_measured
from bench.shapes import Shape, sliding_best, write_shape
from bench.simserver import SimProcess, SimStats

#: Cases whose sliding best is longer than this run once: long runs vary little.
REPEAT_UNDER_S = 5.0


class BoundError(RuntimeError):
    """A client beat the least its requests allow: the bound is wrong."""


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
    def sliding_best(self) -> float:
        """The campaign's bound: every job sent once, the limit kept."""
        return self.shape.sliding_best(self.latency)

    @property
    def admitted_best(self) -> float:
        """The bound of the requests the limit let through from this client: the campaign's
        for a client that kept the limit, less for one refused (it gave up those jobs), more
        for one that retried."""
        return sliding_best(self.stats.admitted.values(), self.latency)

    @property
    def makespan(self) -> float:
        """From the first arrival to the last answer."""
        return self.stats.makespan or float("nan")

    @property
    def from_start(self) -> float:
        """From the command's start (its process started) to the last answer."""
        last = self.stats.last_answer
        return float("nan") if last is None else last - self.usage.started

    @property
    def to_first_arrival(self) -> float:
        """From the command's start to the first request's arrival."""
        first = self.stats.first_arrival
        return float("nan") if first is None else first - self.usage.started

    @property
    def connect_to_arrival(self) -> float:
        """From the first connection accepted to the first request's arrival: how long the
        client's sender, once started, kept its first request back."""
        first, connect = self.stats.first_arrival, self.stats.first_connect
        return float("nan") if first is None or connect is None else first - connect

    @property
    def exit_after_answer(self) -> float:
        """From the last answer to the client process having exited."""
        last = self.stats.last_answer
        return float("nan") if last is None else self.usage.ended - last

    @property
    def cpu_per_request_us(self) -> float:
        """The whole process's CPU (start-up and loading included) per request sent."""
        return self.usage.cpu / self.stats.arrivals * 1e6 if self.stats.arrivals else float("nan")

    @property
    def failed(self) -> int:
        """Jobs never accepted by the simulator."""
        return self.shape.jobs - (self.stats.accepted - self.stats.duplicates)


def check_bound(row: UtilRow) -> None:
    """Raise ``BoundError`` when ``row`` beat the least its admitted requests allow."""
    bound = row.admitted_best
    if row.makespan < bound * (1 - 1e-9):
        raise BoundError(
            f"{row.client} on {row.shape.name} at {row.latency * 1000:g} ms took "
            f"{row.makespan:.4f} s from its first arrival, below the {bound:.4f} s that its "
            f"{sum(row.stats.admitted.values())} admitted requests allow: the bound is wrong, "
            "and so is every ratio against it"
        )


def run_one(shape: Shape, latency: float, client: str, out: Path, env: Env) -> UtilRow:
    files = write_shape(shape, out / shape.name)
    name = f"{shape.name}-{latency * 1000:g}ms-{client.replace(' ', '')}"
    with SimProcess(files.accounts_json, latency, env=env.sim_vars()) as sim:
        results = out / shape.name / f"{name}.results.jsonl"
        argv = command(client, files, sim.url, results, env)
        usage = run_measured(argv, out / "logs", name, env=env.of(client).vars())
        stats = sim.stats()
    tally = None
    if not is_engine(client) and usage.returncode == 0:
        tally = json.loads(usage.stdout.strip().splitlines()[-1])
    row = UtilRow(shape, latency, client, stats, usage, tally)
    check_bound(row)
    return row


def run_all(
    plan: list[tuple[Shape, float, str]], out: Path, env: Env, repeats: int = 1
) -> list[UtilRow]:
    """Each case ``repeats`` times (once when its sliding best is over ``REPEAT_UNDER_S``), the
    clients of a shape and latency taking turns, keeping each client's run with the median
    makespan: the machine is shared, a stray run is not news."""
    groups: dict[tuple[Shape, float], list[str]] = {}
    for shape, latency, client in plan:
        groups.setdefault((shape, latency), []).append(client)
    rows = []
    for (shape, latency), clients in groups.items():
        runs: dict[str, list[UtilRow]] = {client: [] for client in clients}
        for _ in range(repeats if shape.sliding_best(latency) <= REPEAT_UNDER_S else 1):
            for client in clients:
                row = run_one(shape, latency, client, out, env)
                print(
                    f"  {shape.name:8} {latency * 1000:4.0f} ms {client:6} makespan "
                    f"{row.makespan:7.3f} s ({row.makespan / row.sliding_best:6.3f} of the "
                    f"sliding best), from start {row.from_start:7.3f} s  429s "
                    f"{row.stats.http_429:4}  failed {row.failed:4}  CPU {row.usage.cpu:5.2f} s "
                    f"(simulator {row.stats.cpu:5.2f} s)",
                    flush=True,
                )
                runs[client].append(row)
        for done in runs.values():
            done.sort(key=lambda r: r.makespan)
            median = done[(len(done) - 1) // 2]
            rows.append(dataclasses.replace(median, makespans=tuple(r.makespan for r in done)))
    return rows
