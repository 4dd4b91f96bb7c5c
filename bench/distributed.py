"""The distributed mode: workers on Redis against the simulator in its own process.

Each case starts a fresh ``redis-server`` and simulator, the workers (``follow-engine worker``,
each sending from its own loopback address: 127.0.0.2-4 stand for three hosts), and then
``follow-engine run JOBS.yaml --redis URL``, which submits and follows until every job is
recorded. Makespan is the simulator's (first arrival to last answer), set against the
sliding-window bound: per key, (ceil(n / rate) - 1) windows after its first request, plus the
shortest latency. Worker CPU comes from the kernel (``os.wait4``) once each worker is stopped;
Redis round trips are the workers' own count, EVALSHA calls Redis's (INFO commandstats).
The same v4 campaign is also run by one ``follow-engine run`` process without Redis, against
the same simulator: the mode the distributed one is set against (its CPU in the worker column).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from bench.clients import Env, engine_command
from bench.measure import run_measured
from bench.redis_server import RedisServer
from bench.shapes import Shape, write_shape
from bench.simserver import SimProcess, SimStats
from bench.tables import table
from bench.validate import follow_engine
from engine.simulator import max_in_window

IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
#: Latency from LATENCY to LATENCY + JITTER, drawn per answer.
LATENCY, JITTER = 0.05, 0.25
V4 = Shape.of("v4", (20, 50), (1, 200))
V1 = Shape.of("v1", (6, 10))
KILL = Shape.of("kill", (10, 30))


@dataclass
class Case:
    name: str
    workers: int
    stats: SimStats
    arrivals: list[tuple[float, str, int, str]]
    shape: Shape
    rate: float
    worker_cpu: float
    round_trips: int
    evalsha: int
    #: The kill case: seconds from the kill until its jobs were taken again, and outcomes.
    retaken_after: float | None = None
    outcomes: Counter[str] | None = None
    #: The kill case: outcomes found in place at the exchange, recorded without sending (v1).
    reconciled: int = 0

    @property
    def makespan(self) -> float:
        return self.stats.makespan or float("nan")

    @property
    def ideal(self) -> float:
        """Per key, its first arrival, then ceil(n / rate) - 1 windows; plus one latency."""
        first: dict[str, float] = {}
        for t, key, _, _ in sorted(self.arrivals):
            first.setdefault(key, t)
        start = min(first.values())
        lanes = max(1, math.floor(self.rate))
        if self.rate < 10:  # per IP: the jobs share the workers' windows
            windows = math.ceil(self.shape.jobs / (lanes * self.workers)) - 1
            return windows + LATENCY
        sent = Counter(key for _, key, _, _ in self.arrivals)
        windows = (first[k] - start + math.ceil(n / lanes) - 1 for k, n in sent.items())
        return max(windows) + LATENCY

    def max_per_ip(self) -> int:
        by_ip: defaultdict[str, list[float]] = defaultdict(list)
        for t, _, _, ip in self.arrivals:
            by_ip[ip].append(t)
        return max(max_in_window(sorted(ts), 1.0) for ts in by_ip.values())


def _v1(text: str) -> str:
    return text.replace("  api: v4", "  api: v1").replace("leaderOrderId", "leaderAccountId")


def run_single(name: str, shape: Shape, out: Path, env: Env) -> Case:
    """The same campaign run by one process without Redis (``follow-engine run``), against
    the same simulator: what the distributed mode is set against."""
    directory = out / "distributed" / name
    files = write_shape(shape, directory)
    extra = ("--jitter", str(JITTER))
    with SimProcess(files.accounts_json, LATENCY, 10.0, env.vars(), *extra) as sim:
        run = run_measured(
            engine_command(files, sim.url, directory / "results.jsonl"),
            directory,
            "run",
            env=env.vars(),
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return Case(name, 0, sim.stats(), sim.arrivals(), shape, 10.0, run.cpu, 0, 0)


def run_case(
    name: str,
    shape: Shape,
    workers: int,
    out: Path,
    env: Env,
    *,
    v1: bool = False,
    kill_at: float | None = None,
    margin: float | None = None,
) -> Case:
    directory = out / "distributed" / name
    files = write_shape(shape, directory, None if margin is None else {"margin": margin})
    if v1:
        files.jobs_yaml.write_text(_v1(files.jobs_yaml.read_text()))
    rate = 2.0 if v1 else 10.0
    extra = ("--jitter", str(JITTER), *(("--per-ip",) if v1 else ()))
    shutil.rmtree(directory / "redis", ignore_errors=True)  # a fresh Redis: nothing ok yet
    redis = RedisServer(directory / "redis")
    redis.start()
    try:
        with SimProcess(files.accounts_json, LATENCY, rate, env.vars(), *extra) as sim:
            return _measure(
                name, shape, workers, rate, files.jobs_yaml, redis.url, sim, directory, env, kill_at
            )
    finally:
        redis.stop()


def _measure(
    name: str,
    shape: Shape,
    workers: int,
    rate: float,
    jobs: Path,
    url: str,
    sim: SimProcess,
    directory: Path,
    env: Env,
    kill_at: float | None,
) -> Case:
    client = Redis.from_url(url, decode_responses=True)
    procs = []
    for i in range(workers):
        err = (directory / f"worker{i}.err").open("w")
        command = [follow_engine(), "worker", "--redis", url, "--jobs", str(jobs)]
        command += ["--source-ip", IPS[i]]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env.vars())
        procs.append((process, err))
    before = _evalsha(client)
    command = [
        follow_engine(),
        "run",
        str(jobs),
        "--redis",
        url,
        "--base-url",
        sim.url,
        "--results",
        str(directory / "results.jsonl"),
        "--fresh",
    ]
    retaken = None
    if kill_at is None:
        run = run_measured(command, directory, "run", env=env.vars())
        assert run.returncode == 0, run.stderr[-2000:]
    else:
        runner = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env.vars()
        )
        retaken = _kill_one(client, sim, procs, int(shape.jobs * kill_at))
        assert runner.wait(timeout=300) == 0
    evalsha = _evalsha(client) - before
    cpu, trips = 0.0, 0
    for process, _ in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)  # the one killed is a zombie: no matter
    for process, err in procs:
        _, _, usage = os.wait4(process.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        err.close()
        trips += sum(int(w) for w in _trips(Path(err.name).read_text()))
    outcomes, reconciled = _outcomes(client) if kill_at is not None else (None, 0)
    client.close()
    stats = sim.stats()
    return Case(
        name,
        workers,
        stats,
        sim.arrivals(),
        shape,
        rate,
        cpu,
        trips,
        evalsha,
        retaken,
        outcomes,
        reconciled,
    )


def _trips(text: str) -> list[str]:
    """The round trips each worker counted, from its last line."""
    lines = text.splitlines()
    return [line.split("after ")[1].split()[0] for line in lines if "round trips" in line]


def _evalsha(client: Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _kill_one(client: Redis, sim: SimProcess, procs: list[Any], after: int) -> float:
    """Once ``after`` requests arrived, kill -9 the worker holding most jobs; seconds until
    another worker holds one of them (or recorded it)."""
    while sim.stats().arrivals < after:
        time.sleep(0.05)
    [taken] = client.keys("fe:c:*:taken")
    held = client.hgetall(taken)
    victim = Counter(held.values()).most_common(1)[0][0]
    jobs = {job for job, worker in held.items() if worker == victim}
    pid = int(victim.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    done = taken.replace(":taken", ":done")
    while True:
        now = client.hgetall(taken)
        if any(now.get(j) not in (None, victim) for j in jobs) or any(
            line and f'"worker":"{victim}"' not in line for line in client.hmget(done, list(jobs))
        ):
            return time.monotonic() - killed
        time.sleep(0.02)


def _outcomes(client: Redis) -> tuple[Counter[str], int]:
    """Outcomes logged per job, and how many were found in place (reconciled, unsent)."""
    [log] = client.keys("fe:c:*:log")
    entries = [fields for _, fields in client.xrange(log)]
    reconciled = sum(1 for fields in entries if '"reconciled":true' in fields["l"])
    return Counter(fields["j"] for fields in entries), reconciled


def measure(out: Path, env: Env) -> list[Case]:
    cases = []
    for name, shape, workers, v1, kill, margin in (
        ("v4, 3 workers", V4, 3, False, None, None),
        ("v4, 3 workers, margin 0.1", V4, 3, False, None, 0.1),
        ("v4, 1 worker", V4, 1, False, None, None),
        ("v4, one process, no Redis", V4, 0, False, None, None),
        ("v1, 1 worker", V1, 1, True, None, None),
        ("v1, 3 workers", V1, 3, True, None, None),
        ("v4, kill -9 of 1 of 3", KILL, 3, False, 0.33, None),
        ("v1, kill -9 of 1 of 3", V1, 3, True, 0.33, None),
    ):
        directory = "".join(c for c in name if c.isalnum() or c == "-")
        if workers:
            case = run_case(directory, shape, workers, out, env, v1=v1, kill_at=kill, margin=margin)
        else:
            case = run_single(directory, shape, out, env)
        case.name = name
        print(
            f"  {name:22} makespan {case.makespan:7.3f} s (ideal {case.ideal:6.2f}), "
            f"429s {case.stats.http_429}, worker CPU {case.worker_cpu:5.2f} s",
            flush=True,
        )
        cases.append(case)
    return cases


def render(cases: list[Case]) -> str:
    rows = []
    for c in cases:
        n = c.stats.arrivals or 1
        rows.append(
            [
                f"{c.name} ({c.shape.describe()})",
                c.workers or "- (`run`)",
                f"{c.makespan:.3f}",
                f"{c.ideal:.2f}",
                f"**{c.makespan / c.ideal:.3f}**",
                c.stats.http_429,
                c.stats.max_in_window,
                c.max_per_ip(),
                c.stats.duplicates,
                f"{c.worker_cpu / n * 1000:.2f}",
                f"{c.round_trips / n:.1f}" if c.workers else "-",
                f"{c.evalsha / n:.1f}" if c.workers else "-",
            ]
        )
    head = [
        "case",
        "workers",
        "makespan s",
        "ideal s",
        "makespan / ideal",
        "429s",
        "max/key (v1: per IP)/1s",
        "max/IP/1s",
        "sent twice",
        "worker CPU ms/req",
        "Redis round trips/req",
        "EVALSHA/req",
    ]
    lines = ["## Distributed mode (Redis)", "", table(head, rows), ""]
    by = {c.name: c for c in cases}
    one, three = by.get("v1, 1 worker"), by.get("v1, 3 workers")
    if one and three:
        faster = one.makespan / three.makespan
        lines.append(
            f"- v1, 60 jobs: 3 workers on 3 source IPs **{faster:.2f}x** faster than 1 "
            "(goal >= 2.7)."
        )
    for c in cases:
        if c.outcomes is not None:
            once = sum(1 for n in c.outcomes.values() if n == 1)
            lines.append(
                f"- {c.name}: its jobs taken again after "
                f"**{c.retaken_after:.2f} s**; "
                f"follows sent twice: {c.stats.duplicates}; found in place at the exchange "
                f"and recorded unsent: {c.reconciled}; outcomes recorded exactly once: "
                f"{once}/{c.shape.jobs} ({len(c.outcomes)} jobs recorded)."
            )
    return "\n".join(lines)
