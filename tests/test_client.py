"""XtClient against the simulated exchange on loopback: what goes on the wire and how answers
are read, on the aiohttp users install.

A tap in front of the simulator records every request as it arrived; where a test needs an
answer the simulator never gives (a body that is not XT's, one cut short), the tap gives it
instead. The exchange's clock stands still at ``NOW_MS``, where the client's is set too.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from aiohttp import web

from engine.client import AmbiguousError, NotSentError, Withheld, XtClient, XtError
from engine.profiles import TIME_PATH, V1, V4
from engine.signing import sign, signature_payload
from engine.simulator import DROP_BEFORE, INVALID_PARAMETER, SLOW, SimConfig, Simulator
from tests.support import Handler, StartSimulator, canned, cut_short, dribble

KEY = "my-key"
SECRET = "very-secret-value"
LEADER = 7302994413592166401
PARAMS = {
    "leaderOrderId": LEADER,
    "followType": "RATE",
    "followVal": Decimal("0.50"),
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}
NOW_MS = 1700000000500


@dataclass
class Sent:
    method: str
    path: str
    #: Read without regard to case, as HTTP headers are.
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Tap:
    """Records each request; answers the next ones with ``canned`` handlers while any are left,
    and lets the simulator answer the rest."""

    requests: list[Sent] = field(default_factory=list)
    canned: deque[Handler] = field(default_factory=deque)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Sent(request.method, request.path, request.headers.copy(), body))
        if self.canned:
            return await self.canned.popleft()(request)
        return await handler(request)


@pytest.fixture
def tap() -> Tap:
    return Tap()


@pytest.fixture
async def exchange(tap: Tap, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Simulator]:
    sim = Simulator({KEY: SECRET}, SimConfig(slow_seconds=5))
    sim.app.middlewares.append(tap.middleware)
    monkeypatch.setattr(sim, "server_time_ms", lambda: NOW_MS)
    async with sim:
        yield sim


def url(sim: Simulator) -> str:
    assert sim.base_url is not None
    return sim.base_url


@pytest.fixture
async def client(exchange: Simulator) -> AsyncIterator[XtClient]:
    async with XtClient(url(exchange), V4, clock=lambda: NOW_MS / 1000) as c:
        yield c


async def test_sends_signed_json_body(client: XtClient, exchange: Simulator, tap: Tap) -> None:
    answer = await client.follow(KEY, SECRET, PARAMS)
    assert answer.ok
    assert exchange.accepted == {(KEY, LEADER): 1}  # its signature checked by the simulator
    [sent] = tap.requests
    body = sent.body.decode()
    headers = sent.headers
    assert (sent.method, sent.path) == ("POST", V4.path)
    assert body == (
        '{"leaderOrderId":7302994413592166401,"followType":"RATE","followVal":0.50,'
        '"followLossOperate":"LEADER_CLOSE","autoFollowSymbol":true,"symbols":"xt_usdt,btc_usdt"}'
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["xt-validate-appkey"] == KEY
    assert headers["xt-validate-timestamp"] == "1700000000500"
    assert headers["xt-validate-recvwindow"] == "5000"
    assert headers["xt-validate-algorithms"] == "HmacSHA256"
    validate = {k: v for k, v in headers.items() if k.startswith("xt-") and "signature" not in k}
    expected = sign(SECRET, signature_payload(validate, "POST", V4.path, body))
    assert headers["xt-validate-signature"] == expected


async def test_every_call_is_signed_afresh(exchange: Simulator, tap: Tap) -> None:
    ticks = iter([1.0, 2.0])
    async with XtClient(url(exchange), V4, clock=lambda: next(ticks)) as client:
        await client.follow(KEY, SECRET, PARAMS)
        await client.follow(KEY, SECRET, PARAMS)
    first, second = (sent.headers for sent in tap.requests)
    assert first["xt-validate-timestamp"] == "1000"
    assert second["xt-validate-timestamp"] == "2000"
    assert first["xt-validate-signature"] != second["xt-validate-signature"]


async def test_v1_profile_uses_its_own_path(exchange: Simulator, tap: Tap) -> None:
    params = {"leaderAccountId": 5589391507863} | PARAMS
    del params["leaderOrderId"]
    async with XtClient(url(exchange), V1, clock=lambda: NOW_MS / 1000) as client:
        answer = await client.follow(KEY, SECRET, params)
    assert answer.ok
    [sent] = tap.requests
    assert sent.path == V1.path
    assert sent.body == (
        b'{"leaderAccountId":5589391507863,"followType":"RATE","followVal":0.50,'
        b'"followLossOperate":"LEADER_CLOSE","autoFollowSymbol":true,"symbols":"xt_usdt,btc_usdt"}'
    )
    assert exchange.accepted == {(KEY, 5589391507863): 1}


async def test_business_error_envelope(client: XtClient) -> None:
    answer = await client.follow(KEY, SECRET, {**PARAMS, "followVal": Decimal(0)})
    assert not answer.ok
    assert answer.envelope is not None
    assert (answer.envelope.rc, answer.envelope.mc, answer.envelope.ma) == (
        1,
        INVALID_PARAMETER,
        ["followVal"],
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, "<html>Bad Gateway</html>"), (200, "not json"), (200, '{"rc": "0"}'), (200, "[1]")],
)
async def test_bodies_that_are_not_an_envelope(
    client: XtClient, tap: Tap, status: int, body: str
) -> None:
    tap.canned.append(canned(status, body.encode()))
    answer = await client.follow(KEY, SECRET, PARAMS)
    assert answer.http_status == status
    assert answer.envelope is None
    assert answer.excerpt == body
    assert not answer.ok


async def test_retry_after_is_read(simulator: StartSimulator) -> None:
    """The simulator's own limit: one request per 3 s, the next told when to come back."""
    sim = await simulator({KEY: SECRET}, SimConfig(rate_limit=1, window=3))
    async with XtClient(url(sim), V4) as client:
        first = await client.follow(KEY, SECRET, PARAMS)
        second = await client.follow(KEY, SECRET, PARAMS)
    assert (first.http_status, first.retry_after) == (200, None)
    assert (second.http_status, second.retry_after) == (429, 3.0)


@contextmanager
def full_backlog() -> Iterator[str]:
    """A base URL on loopback whose listener's queue is full: a connection attempt is never
    answered, so the client's connect timeout fires (Linux drops the SYN)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


#: How a request that left meets no answer, and the aiohttp error it ends in.
TRANSPORT_FAILURES: list[tuple[str, Callable[[Simulator, Tap], None], str]] = [
    (
        "disconnected",
        lambda sim, _: sim.script(LEADER, [DROP_BEFORE]),
        "ServerDisconnectedError|ClientOSError",
    ),
    ("read timeout", lambda sim, _: sim.script(LEADER, [SLOW]), "SocketTimeoutError"),
    ("cut short", lambda _, tap: tap.canned.append(cut_short), "ClientPayloadError"),
    ("never ends", lambda _, tap: tap.canned.append(dribble), "left: TimeoutError$"),
]


@pytest.mark.parametrize(
    ("arrange", "says"),
    [case[1:] for case in TRANSPORT_FAILURES],
    ids=[case[0] for case in TRANSPORT_FAILURES],
)
async def test_a_request_that_left_without_an_answer_is_ambiguous(
    exchange: Simulator, tap: Tap, arrange: Callable[[Simulator, Tap], None], says: str
) -> None:
    arrange(exchange, tap)
    async with XtClient(url(exchange), V4, timeout=0.3, clock=lambda: NOW_MS / 1000) as client:
        with pytest.raises(AmbiguousError, match=says) as info:
            await client.follow(KEY, SECRET, PARAMS)
    assert SECRET not in str(info.value)
    assert len(tap.requests) == 1  # it left


async def test_a_connect_timeout_is_not_sent() -> None:
    with full_backlog() as base_url:
        async with XtClient(base_url, V4, timeout=0.3) as client:
            with pytest.raises(NotSentError, match="ConnectionTimeoutError") as info:
                await client.follow(KEY, SECRET, PARAMS)
    assert SECRET not in str(info.value)


async def test_connection_refused_is_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with XtClient(f"http://127.0.0.1:{port}", V4, timeout=2) as client:
        with pytest.raises(NotSentError, match="not sent"):
            await client.follow("k", SECRET, PARAMS)


async def test_sync_clock_applies_the_server_offset(exchange: Simulator, tap: Tap) -> None:
    async with XtClient(url(exchange), V4, clock=lambda: (NOW_MS - 3000) / 1000) as client:
        assert await client.sync_clock() == 3000
        answer = await client.follow(KEY, SECRET, PARAMS)
    assert [(sent.method, sent.path) for sent in tap.requests] == [
        ("GET", TIME_PATH),
        ("POST", V4.path),
    ]
    assert tap.requests[1].headers["xt-validate-timestamp"] == str(NOW_MS)
    assert answer.ok


async def test_server_time_without_a_time_is_an_error(client: XtClient, tap: Tap) -> None:
    tap.canned.append(canned(503, b"busy"))
    with pytest.raises(XtError, match="without a server time"):
        await client.server_time_ms()


def test_redacted_headers_hide_the_signature() -> None:
    request = XtClient("https://sapi.example", V4).prepare("k", SECRET, PARAMS)
    redacted = request.redacted()
    assert redacted["xt-validate-signature"] == "<redacted>"
    assert request.headers["xt-validate-signature"] not in json.dumps(redacted)
    assert SECRET not in repr(request)


async def test_a_huge_body_is_cut_and_read_as_not_an_envelope(client: XtClient, tap: Tap) -> None:
    tap.canned.append(canned(200, b'{"rc":0,"mc":"SUCCESS","pad":"' + b"x" * (3 << 20) + b'"}'))
    answer = await client.follow(KEY, SECRET, PARAMS)
    assert answer.envelope is None
    assert len(answer.excerpt or "") == 200


async def test_a_request_waits_for_ready_and_is_written_only_then(
    client: XtClient, exchange: Simulator
) -> None:
    said: list[str] = []

    async def ready() -> None:
        said.append("ready?")
        await asyncio.sleep(0.05)
        assert exchange.arrivals == []  # signed and connected, not yet written
        said.append("go")

    answer = await client.follow(KEY, SECRET, PARAMS, lambda _: said.append("sent"), ready=ready)
    assert answer.ok and said == ["ready?", "go", "sent"]
    assert len(exchange.arrivals) == 1


async def test_a_request_says_whether_it_opened_its_connection(
    client: XtClient, exchange: Simulator
) -> None:
    """The limiter weighs a late answer only for the first request of a connection: the
    next, on the connection kept open, says it is not; two at once open two."""
    opened: list[bool] = []
    await client.follow(KEY, SECRET, PARAMS, opened.append)
    await client.follow(KEY, SECRET, PARAMS, opened.append)
    assert opened == [True, False]
    await asyncio.gather(*(client.follow(KEY, SECRET, PARAMS, opened.append) for _ in range(2)))
    assert sorted(opened[2:]) == [False, True]


async def test_a_request_whose_send_hook_fails_was_not_sent(
    client: XtClient, exchange: Simulator, tap: Tap
) -> None:
    """A bug in the hook that says a request leaves must not pass for a lost connection after
    the request left (ambiguous, and sent again): nothing was written."""

    def broken(opened: bool) -> None:
        raise TypeError("a hook that does not fit")

    with pytest.raises(NotSentError, match=r"not sent: .*a hook that does not fit"):
        await client.follow(KEY, SECRET, PARAMS, broken)
    assert tap.requests == [] and exchange.arrivals == []


async def test_a_request_withheld_by_ready_never_leaves(
    client: XtClient, exchange: Simulator, tap: Tap
) -> None:
    async def ready() -> None:
        raise Withheld("not sent: held back")

    with pytest.raises(Withheld, match="held back"):
        await client.follow(KEY, SECRET, PARAMS, lambda _: None, ready=ready)
    assert tap.requests == [] and exchange.arrivals == []


async def test_a_request_held_back_past_its_timeout_was_not_sent(
    exchange: Simulator, tap: Tap
) -> None:
    """Its time ran out before it was written: not sent, never ambiguous."""

    async def ready() -> None:
        await asyncio.sleep(1)

    async with XtClient(url(exchange), V4, timeout=0.1) as client:
        with pytest.raises(NotSentError) as raised:
            await client.follow(KEY, SECRET, PARAMS, lambda _: None, ready=ready)
    assert not isinstance(raised.value, AmbiguousError)
    assert tap.requests == []
