"""XtClient against aioresponses: what goes on the wire and how answers are read."""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from engine.client import AmbiguousError, NotSentError, XtClient, XtError
from engine.profiles import V1, V4
from engine.signing import sign, signature_payload

BASE = "https://sapi.example"
URL_V4 = BASE + V4.path
SECRET = "very-secret-value"
PARAMS = {
    "leaderOrderId": 7302994413592166401,
    "followType": "RATE",
    "followVal": Decimal("0.50"),
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}
OK = {"rc": 0, "mc": "SUCCESS", "ma": [], "result": True}


@pytest.fixture
async def client():
    async with XtClient(BASE, V4, clock=lambda: 1700000000.5) as c:
        yield c


@pytest.fixture
def mock():
    with aioresponses() as m:
        yield m


def sent(mock: aioresponses, url: str = URL_V4) -> list:
    return mock.requests[("POST", URL(url))]


async def test_sends_signed_json_body(client: XtClient, mock: aioresponses) -> None:
    mock.post(URL_V4, payload=OK)
    answer = await client.follow("my-key", SECRET, PARAMS)
    assert answer.ok
    [call] = sent(mock)
    body = call.kwargs["data"].decode()
    headers = call.kwargs["headers"]
    assert body == (
        '{"leaderOrderId":7302994413592166401,"followType":"RATE","followVal":0.50,'
        '"followLossOperate":"LEADER_CLOSE","autoFollowSymbol":true,"symbols":"xt_usdt,btc_usdt"}'
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["xt-validate-appkey"] == "my-key"
    assert headers["xt-validate-timestamp"] == "1700000000500"
    assert headers["xt-validate-recvwindow"] == "5000"
    assert headers["xt-validate-algorithms"] == "HmacSHA256"
    validate = {k: v for k, v in headers.items() if k.startswith("xt-") and "signature" not in k}
    expected = sign(SECRET, signature_payload(validate, "POST", V4.path, body))
    assert headers["xt-validate-signature"] == expected


async def test_every_call_is_signed_afresh() -> None:
    ticks = iter([1.0, 2.0])
    with aioresponses() as mock:
        mock.post(URL_V4, payload=OK, repeat=True)
        async with XtClient(BASE, V4, clock=lambda: next(ticks)) as client:
            await client.follow("k", SECRET, PARAMS)
            await client.follow("k", SECRET, PARAMS)
        first, second = sent(mock)
    assert first.kwargs["headers"]["xt-validate-timestamp"] == "1000"
    assert second.kwargs["headers"]["xt-validate-timestamp"] == "2000"
    assert (
        first.kwargs["headers"]["xt-validate-signature"]
        != second.kwargs["headers"]["xt-validate-signature"]
    )


async def test_v1_profile_uses_its_own_path(mock: aioresponses) -> None:
    mock.post(BASE + V1.path, payload=OK)
    async with XtClient(BASE, V1) as client:
        answer = await client.follow("k", SECRET, {"leaderAccountId": 5589391507863})
    assert answer.ok
    assert sent(mock, BASE + V1.path)[0].kwargs["data"] == b'{"leaderAccountId":5589391507863}'


async def test_business_error_envelope(client: XtClient, mock: aioresponses) -> None:
    mock.post(URL_V4, payload={"rc": 1, "mc": "COPY_TRADE_SPOT_006", "ma": ["x"], "result": None})
    answer = await client.follow("k", SECRET, PARAMS)
    assert not answer.ok
    assert answer.envelope is not None
    assert (answer.envelope.rc, answer.envelope.mc, answer.envelope.ma) == (
        1,
        "COPY_TRADE_SPOT_006",
        ["x"],
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, "<html>Bad Gateway</html>"), (200, "not json"), (200, '{"rc": "0"}'), (200, "[1]")],
)
async def test_bodies_that_are_not_an_envelope(
    client: XtClient, mock: aioresponses, status: int, body: str
) -> None:
    mock.post(URL_V4, status=status, body=body)
    answer = await client.follow("k", SECRET, PARAMS)
    assert answer.http_status == status
    assert answer.envelope is None
    assert answer.excerpt == body
    assert not answer.ok


async def test_retry_after_is_read(client: XtClient, mock: aioresponses) -> None:
    mock.post(URL_V4, status=429, body="", headers={"Retry-After": "2"})
    answer = await client.follow("k", SECRET, PARAMS)
    assert (answer.http_status, answer.retry_after) == (429, 2.0)


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (aiohttp.ConnectionTimeoutError(), NotSentError),
        (aiohttp.ServerDisconnectedError(), AmbiguousError),
        (aiohttp.SocketTimeoutError(), AmbiguousError),
        (aiohttp.ClientPayloadError("cut"), AmbiguousError),
        (asyncio.TimeoutError(), AmbiguousError),
    ],
)
async def test_transport_failures_say_whether_the_request_left(
    client: XtClient, mock: aioresponses, exception: Exception, kind: type
) -> None:
    mock.post(URL_V4, exception=exception)
    with pytest.raises(kind) as info:
        await client.follow("k", SECRET, PARAMS)
    assert SECRET not in str(info.value)


async def test_connection_refused_is_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with XtClient(f"http://127.0.0.1:{port}", V4, timeout=2) as client:
        with pytest.raises(NotSentError, match="not sent"):
            await client.follow("k", SECRET, PARAMS)


async def test_sync_clock_applies_the_server_offset(mock: aioresponses) -> None:
    mock.get(
        BASE + "/v4/public/time",
        payload={"rc": 0, "mc": "SUCCESS", "ma": [], "result": {"serverTime": 1700000003000}},
    )
    mock.post(URL_V4, payload=OK)
    async with XtClient(BASE, V4, clock=lambda: 1700000000.0) as client:
        assert await client.sync_clock() == 3000
        await client.follow("k", SECRET, PARAMS)
    assert sent(mock)[0].kwargs["headers"]["xt-validate-timestamp"] == "1700000003000"


async def test_server_time_without_a_time_is_an_error(client: XtClient, mock: aioresponses) -> None:
    mock.get(BASE + "/v4/public/time", status=503, body="busy")
    with pytest.raises(XtError, match="without a server time"):
        await client.server_time_ms()


def test_redacted_headers_hide_the_signature() -> None:
    request = XtClient(BASE, V4).prepare("k", SECRET, PARAMS)
    redacted = request.redacted()
    assert redacted["xt-validate-signature"] == "<redacted>"
    assert request.headers["xt-validate-signature"] not in json.dumps(redacted)
    assert SECRET not in repr(request)


async def test_a_huge_body_is_cut_and_read_as_not_an_envelope(
    client: XtClient, mock: aioresponses
) -> None:
    mock.post(URL_V4, status=200, body='{"rc":0,"mc":"SUCCESS","pad":"' + "x" * (3 << 20) + '"}')
    answer = await client.follow("k", SECRET, PARAMS)
    assert answer.envelope is None
    assert len(answer.excerpt or "") == 200
