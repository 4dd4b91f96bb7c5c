"""Every request in flight holds a connection, so a run fits its concurrency to the
open-files limit: raised towards the hard limit as far as needed, and past that, fewer
requests in flight with a warning rather than connections that fail for want of a file."""

from __future__ import annotations

import resource
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

import engine.openfiles
from engine.campaign import Settings
from engine.launch import SPARE_FILES, fit_open_files
from engine.simulator import SimConfig
from tests.support import (
    Engines,
    StartSimulator,
    WriteJobs,
    accounts_of,
    engine_env,
    follow_run,
    last_lines,
)

INFINITY = resource.RLIM_INFINITY


class FakeLimits(SimpleNamespace):
    """``resource`` as far as ``fit_open_files`` uses it, with limits of our choosing; a
    ``ceiling`` refuses a soft limit above it, as macOS does above kern.maxfilesperproc."""

    def __init__(self, soft: int, hard: int, ceiling: int | None = None) -> None:
        super().__init__(RLIMIT_NOFILE=resource.RLIMIT_NOFILE, RLIM_INFINITY=INFINITY)
        self.limits = (soft, hard)
        self.ceiling = ceiling
        self.set_to: tuple[int, int] | None = None

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.ceiling is not None and limits[0] > self.ceiling:
            raise ValueError("current limit exceeds maximum limit")
        self.limits = self.set_to = limits


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeLimits]:
    def install(soft: int, hard: int, ceiling: int | None = None) -> FakeLimits:
        fake = FakeLimits(soft, hard, ceiling)
        monkeypatch.setattr(engine.openfiles, "resource", fake)
        return fake

    return install


def test_the_default_concurrency_is_not_what_limits_a_wide_campaign() -> None:
    # 500 keys x 4 jobs may all leave at once; a lower cap makes them queue for each other.
    assert Settings().concurrency >= 2000


def test_a_limit_with_room_is_left_alone(limits: Callable[..., FakeLimits]) -> None:
    fake = limits(SPARE_FILES + 2048, SPARE_FILES + 2048)
    assert fit_open_files(2048) == (2048, None)
    assert fake.set_to is None


def test_the_soft_limit_is_raised_as_far_as_needed(
    limits: Callable[..., FakeLimits],
) -> None:
    fake = limits(1024, 524288)
    assert fit_open_files(2048) == (2048, None)
    assert fake.set_to == (SPARE_FILES + 2048, 524288)


def test_an_in_process_simulator_counts_twice(limits: Callable[..., FakeLimits]) -> None:
    fake = limits(1024, INFINITY)
    assert fit_open_files(2048, per_request=2) == (2048, None)
    assert fake.set_to == (SPARE_FILES + 4096, INFINITY)


def test_past_the_hard_limit_fewer_requests_fly_and_the_user_is_told(
    limits: Callable[..., FakeLimits],
) -> None:
    fake = limits(256, 1024)
    concurrency, warning = fit_open_files(2048)
    assert concurrency == 1024 - SPARE_FILES
    assert fake.set_to == (1024, 1024)
    assert warning is not None
    assert f"{concurrency} requests in flight at most instead of 2048" in warning
    assert "ulimit -n" in warning


def test_a_refused_raise_falls_back_to_the_soft_limit(
    limits: Callable[..., FakeLimits],
) -> None:
    fake = limits(256, INFINITY, ceiling=200)
    concurrency, warning = fit_open_files(2048)
    assert (concurrency, fake.set_to) == (256 - SPARE_FILES, None)
    assert warning is not None and "may open 256 files" in warning


def test_even_a_tiny_limit_leaves_one_request_in_flight(
    limits: Callable[..., FakeLimits],
) -> None:
    limits(SPARE_FILES, SPARE_FILES)
    assert fit_open_files(10)[0] == 1


# End to end: an engine process whose limit is lower than the requests the limiters let
# out at once. Without fitting, connections past the limit fail (EMFILE) and are retried.
ACCOUNTS = {f"acct{i:02d}": 10 for i in range(30)}
LOW = 150


def _limit_open_files(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def run_with_limits(
    simulator: StartSimulator, write_jobs: WriteJobs, engines: Engines
) -> Callable[..., Awaitable[str]]:
    """``await run_with_limits(soft, hard, *args, accounts=...)``: an engine process run
    under these open-files limits; every follow left once and is ok. Its stderr."""

    async def run(soft: int, hard: int, *extra: str, accounts: dict[str, int] = ACCOUNTS) -> str:
        jobs = write_jobs(accounts, extra="settings:\n  rate_limit: 1000\n")
        sim = await simulator(accounts_of(accounts), SimConfig(latency=0.2))
        done = await engines.run(
            *follow_run(jobs, sim),
            "--allow-over-limit",
            *extra,
            env=engine_env(accounts),
            preexec_fn=_limit_open_files(soft, hard),
        )
        assert done.code == 0, done.output
        assert len(sim.arrivals) == sum(accounts.values()) and set(sim.accepted.values()) == {1}
        lines, _ = last_lines(jobs.with_suffix(".results.jsonl"))
        assert {(line["status"], line["attempts"]) for line in lines.values()} == {("ok", 1)}
        return done.err

    return run


async def test_a_low_soft_limit_is_raised_and_every_follow_leaves_once(
    run_with_limits: Callable[..., Awaitable[str]],
) -> None:
    # 300 in flight needs more than LOW files, and less than any hard limit seen in the wild.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    err = await run_with_limits(LOW, hard, "--concurrency", "300")
    assert "ulimit -n" not in err


async def test_a_low_hard_limit_lowers_concurrency_and_says_so(
    run_with_limits: Callable[..., Awaitable[str]],
) -> None:
    err = await run_with_limits(LOW, LOW)
    # Asked for: the default 2048, but never more than the campaign's 300 jobs.
    assert f"{LOW - SPARE_FILES} requests in flight at most instead of 300" in err


async def test_a_campaign_that_fits_the_limit_is_not_warned_about(
    run_with_limits: Callable[..., Awaitable[str]],
) -> None:
    small = {f"acct{i:02d}": 10 for i in range(5)}
    assert sum(small.values()) < LOW - SPARE_FILES
    assert "ulimit -n" not in await run_with_limits(LOW, LOW, accounts=small)
