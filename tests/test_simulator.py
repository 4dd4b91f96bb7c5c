"""The simulator judges requests as XT does, so the end-to-end tests built on it mean something."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from engine.profiles import TIME_PATH, V1, V4
from engine.signing import sign, signature_payload, signed_headers
from engine.sim_window import SlidingWindows
from engine.simulator import (
    AUTH_105,
    DROP_AFTER,
    DROP_BEFORE,
    HTTP429,
    HTTP500,
    HTTP502,
    HTTP503,
    INVALID_PARAMETER,
    NON_JSON,
    SLOW,
    Arrival,
    SimConfig,
    Simulator,
    serve,
)
from tests.support import StartSimulator

KEY, SECRET = "key-a", "secret-a"
OTHER_KEY, OTHER_SECRET = "key-b", "secret-b"
LEADER = 5589391507863
PARAMS: dict[str, Any] = {
    "leaderOrderId": LEADER,
    "followType": "RATE",
    "followVal": 1,
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}
SUCCESS = {"rc": 0, "mc": "SUCCESS", "ma": [], "result": True}
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
MISSING = object()


def encode(params: Mapping[str, Any]) -> str:
    return json.dumps(params, separators=(",", ":"))


def with_(**changes: Any) -> str:
    """``PARAMS`` with fields changed, or left out when given ``MISSING``."""
    params = {**PARAMS, **changes}
    return encode({k: v for k, v in params.items() if v is not MISSING})


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: str,
    *,
    path: str = V4.path,
    key: str = KEY,
    secret: str = SECRET,
    timestamp: int | None = None,
    headers: Mapping[str, str | None] | None = None,
    timeout: float = 5,
) -> Reply:
    """Sign and send as the engine does; ``headers`` replace (None: remove) signed ones."""
    sent = signed_headers(key, secret, "POST", path, body, timestamp or now_ms(), 5000)
    sent["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        if value is None:
            del sent[name]
        else:
            sent[name] = value
    request_timeout = aiohttp.ClientTimeout(total=timeout)
    async with session.post(
        url + path, data=body.encode(), headers=sent, timeout=request_timeout
    ) as response:
        return Reply(response.status, response.headers, await response.read())


@pytest.fixture
async def sim(simulator: StartSimulator) -> Simulator:
    return await simulator({KEY: SECRET, OTHER_KEY: OTHER_SECRET}, SimConfig(rate_limit=1000))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def test_valid_follow_is_accepted_and_recorded(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    reply = await post(session, sim.base_url, encode(PARAMS))
    assert reply.status == 200
    assert reply.json() == SUCCESS
    assert sim.accepted == {(KEY, LEADER): 1}
    [arrival] = sim.arrivals
    assert (arrival.api_key, arrival.path, arrival.leader_id) == (KEY, V4.path, LEADER)
    assert (arrival.status, arrival.mc, arrival.fault) == (200, "SUCCESS", None)
    # The signature was checked: the same request signed with another secret is refused.
    forged = await post(session, sim.base_url, encode(PARAMS), secret="not-" + SECRET)
    assert forged.json()["mc"] == "AUTH_103"
    assert sim.accepted == {(KEY, LEADER): 1}


async def test_a_second_follow_is_counted_as_a_duplicate(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        await post(session, sim.base_url, encode(PARAMS))
    assert sim.accepted[(KEY, LEADER)] == 2


async def test_optional_fields_and_exact_big_ids_are_accepted(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    big = 2**63 + 7  # beyond a double's exact range
    body = with_(
        leaderOrderId=big, followVal=0.5, followLoss=10, triggerStopRate=0.1, triggerProfitRate=2
    )
    assert (await post(session, sim.base_url, body)).json() == SUCCESS
    assert sim.accepted == {(KEY, big): 1}


async def test_unprefixed_headers_and_upper_case_hex_are_accepted(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    body = encode(PARAMS)
    headers = {
        "validate-algorithms": "HmacSHA256",
        "validate-appkey": KEY,
        "validate-recvwindow": "5000",
        "validate-timestamp": str(now_ms()),
    }
    payload = signature_payload(headers, "POST", V4.path, body)
    headers["validate-signature"] = sign(SECRET, payload).upper()
    headers["Content-Type"] = "application/json"
    async with session.post(
        sim.base_url + V4.path, data=body.encode(), headers=headers
    ) as response:
        assert await response.json() == SUCCESS


async def test_the_raw_body_is_what_is_verified(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    spaced = json.dumps(PARAMS)  # ", " and ": ": signed and sent alike, so accepted
    assert (await post(session, sim.base_url, spaced)).json() == SUCCESS


async def test_bad_signature_is_auth_103(sim: Simulator, session: aiohttp.ClientSession) -> None:
    reply = await post(session, sim.base_url, encode(PARAMS), secret="wrong")
    assert reply.status == 200
    assert reply.json() == {"rc": 1, "mc": "AUTH_103", "ma": [], "result": None}
    assert not sim.accepted


async def test_unknown_key_is_auth_101(sim: Simulator, session: aiohttp.ClientSession) -> None:
    reply = await post(session, sim.base_url, encode(PARAMS), key="nobody")
    assert reply.json()["mc"] == "AUTH_101"


@pytest.mark.parametrize(
    ("header", "value", "mc"),
    [
        ("xt-validate-appkey", None, "AUTH_001"),
        ("xt-validate-timestamp", None, "AUTH_002"),
        ("xt-validate-timestamp", "soon", "AUTH_002"),
        ("xt-validate-recvwindow", None, "AUTH_003"),
        ("xt-validate-recvwindow", "0", "AUTH_004"),
        ("xt-validate-recvwindow", "5s", "AUTH_004"),
        ("xt-validate-algorithms", None, "AUTH_005"),
        ("xt-validate-algorithms", "HmacSHA1", "AUTH_006"),
        ("xt-validate-signature", None, "AUTH_007"),
    ],
)
async def test_missing_or_malformed_headers(
    sim: Simulator, session: aiohttp.ClientSession, header: str, value: str | None, mc: str
) -> None:
    reply = await post(session, sim.base_url, encode(PARAMS), headers={header: value})
    assert reply.json()["mc"] == mc


@pytest.mark.parametrize(
    ("offset_ms", "mc"),
    [(-6000, "AUTH_105"), (-3000, "SUCCESS"), (500, "SUCCESS"), (2000, "AUTH_105")],
)
async def test_timestamp_must_be_within_the_window(
    sim: Simulator, session: aiohttp.ClientSession, offset_ms: int, mc: str
) -> None:
    reply = await post(session, sim.base_url, encode(PARAMS), timestamp=now_ms() + offset_ms)
    assert reply.json()["mc"] == mc


@pytest.mark.parametrize("skew_ms", [60_000, -60_000])
async def test_skewed_server_clock(
    simulator: StartSimulator, session: aiohttp.ClientSession, skew_ms: int
) -> None:
    sim = await simulator({KEY: SECRET}, SimConfig(skew_ms=skew_ms))
    async with session.get(sim.base_url + TIME_PATH) as response:
        answer = await response.json()
    assert (answer["rc"], answer["mc"], answer["ma"]) == (0, "SUCCESS", [])
    server = answer["result"]["serverTime"]
    assert abs(server - now_ms() - skew_ms) < 1000
    local = await post(session, sim.base_url, encode(PARAMS))
    assert local.json()["mc"] == "AUTH_105"
    synced = await post(session, sim.base_url, encode(PARAMS), timestamp=now_ms() + skew_ms)
    assert synced.json() == SUCCESS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("leaderOrderId", 0),
        ("leaderOrderId", -5),
        ("leaderOrderId", 12.0),
        ("leaderOrderId", "12"),
        ("leaderOrderId", True),
        ("leaderOrderId", MISSING),
        ("followType", "fund"),
        ("followType", MISSING),
        ("followVal", 0),
        ("followVal", -1.5),
        ("followVal", "1"),
        ("followVal", None),
        ("followVal", MISSING),
        ("followLoss", 0),
        ("followLoss", "5"),
        ("followLossOperate", "SELL"),
        ("followLossOperate", MISSING),
        ("triggerStopRate", 0),
        ("triggerProfitRate", -0.5),
        ("autoFollowSymbol", 1),
        ("autoFollowSymbol", "true"),
        ("autoFollowSymbol", MISSING),
        ("symbols", ""),
        ("symbols", "BTC_USDT"),
        ("symbols", "btcusdt"),
        ("symbols", "btc_usdt,"),
        ("symbols", "btc_usdt, eth_usdt"),
        ("symbols", ["btc_usdt"]),
        ("symbols", MISSING),
        ("leaderAccountId", LEADER),  # the v1 field, unknown under v4
        ("copyMode", "ALL"),
    ],
)
async def test_each_parameter_rule(
    sim: Simulator, session: aiohttp.ClientSession, field: str, value: Any
) -> None:
    reply = await post(session, sim.base_url, with_(**{field: value}))
    assert reply.json() == {"rc": 1, "mc": INVALID_PARAMETER, "ma": [field], "result": None}
    assert not sim.accepted


@pytest.mark.parametrize("body", ["not json", "[]", '{"followVal":NaN}'])
async def test_a_body_that_is_no_json_object(
    sim: Simulator, session: aiohttp.ClientSession, body: str
) -> None:
    reply = await post(session, sim.base_url, body)
    assert reply.json()["ma"] == ["body"]


async def test_content_type_must_be_json(sim: Simulator, session: aiohttp.ClientSession) -> None:
    reply = await post(
        session, sim.base_url, encode(PARAMS), headers={"Content-Type": "text/plain"}
    )
    assert reply.json()["ma"] == ["Content-Type"]


async def test_v1_path_takes_leader_account_id(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    v1_body = with_(leaderOrderId=MISSING, leaderAccountId=42)
    assert (await post(session, sim.base_url, v1_body, path=V1.path)).json() == SUCCESS
    refused = await post(session, sim.base_url, encode(PARAMS), path=V1.path)
    assert refused.json()["ma"] == ["leaderOrderId"]
    assert sim.accepted == {(KEY, 42): 1}
    assert sim.arrivals[0].path == V1.path


@pytest.mark.parametrize("per_ip", [False, True])
async def test_rate_limit_answers_429_beyond_the_window(
    simulator: StartSimulator, session: aiohttp.ClientSession, per_ip: bool
) -> None:
    config = SimConfig(rate_limit=3, window=60, per_ip=per_ip)
    sim = await simulator({KEY: SECRET, OTHER_KEY: OTHER_SECRET}, config)
    replies = [await post(session, sim.base_url, encode(PARAMS)) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert 1 <= int(replies[-1].headers["Retry-After"]) <= 60
    other = await post(session, sim.base_url, encode(PARAMS), key=OTHER_KEY, secret=OTHER_SECRET)
    assert other.status == (429 if per_ip else 200)
    assert sim.violations == (2 if per_ip else 1)
    assert [a.status for a in sim.arrivals][:4] == [200, 200, 200, 429]
    assert sim.accepted[(KEY, LEADER)] == 3
    assert sim.max_in_window(KEY, 60) == 4


@pytest.mark.parametrize("rate_limit", [2, 2.5])
def test_the_window_slides(rate_limit: float) -> None:
    windows = SlidingWindows(1.0)
    admitted = [windows.admit("k", rate_limit, t) for t in (0.0, 0.5, 0.9, 1.0, 1.2, 1.5)]
    # 0.9: two in (-0.1, 0.9]; 1.0: 0.0 has left; 1.2: 0.5 and 1.0 remain; 1.5: 0.5 has left.
    assert admitted == [0, 0, 1, 0, 1, 0]
    assert windows.admit("other", rate_limit, 0.9) == 0


def test_max_in_window_on_known_arrivals() -> None:
    sim = Simulator()
    times = {"a": [1.2, 0.0, 0.5, 1.0, 1.1, 3.0], "b": [1.05, 1.15]}
    sim.arrivals = [
        Arrival(t, key, V4.path, 1, 200, "SUCCESS", None) for key, ts in times.items() for t in ts
    ]
    sim.arrivals.append(Arrival(1.12, "", TIME_PATH, None, 200, "SUCCESS", None))
    assert sim.max_in_window("a") == 4  # 0.5, 1.0, 1.1, 1.2 (0.0 and 1.0 are a full window apart)
    assert sim.max_in_window("b") == 2
    assert sim.max_in_window(None) == 6  # the time request is no follow
    assert sim.max_in_window("a", window=0.15) == 2
    assert sim.max_in_window("nobody") == 0


@pytest.mark.parametrize(
    ("fault", "status", "mc"),
    [
        (HTTP500, 500, None),
        (HTTP502, 502, None),
        (HTTP503, 503, None),
        (AUTH_105, 200, "AUTH_105"),
        ("AUTH_103", 200, "AUTH_103"),
        ("COMMON_002", 200, "COMMON_002"),
        ("ORDER_002", 200, "ORDER_002"),
        ("COPY_TRADE_SPOT_006", 200, "COPY_TRADE_SPOT_006"),
    ],
)
async def test_scripted_answer_faults_then_normal(
    sim: Simulator, session: aiohttp.ClientSession, fault: str, status: int, mc: str | None
) -> None:
    sim.script(LEADER, [fault])
    reply = await post(session, sim.base_url, encode(PARAMS))
    assert reply.status == status
    if mc is not None:
        assert reply.json() == {"rc": 1, "mc": mc, "ma": [], "result": None}
    assert not sim.accepted
    assert (await post(session, sim.base_url, encode(PARAMS))).json() == SUCCESS
    assert [a.fault for a in sim.arrivals] == [fault, None]


async def test_scripted_faults_come_in_order_for_their_leader_only(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.script(LEADER, [HTTP503, HTTP502])
    assert (await post(session, sim.base_url, with_(leaderOrderId=7))).status == 200
    statuses = [(await post(session, sim.base_url, encode(PARAMS))).status for _ in range(3)]
    assert statuses == [503, 502, 200]


async def test_injected_429_says_retry_after_one_and_is_no_violation(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.script(LEADER, [HTTP429])
    reply = await post(session, sim.base_url, encode(PARAMS))
    assert (reply.status, reply.headers["Retry-After"]) == (429, "1")
    assert sim.violations == 0


async def test_non_json_fault(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.script(LEADER, [NON_JSON])
    reply = await post(session, sim.base_url, encode(PARAMS))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        reply.json()
    assert not sim.accepted


@pytest.mark.parametrize(("fault", "accepted"), [(DROP_BEFORE, 0), (DROP_AFTER, 1)])
async def test_drops_disconnect_the_client(
    sim: Simulator, session: aiohttp.ClientSession, fault: str, accepted: int
) -> None:
    sim.script(LEADER, [fault])
    with pytest.raises(DISCONNECTED):
        await post(session, sim.base_url, encode(PARAMS))
    assert sim.accepted[(KEY, LEADER)] == accepted
    assert sim.arrivals[0].status == 0
    assert (await post(session, sim.base_url, encode(PARAMS))).json() == SUCCESS


async def test_slow_fault_outlasts_the_client_timeout(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.script(LEADER, [SLOW])
    with pytest.raises(asyncio.TimeoutError):
        await post(session, sim.base_url, encode(PARAMS), timeout=0.2)
    assert sim.accepted[(KEY, LEADER)] == 1


async def test_random_faults_repeat_for_a_seed(
    simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    async def faults(seed: int) -> list[str | None]:
        config = SimConfig(
            rate_limit=1000, fault_rate=0.5, fault_kinds=(HTTP503, "COMMON_002"), seed=seed
        )
        sim = await simulator({KEY: SECRET}, config)
        replies = [await post(session, sim.base_url, encode(PARAMS)) for _ in range(20)]
        expected = [{HTTP503: 503}.get(a.fault or "", 200) for a in sim.arrivals]
        assert [r.status for r in replies] == expected
        return [a.fault for a in sim.arrivals]

    first = await faults(7)
    assert first == await faults(7)
    assert set(first) == {None, HTTP503, "COMMON_002"}
    assert first != await faults(8)


async def test_without_accounts_any_key_and_signature_pass(
    simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await simulator()
    assert sim.accounts is None
    garbage = {"xt-validate-signature": "not-a-signature"}
    reply = await post(session, sim.base_url, encode(PARAMS), key="any", headers=garbage)
    assert reply.json() == SUCCESS
    assert (await post(session, sim.base_url, with_(followVal=0))).json()["ma"] == ["followVal"]
    assert sim.accepted == {("any", LEADER): 1}


def test_unknown_faults_are_refused() -> None:
    sim = Simulator()
    for fault in ("http504", "oops", "SUCCESS"):
        with pytest.raises(ValueError):
            sim.script(LEADER, [fault])
    with pytest.raises(ValueError):
        SimConfig(fault_kinds=("bogus",))
    with pytest.raises(ValueError):
        SimConfig(fault_rate=1.5)


async def test_latency_delays_answers(
    simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await simulator({KEY: SECRET}, SimConfig(latency=0.05))
    started = time.monotonic()
    await post(session, sim.base_url, encode(PARAMS))
    assert time.monotonic() - started >= 0.05


class _Lines(io.StringIO):
    """A stderr that says when a line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_serve_announces_itself_and_serves(
    monkeypatch: pytest.MonkeyPatch, session: aiohttp.ClientSession
) -> None:
    stderr = _Lines()
    monkeypatch.setattr("sys.stderr", stderr)
    task = asyncio.create_task(serve("127.0.0.1", 0, {KEY: SECRET}, SimConfig()))
    await stderr.written.wait()
    line = stderr.getvalue().strip()
    assert line.endswith("(signatures checked for 1 keys)")
    url = line.split()[3]
    assert (await post(session, url, encode(PARAMS))).json() == SUCCESS
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
