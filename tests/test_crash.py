"""Kill -9 at random points, torn lines, two engines at once: nothing is lost, nothing is sent
twice except what was in flight at the kill.

The engine runs as a process of its own; the simulator lives in the test, so what the
"exchange" accepted outlives every kill and is compared with what the results file says.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.launch import MAX_LINE_WARNINGS
from engine.profiles import TIME_PATH
from engine.simulator import SimConfig, Simulator
from tests.support import (
    Engines,
    StartSimulator,
    WriteJobs,
    accounts_of,
    engine_env,
    follow_run,
    job_ids,
    key_of,
    last_lines,
    ok_jobs,
)

SEED = 20261125
KILLS = 24
CONCURRENCY = 4
#: Far more jobs than the kills leave time for, so every kill lands mid-campaign.
ACCOUNTS = {"alice": 150, "bob": 150, "carol": 150}
#: High limits on both sides keep the test fast; the limit itself is proven elsewhere.
RATE = 1000


@dataclass(frozen=True)
class Torn:
    """A line the test cut in half after a kill, as a kill in the middle of writing it would."""

    job: str
    #: It said the job was ok. An intent line (``sending``) said only that the job's request
    #: was about to leave: whether it did is in ``Kill.sent``.
    was_ok: bool


@dataclass
class Kill:
    """What one killed run sent and what the file held after it."""

    sent: set[str]
    ok_after: set[str]
    torn: Torn | None

    @property
    def in_flight(self) -> set[str]:
        """Sent but not on record as ok: the only follows the next run may send again. A torn
        ok line takes its job off the record, so it is one of them."""
        unrecorded = {self.torn.job} if self.torn is not None and self.torn.was_ok else set()
        return (self.sent | unrecorded) - self.ok_after


async def quiet(sim: Simulator, period: float = 0.05) -> None:
    """Requests a killed engine had already written to its sockets may still be read by the
    simulator after the engine is gone; return once none has come for ``period``. There is
    no event for "nothing more will come", so this one waits on time."""
    while True:
        seen = len(sim.arrivals)
        await asyncio.sleep(period)
        if len(sim.arrivals) == seen:
            return


def tear_last_line(results: Path) -> Torn | None:
    """Cut the file's last line in half, as a kill in the middle of writing it would; None
    when there is no whole last line to cut."""
    text = results.read_text() if results.exists() else ""
    if not text.endswith("\n"):
        return None
    head, _, last = text[:-1].rpartition("\n")
    try:
        line = json.loads(last)
        torn = Torn(line["job"], line["status"] == "ok")
    except (ValueError, TypeError, KeyError):  # torn already, and no line written since
        return None
    results.write_text((head + "\n" if head else "") + last[: len(last) // 2])
    return torn


async def test_kill_9_at_random_points_loses_nothing_and_resends_only_what_was_in_flight(
    tmp_path: Path,
    simulator: StartSimulator,
    write_jobs: WriteJobs,
    engines: Engines,
) -> None:
    rng = random.Random(SEED)
    jobs = write_jobs(ACCOUNTS)
    results = tmp_path / "jobs.results.jsonl"
    ids = job_ids(ACCOUNTS)
    env = engine_env(ACCOUNTS)
    args = (
        "run",
        "--no-preflight",
        str(jobs),
        "--results",
        str(results),
        "--rate-limit",
        str(RATE),
        "--allow-over-limit",
        "--concurrency",
        str(CONCURRENCY),
    )
    kills: list[Kill] = []
    config = SimConfig(latency=0.01, rate_limit=RATE)
    sim = await simulator(accounts_of(ACCOUNTS), config)
    url = ("--base-url", sim.base_url or "")
    for number in range(KILLS):
        first = len(sim.arrivals)
        running = await engines.start(*args, *url, env=env, name=f"kill{number}")
        process = running.process
        if number % 6 == 5:
            # Anywhere in start-up: reading the job file, opening the results file, the
            # first requests.
            await asyncio.sleep(rng.uniform(0.0, 0.8))
        else:
            arrived = asyncio.ensure_future(
                sim.wait_for_arrivals(first + rng.randint(1, 3 * CONCURRENCY))
            )
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({arrived, exited}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            arrived.cancel()
            exited.cancel()
            assert process.returncode is None, "the engine ended before its kill point"
            # Then the kill lands anywhere: between sends, mid-answer, mid-record.
            await asyncio.sleep(rng.uniform(0.0, 0.01))
        process.kill()
        killed = await running.finish()
        assert "Traceback" not in killed.err
        await quiet(sim)
        torn = tear_last_line(results) if rng.random() < 0.3 else None
        sent = [ids[a.leader_id] for a in sim.arrivals[first:] if a.path != TIME_PATH]
        assert len(sent) == len(set(sent)), "a run sent one job twice"
        ok_before = kills[-1].ok_after if kills else set()
        assert not set(sent) & ok_before, "a job already ok was sent again"
        kills.append(Kill(set(sent), ok_jobs(results), torn))

    first = len(sim.arrivals)
    final = await engines.run(*args, *url, env=env, name="final")
    assert final.code == 0, final.err
    final_sent = {ids[a.leader_id] for a in sim.arrivals[first:]}
    assert not final_sent & kills[-1].ok_after, "a job already ok was sent again"

    torn = sum(k.torn is not None for k in kills)
    assert torn >= 3, "too few torn lines for this test to mean much"
    assert sum(1 for k in kills if k.sent) >= 20, "fewer than 20 kills landed mid-campaign"
    # Each torn line is skipped with a warning on every later read, never a crash.
    skipped = final.err.count("skipped a line that is not a whole result")
    assert skipped >= torn
    assert "Traceback" not in final.err

    # Every job ends ok: its last line says so.
    last, warnings = last_lines(results)
    assert {job: line["status"] for job, line in last.items()} == dict.fromkeys(ids.values(), "ok")
    assert skipped == min(len(warnings), MAX_LINE_WARNINGS)

    # None lost, and duplicates only where a kill caught the follow in flight.
    sends = Counter(job for run in [*(k.sent for k in kills), final_sent] for job in run)
    accepted = {ids[leader]: n for (_, leader), n in sim.accepted.items() if leader is not None}
    assert accepted == dict(sends), "the exchange accepted what the engine did not send"
    assert set(accepted) == set(ids.values())
    in_flight = [k.in_flight for k in kills]
    for kill in kills:
        # Each held a concurrency slot; a torn ok line's job had finished, and is one more.
        assert len(kill.in_flight) <= CONCURRENCY + (kill.torn is not None and kill.torn.was_ok)
    duplicated = {job for job, n in accepted.items() if n > 1}
    assert duplicated <= set().union(*in_flight)
    for job, n in accepted.items():
        assert n == 1 + sum(job in flight for flight in in_flight)
    assert duplicated, "no kill caught a follow in flight: the kill points are too tame"

    assert sim.violations == 0
    assert {a.mc for a in sim.arrivals} == {"SUCCESS"}
    assert {a.api_key for a in sim.arrivals} == {key_of(a) for a in ACCOUNTS}


SMALL = {"alice": 20, "bob": 20}


async def test_a_second_engine_on_the_same_results_file_refuses_and_sends_nothing(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> None:
    """A run holds the results file; a second started on it, even with --fresh, refuses,
    sends nothing and leaves the file as it was. The test holds the lock itself, as a run
    does (``flock``), so the second meets it every time, however fast the first was."""
    jobs = write_jobs(SMALL)
    env = engine_env(SMALL)
    sim = await simulator(accounts_of(SMALL), SimConfig(latency=0.05))
    args = follow_run(jobs, sim, "--concurrency", "2")
    first = await engines.run(*args, env=env, name="first")
    results = jobs.with_suffix(".results.jsonl")
    recorded = results.read_bytes()
    with results.open("ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = await engines.run(*args, "--fresh", env=env, name="second")
    assert second.code == 2, second.output
    assert "in use by another run" in second.err and "nothing sent" in second.err
    assert first.code == 0, first.err
    # --fresh did not wipe what the first engine wrote, and nothing went out twice.
    assert results.read_bytes() == recorded
    assert len(ok_jobs(results)) == 40
    assert len(sim.arrivals) == 40
    assert set(sim.accepted.values()) == {1}


async def test_two_engines_started_together_never_both_send(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> None:
    """Whichever locks the file first runs; the other refuses. (Were the second held up for
    the whole of the first's run, it would find every job ok and send nothing: also safe.)"""
    jobs = write_jobs(SMALL)
    env = engine_env(SMALL)
    sim = await simulator(accounts_of(SMALL), SimConfig(latency=0.05))
    args = follow_run(jobs, sim, "--concurrency", "2")
    both = await asyncio.gather(
        engines.run(*args, env=env, name="a"), engines.run(*args, env=env, name="b")
    )
    first, second = sorted(both, key=lambda run: run.code)
    assert first.code == 0, first.output
    assert second.code == 2 or "skipping 40 jobs already ok" in second.err, second.output
    if second.code == 2:
        assert "in use by another run" in second.err
    assert len(sim.arrivals) == 40
    assert set(sim.accepted.values()) == {1}
