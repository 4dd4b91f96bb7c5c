"""The distributed mode end to end: a real Redis, several ``follow-engine worker`` processes
(source addresses 127.0.0.2-4 standing for three hosts), ``run --redis`` following, and the
simulated exchange in this process counting what arrived from where."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from bench.redis_server import RedisServer
from engine.simulator import SimConfig, Simulator, max_in_window
from tests.support import (
    Finished,
    accounts_of,
    engine_env,
    finish,
    job_file,
    key_of,
    last_lines,
    run_engine,
    secret_of,
    spawn,
    unused_redis_url,
)

IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass
class Cluster:
    """The workers of one test, and what the simulator saw."""

    tmp: Path
    url: str
    sim: Simulator
    env: dict[str, str]
    jobs: Path
    #: Every engine process started (workers, and a following ``run``), stopped at the end.
    workers: list[tuple[asyncio.subprocess.Process, Path, Path]] = field(default_factory=list)

    async def start_worker(
        self, ip: str, jobs: Path | None = None, *extra: str
    ) -> asyncio.subprocess.Process:
        n = len(self.workers)
        out, err = self.tmp / f"worker{n}.out", self.tmp / f"worker{n}.err"
        args = ("worker", "--redis", self.url, "--jobs", str(jobs or self.jobs), "--source-ip", ip)
        args += extra
        process = await spawn(*args, env=self.env, out=out, err=err)
        self.workers.append((process, out, err))
        return process

    async def stop_workers(self) -> list[Finished]:
        """SIGTERM to every worker still running, then each one's end (killed if it hangs)."""
        for process, _, _ in self.workers:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(
            *(finish(process, out, err, timeout=30) for process, out, err in self.workers),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Finished)]

    def worker_err(self) -> str:
        return "".join(err.read_text() for _, _, err in self.workers)


def v1_file(jobs: Mapping[str, int], base_url: str) -> str:
    text = job_file(jobs, extra=f"base_url: {base_url}\nsettings: {{api: v1}}\n")
    return text.replace("leaderOrderId", "leaderAccountId")


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[Cluster]:
    sim = Simulator(None)
    await sim.start()
    made = Cluster(tmp_path, redis_url, sim, {}, tmp_path / "jobs.yaml")
    try:
        yield made
    finally:
        await made.stop_workers()
        await sim.close()


async def setup(
    cluster: Cluster, jobs: Mapping[str, int], config: SimConfig, *, v1: bool = False
) -> None:
    """The job file and the exchange for ``jobs``, the secrets in the workers' environment."""
    cluster.sim.accounts = accounts_of(jobs)
    cluster.sim.config = config
    assert cluster.sim.base_url is not None
    text = (
        v1_file(jobs, cluster.sim.base_url)
        if v1
        else job_file(jobs, extra=f"base_url: {cluster.sim.base_url}\n")
    )
    cluster.jobs.write_text(text)
    cluster.env = engine_env(jobs)


def job_of(api_key: str, leader: int | None) -> str:
    """The job id ``job_file`` gives the follow of ``leader`` by ``api_key``."""
    return f"{api_key.removeprefix('key-')}:{leader}"


async def redis_dump(url: str) -> str:
    """Every key and value in Redis, as text."""
    client = Redis.from_url(url, decode_responses=True)
    parts = []
    for key in await client.keys("*"):
        kind = await client.type(key)
        value: Any = {
            "hash": client.hgetall,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "set": client.smembers,
            "stream": client.xrange,
            "string": client.get,
        }[kind](key)
        parts.append(f"{key} {await value}")
    await client.aclose()
    return "\n".join(parts)


async def outcome_log(url: str) -> list[dict[str, Any]]:
    """Every outcome any worker recorded, in order, of every campaign."""
    client = Redis.from_url(url, decode_responses=True)
    entries = []
    for key in await client.keys("fe:c:*:log"):
        entries += [json.loads(fields["l"]) for _, fields in await client.xrange(key)]
    await client.aclose()
    return entries


async def test_three_workers_hold_each_keys_limit_together_and_no_secret_reaches_redis(
    cluster: Cluster,
) -> None:
    jobs = {"alice": 40, "bob": 40}
    await setup(cluster, jobs, SimConfig(latency=0.05))
    for ip in IPS:
        await cluster.start_worker(ip)
    run = await run_engine(
        "run", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, workdir=cluster.tmp
    )
    assert run.code == 0, run.output
    lines, _ = last_lines(cluster.tmp / "jobs.results.jsonl")
    assert len(lines) == 80 and {line["status"] for line in lines.values()} == {"ok"}
    assert len({line["worker"] for line in lines.values()}) >= 2  # the work was shared
    # The summary's rate per key, from when the workers' requests left: near the limit, not past.
    summary = " ".join(run.out.split())
    rates = re.search(
        r"per key \(limit 10/s\): min ([\d.]+), .* max ([\d.]+) req/s over 2 keys", summary
    )
    assert rates, run.out
    assert 5 < float(rates[1]) <= float(rates[2]) <= 10
    sim = cluster.sim
    assert sim.violations == 0 and all(a.status == 200 for a in sim.arrivals)
    for account in jobs:
        assert sim.max_in_window(key_of(account)) <= 10
    assert set(sim.accepted.values()) == {1}
    for stopped in await cluster.stop_workers():
        assert stopped.code == 130, stopped.output
    dump = await redis_dump(cluster.url)
    assert "fe:c:" in dump  # the campaign is all there: jobs, outcomes, log
    for account in jobs:
        assert secret_of(account) not in dump
        assert key_of(account) not in dump  # API keys only as hashes
    assert not re.search(r"[0-9a-f]{64}", dump)  # no signature either
    assert "fe:workers" not in dump  # every worker left


async def test_a_workers_concurrency_holds_over_every_campaign_it_serves(
    cluster: Cluster,
) -> None:
    """``--concurrency 2``: two requests in flight at most, though the worker serves two
    campaigns at once (each request holds a connection, an open file of the worker)."""
    jobs = {"alice": 4, "bob": 4}
    await setup(cluster, jobs, SimConfig(latency=0.3))
    assert cluster.sim.base_url is not None
    files = [cluster.tmp / f"{account}.yaml" for account in jobs]
    for path, account in zip(files, jobs, strict=True):
        path.write_text(job_file({account: 4}, extra=f"base_url: {cluster.sim.base_url}\n"))
    await cluster.start_worker(IPS[0], files[0], "--jobs", str(files[1]), "--concurrency", "2")
    runs = await asyncio.gather(
        *(
            run_engine(
                "run",
                str(path),
                "--redis",
                cluster.url,
                env=cluster.env,
                workdir=cluster.tmp,
                name=path.stem,
            )
            for path in files
        )
    )
    assert [run.code for run in runs] == [0, 0], [run.output for run in runs]
    times = sorted(a.t for a in cluster.sim.arrivals)
    assert len(times) == 8
    # Each answered 0.3 s after it arrived: a third in 0.29 s would be a third in flight.
    assert max_in_window(times, 0.29) == 2


async def test_under_v1_each_source_ip_keeps_its_own_limit(cluster: Cluster) -> None:
    jobs = {"alice": 12, "bob": 12}
    await setup(cluster, jobs, SimConfig(latency=0.05, rate_limit=2, per_ip=True), v1=True)
    for ip in IPS:
        await cluster.start_worker(ip)
    run = await run_engine(
        "run", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, workdir=cluster.tmp
    )
    assert run.code == 0, run.output
    sim = cluster.sim
    assert sim.violations == 0
    assert {a.remote for a in sim.arrivals} == set(IPS)
    for ip in IPS:
        assert sim.max_in_window(None, remote=ip) <= 2


async def test_a_worker_killed_mid_campaign_loses_nothing(cluster: Cluster) -> None:
    jobs = {"alice": 30, "bob": 30, "carol": 30}
    await setup(cluster, jobs, SimConfig(latency=0.3))
    for ip in IPS:
        await cluster.start_worker(ip)
    out, err = cluster.tmp / "run.out", cluster.tmp / "run.err"
    run = await spawn(
        "run", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, out=out, err=err
    )
    cluster.workers.append((run, out, err))  # stopped at the end whatever happens
    await cluster.sim.wait_for_arrivals(25)
    client = Redis.from_url(cluster.url, decode_responses=True)
    [taken_key] = await client.keys("fe:c:*:taken")
    held = await client.hgetall(taken_key)
    await client.aclose()
    victim = max(set(held.values()), key=list(held.values()).count)
    pid = int(victim.split(":")[1])
    held_by = {job for job, worker in held.items() if worker == victim}
    started = zip(cluster.workers[: len(IPS)], IPS, strict=True)
    victim_ip = next(ip for (process, _, _), ip in started if process.pid == pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    done = await finish(run, out, err)
    assert done.code == 0, done.output
    lines, _ = last_lines(cluster.tmp / "jobs.results.jsonl")
    assert len(lines) == 90 and {line["status"] for line in lines.values()} == {"ok"}
    recorded = [entry["job"] for entry in await outcome_log(cluster.url)]
    assert sorted(recorded) == sorted(lines)  # each job exactly one outcome
    # Its jobs went to the others within seconds, by heartbeat.
    retaken = [
        a.t - killed_at
        for a in cluster.sim.arrivals
        if a.t > killed_at and a.remote != victim_ip and f"{a.api_key[4:]}:{a.leader_id}" in held_by
    ]
    assert retaken and min(retaken) < 6.0
    assert "declared dead" in cluster.worker_err()
    # Sent twice: only what it had on the wire, and each flagged.
    twice = {f"{key[4:]}:{leader}" for (key, leader), n in cluster.sim.accepted.items() if n > 1}
    assert twice <= held_by
    assert all(lines[job]["ambiguous"] for job in twice)


async def test_under_v1_a_dead_workers_follows_on_the_wire_are_asked_about_not_sent_again(
    cluster: Cluster,
) -> None:
    """Killed with its requests arrived and their answers 2 s away: the worker that takes its
    jobs asks the exchange (my-leaders) first, finds them followed, and records them ok
    (``reconciled``) without sending them again. Nothing is accepted twice."""
    jobs = {"alice": 3, "bob": 3}
    await setup(cluster, jobs, SimConfig(latency=2.0, rate_limit=2, per_ip=True), v1=True)
    victim_process = await cluster.start_worker(IPS[0])
    out, err = cluster.tmp / "run.out", cluster.tmp / "run.err"
    run = await spawn(
        "run", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, out=out, err=err
    )
    cluster.workers.append((run, out, err))  # stopped at the end whatever happens
    await cluster.sim.wait_for_arrivals(2)  # its two per window, unanswered for 2 s
    victim_process.kill()
    await cluster.start_worker(IPS[1])
    done = await finish(run, out, err)
    assert done.code == 0, done.output
    lines, _ = last_lines(cluster.tmp / "jobs.results.jsonl")
    assert len(lines) == 6 and {line["status"] for line in lines.values()} == {"ok"}
    reconciled = {job for job, line in lines.items() if line.get("reconciled")}
    assert len(reconciled) == 2, lines
    assert set(cluster.sim.accepted.values()) == {1}  # none sent twice
    assert len(cluster.sim.accepted) == 6
    assert all(not lines[job]["ambiguous"] for job in reconciled)


async def test_a_results_file_deleted_while_following_stops_the_run_not_the_workers(
    cluster: Cluster,
) -> None:
    """``run --redis`` notices by itself, before any outcome comes to be written (the answers
    take 6 s), and stops; the workers go on, and a second ``run --redis`` writes every outcome."""
    jobs = {"alice": 10}
    await setup(cluster, jobs, SimConfig(latency=6.0))
    await cluster.start_worker(IPS[0])
    out, err = cluster.tmp / "run.out", cluster.tmp / "run.err"
    args = ("run", str(cluster.jobs), "--redis", cluster.url)
    run = await spawn(*args, env=cluster.env, out=out, err=err)
    cluster.workers.append((run, out, err))  # stopped at the end whatever happens
    await cluster.sim.wait_for_arrivals(10)  # every job, its answer 6 s away
    results = cluster.tmp / "jobs.results.jsonl"
    results.unlink()
    done = await finish(run, out, err)
    assert await outcome_log(cluster.url) == [], "noticed only when an outcome came"
    assert done.code == 1, done.output
    assert "the results file was deleted or replaced" in done.err
    assert "the workers go on" in done.err
    again = await run_engine(*args, env=cluster.env, workdir=cluster.tmp)
    assert again.code == 0, again.output
    lines, _ = last_lines(results)
    assert len(lines) == 10 and {line["status"] for line in lines.values()} == {"ok"}
    assert set(cluster.sim.accepted.values()) == {1}


async def test_redis_restarted_mid_run_workers_wait_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    sim = Simulator(None)
    await sim.start()
    cluster = Cluster(tmp_path, server.url, sim, {}, tmp_path / "jobs.yaml")
    try:
        jobs = {"alice": 40, "bob": 40}
        await setup(cluster, jobs, SimConfig(latency=0.05))
        for ip in IPS[:2]:
            await cluster.start_worker(ip)
        out, err = tmp_path / "run.out", tmp_path / "run.err"
        run = await spawn(
            "run", str(cluster.jobs), "--redis", server.url, env=cluster.env, out=out, err=err
        )
        cluster.workers.append((run, out, err))  # stopped at the end whatever happens
        await sim.wait_for_arrivals(15)
        server.stop()
        stopped_at = time.monotonic()
        await asyncio.sleep(2.0)  # the outage
        server.start()
        restarted_at = time.monotonic()
        done = await finish(run, out, err)
        assert done.code == 0, done.output
        during = [a for a in sim.arrivals if stopped_at + 0.3 < a.t < restarted_at]
        assert during == []  # nothing sent that could not be recorded
        lines, _ = last_lines(tmp_path / "jobs.results.jsonl")
        assert len(lines) == 80 and {line["status"] for line in lines.values()} == {"ok"}
        recorded = [entry["job"] for entry in await outcome_log(server.url)]
        assert sorted(recorded) == sorted(lines)
        twice = {job_of(k, n) for (k, n), c in sim.accepted.items() if c > 1}
        assert all(lines[job]["ambiguous"] for job in twice)
        assert "lost Redis" in cluster.worker_err() and "is back" in cluster.worker_err()
    finally:
        try:
            await cluster.stop_workers()
        finally:
            await sim.close()
            server.stop()


async def test_submit_twice_queues_nothing_twice_and_status_names_accounts_nobody_serves(
    cluster: Cluster,
) -> None:
    jobs = {"alice": 3, "carol": 3}
    await setup(cluster, jobs, SimConfig())
    submit = ("submit", str(cluster.jobs), "--redis", cluster.url)
    first = await run_engine(*submit, env=cluster.env, workdir=cluster.tmp, name="s1")
    again = await run_engine(*submit, env=cluster.env, workdir=cluster.tmp, name="s2")
    assert first.code == again.code == 0
    assert "6 jobs queued" in first.err
    assert "0 jobs queued; 0 already ok, 6 already queued" in again.err
    alice_only = cluster.tmp / "alice.yaml"
    alice_only.write_text(job_file({"alice": 1}))
    await cluster.start_worker(IPS[0], alice_only)
    client = Redis.from_url(cluster.url, decode_responses=True)
    [log] = [f"fe:c:{c}:log" for c in await client.zrange("fe:campaigns", 0, -1)]
    seen: list[Any] = []
    while len(seen) < 3:  # alice's three outcomes, as the log says they come
        got = await client.xread({log: seen[-1][0] if seen else "0-0"}, block=5000)
        seen += [entry for _, entries in got for entry in entries]
    await client.aclose()
    status = await run_engine(
        "status", "--redis", cluster.url, str(cluster.jobs), env=cluster.env, workdir=cluster.tmp
    )
    assert status.code == 0, status.output
    assert "accounts no live worker can serve" in status.out
    assert re.search(r"carol \(3 queued\)", status.out)
    assert not re.search(r"alice \(\d+ queued\)", status.out)
    assert cluster.sim.max_in_window(key_of("carol")) == 0


async def test_a_bad_job_file_queues_nothing(cluster: Cluster) -> None:
    await setup(cluster, {"alice": 2}, SimConfig())
    cluster.jobs.write_text(cluster.jobs.read_text() + "surprise: 1\n")
    done = await run_engine(
        "submit", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, workdir=cluster.tmp
    )
    assert done.code == 2 and "surprise" in done.err
    client = Redis.from_url(cluster.url)
    assert await client.dbsize() == 0
    await client.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ("submit", "{jobs}"),
        ("run", "{jobs}"),
        ("worker", "--jobs", "{jobs}"),
        ("status",),
    ],
)
async def test_redis_unreachable_exits_2_before_anything_is_sent(
    cluster: Cluster, command: tuple[str, ...]
) -> None:
    await setup(cluster, {"alice": 2}, SimConfig())
    url = unused_redis_url().replace("redis://", "redis://:hunter2@")
    args = [part.format(jobs=cluster.jobs) for part in command]
    done = await run_engine(*args, "--redis", url, env=cluster.env, workdir=cluster.tmp)
    assert done.code == 2, done.output
    assert done.err.count("\n") == 1 and "unreachable" in done.err
    assert "Traceback" not in done.output and "hunter2" not in done.output
    assert cluster.sim.arrivals == []
    assert not (cluster.tmp / "jobs.results.jsonl").exists()


async def test_a_worker_stopped_with_sigterm_hands_back_what_it_did_not_finish(
    cluster: Cluster,
) -> None:
    jobs = {"alice": 30, "bob": 30}
    await setup(cluster, jobs, SimConfig(latency=0.2))
    stopping = await cluster.start_worker(IPS[0])
    out, err = cluster.tmp / "run.out", cluster.tmp / "run.err"
    run = await spawn(
        "run", str(cluster.jobs), "--redis", cluster.url, env=cluster.env, out=out, err=err
    )
    cluster.workers.append((run, out, err))  # stopped at the end whatever happens
    await cluster.sim.wait_for_arrivals(15)  # the first worker alone is sending
    await cluster.start_worker(IPS[1])
    stopping.send_signal(signal.SIGTERM)
    _, first_out, first_err = cluster.workers[0]
    stopped = await finish(stopping, first_out, first_err)
    assert stopped.code == 130, stopped.output
    done = await finish(run, out, err)
    assert done.code == 0, done.output
    lines, _ = last_lines(cluster.tmp / "jobs.results.jsonl")
    assert len(lines) == 60 and {line["status"] for line in lines.values()} == {"ok"}
    recorded = [entry["job"] for entry in await outcome_log(cluster.url)]
    assert sorted(recorded) == sorted(lines)
    assert set(cluster.sim.accepted.values()) == {1}  # nothing sent twice: it stopped cleanly
