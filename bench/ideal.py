"""The ideal client: a one-window shape sent with nothing but the sending on the clock.

Where every key's jobs fit in one window of the limit, the limit lets all of them leave at
once. This client does only that, with everything else done before the clock starts: a
connection per job opened and every request signed and written out as bytes, then all sent
in one loop of ``sendall`` (about 20 ms for 2,000), then the answers read. What remains of its
makespan is the simulator's work: taking the requests in and writing the answers. It is not a
strict floor (requests spread out a little can let the simulator overlap its two halves), but
a client well above it has work of its own to cut, and one near it has little. Its CPU is
the floor too: it imports what it uses and nothing else. Run as
``python -m bench.ideal PLAIN.json BASE_URL``; prints a JSON tally like the other baselines.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any

from yarl import URL

from bench.shapes import FOLLOW_PARAMS, RATE_LIMIT
from engine.profiles import V4
from engine.signing import signed_headers

PATH = V4.path


def request_bytes(job: dict[str, Any], host: str, stamp: int) -> bytes:
    body = json.dumps({"leaderOrderId": job["leaderOrderId"], **FOLLOW_PARAMS})
    headers = signed_headers(job["api_key"], job["secret"], "POST", PATH, body, stamp, 5000)
    headers |= {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body))}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {PATH} HTTP/1.1\r\n{head}\r\n{body}".encode()


def outcome(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "?"
    if status != "200":
        return f"HTTP {status}"
    envelope = json.loads(body)
    return "ok" if envelope.get("rc") == 0 else str(envelope.get("mc"))


def complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return bool(sep) and len(body) >= int(value)
    return bool(sep)


def open_files(count: int) -> None:
    """Room for ``count`` connections. Not ``engine.launch.fit_open_files``: importing the
    engine's launcher (aiohttp, rich) would cost this client 0.35 s of CPU it has no use for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


def main(jobs: list[dict[str, Any]], base_url: str) -> Counter[str]:
    per_key = Counter(job["api_key"] for job in jobs)
    if max(per_key.values()) > RATE_LIMIT:
        raise SystemExit("the ideal client sends everything at once: one window's jobs per key")
    open_files(len(jobs))
    url = URL(base_url)
    host, port = url.host or "127.0.0.1", url.port or 80
    connections = [socket.create_connection((host, port)) for _ in jobs]
    for connection in connections:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stamp = int(time.time() * 1000)
    requests = [request_bytes(job, f"{host}:{port}", stamp) for job in jobs]
    for connection, request in zip(connections, requests, strict=True):
        connection.sendall(request)
    answers = {connection: b"" for connection in connections}
    tally: Counter[str] = Counter()
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection, selectors.EVENT_READ)
        while answers:
            for key, _ in selector.select():
                connection = key.fileobj
                assert isinstance(connection, socket.socket)
                data = connection.recv(65536)
                answers[connection] += data
                if not data or complete(answers[connection]):
                    answer = answers.pop(connection)
                    tally[outcome(answer) if data else "dropped"] += 1
                    selector.unregister(connection)
                    connection.close()
    return tally


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        print(json.dumps(main(json.load(file), sys.argv[2])))
