"""The XT client: signs one follow request, sends it, and says what came back.

It knows nothing of job files, limits or retries. What it can say of a request is in
``engine.answers``: the exchange's ``Answer``, or that the request never left
(``NotSentError``) or left without an answer (``AmbiguousError``). The caller may hold a
request back until the very moment it is written (``ready``), and hears when it is
(``on_sent``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import aiohttp

from engine.answers import (
    AmbiguousError,
    Answer,
    Envelope,
    NotSentError,
    TransportError,
    Withheld,
    XtError,
    parse_envelope,
    retry_after,
)
from engine.campaign import FollowValue
from engine.profiles import CANCEL_FOLLOW_PATH, TIME_PATH, ApiProfile
from engine.signing import HEADER_PREFIXES, query_string, signed_headers
from engine.wire import MAX_BODY, Connections, OnSent, Ready, SentBody, describe, read_capped

__all__ = [
    "MAX_BODY",
    "AmbiguousError",
    "Answer",
    "Envelope",
    "NotSentError",
    "PreparedRequest",
    "Ready",
    "TransportError",
    "Withheld",
    "XtClient",
    "XtError",
    "encode_body",
    "parse_envelope",
    "retry_after",
]

_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    method: str
    url: str
    body: str
    headers: dict[str, str]
    #: Whose request it is, and the leader it follows or stops following (None for a read):
    #: what a caller that tracks follows elsewhere (a worker, in Redis) knows it by.
    api_key: str = ""
    leader_id: int | None = None

    def redacted(self) -> dict[str, str]:
        """Headers fit to print: the signature replaced."""
        return {k: "<redacted>" if k.endswith("-signature") else v for k, v in self.headers.items()}


def encode_body(params: Mapping[str, FollowValue]) -> str:
    """Compact JSON with every number in the digits the user wrote, never via float, and in
    plain decimal notation: ``1.5e+3`` goes as ``1500``, ``0.0000001`` as itself."""
    parts = []
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, Decimal):
            text = format(value, "f")
        else:
            text = json.dumps(value)
        parts.append(f"{json.dumps(name)}:{text}")
    return "{" + ",".join(parts) + "}"


class XtClient:
    """Signed calls to one XT host under one API profile."""

    def __init__(
        self,
        base_url: str,
        profile: ApiProfile,
        *,
        timeout: float = 10,
        recv_window_ms: int = 5000,
        headers: str = "xt-validate",
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        local_addr: str | None = None,
    ) -> None:
        """``local_addr``: the local IP address requests leave from (an egress IP of its own)."""
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self.recv_window_ms = recv_window_ms
        self.header_prefix = HEADER_PREFIXES[headers]
        #: Added to the local clock when signing; set by ``sync_clock``.
        self.clock_offset_ms = 0
        self._clock = clock
        # Connect and read are bounded apart so that a timeout says whether the request left;
        # the total bounds an answer dribbled a byte at a time.
        self._timeout = aiohttp.ClientTimeout(total=2 * timeout, connect=timeout, sock_read=timeout)
        self._session = session
        self._own_session = session is None
        self._local_addr = (local_addr, 0) if local_addr else None
        self._used: Connections = Connections()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, local_addr=self._local_addr
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                # XT's API sets no cookies to send back: no jar to fill and filter per request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> XtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def timestamp_ms(self) -> int:
        return int(self._clock() * 1000) + self.clock_offset_ms

    def prepare(
        self, api_key: str, secret_key: str, params: Mapping[str, FollowValue]
    ) -> PreparedRequest:
        """The follow request, signed now. The signed body is the body sent."""
        leader = int(params[self.profile.leader_field])
        path = self.profile.path
        return self._signed(api_key, secret_key, "POST", path, body=params, leader_id=leader)

    def prepare_cancel(self, api_key: str, secret_key: str, leader_id: int) -> PreparedRequest:
        """Stop following ``leader_id``: POST with the leader in the query, as XT's Java SDK
        sends it (``cancel-follow``, a v1 endpoint)."""
        query = {self.profile.leader_field: leader_id}
        return self._signed(
            api_key, secret_key, "POST", CANCEL_FOLLOW_PATH, query=query, leader_id=leader_id
        )

    def prepare_read(
        self, api_key: str, secret_key: str, path: str, query: Mapping[str, object] | None = None
    ) -> PreparedRequest:
        """A signed GET, its query signed sorted by key (``#GET#path#query``)."""
        return self._signed(api_key, secret_key, "GET", path, query=query)

    def _signed(
        self,
        api_key: str,
        secret_key: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: Mapping[str, FollowValue] | None = None,
        leader_id: int | None = None,
    ) -> PreparedRequest:
        """A request signed now: the body or the query signed is the one sent."""
        text = encode_body(body) if body is not None else ""
        target = query_string(query) if query else ""
        headers = signed_headers(
            api_key,
            secret_key,
            method,
            path,
            text if body is not None else target or None,
            self.timestamp_ms(),
            self.recv_window_ms,
            self.header_prefix,
        )
        headers["Content-Type"] = "application/json"
        url = self.base_url + path + (f"?{target}" if target else "")
        return PreparedRequest(method, url, text, headers, api_key, leader_id)

    async def follow(
        self,
        api_key: str,
        secret_key: str,
        params: Mapping[str, FollowValue],
        on_sent: OnSent | None = None,
        *,
        ready: Ready | None = None,
    ) -> Answer:
        """Send one follow, signed afresh. Raises ``TransportError`` when no answer came.
        ``ready`` is awaited right before the request is written, ``on_sent`` called as it
        is: the request may be signed and given a connection long before it leaves."""
        return await self.send(self.prepare(api_key, secret_key, params), on_sent, ready=ready)

    async def unfollow(
        self,
        api_key: str,
        secret_key: str,
        leader_id: int,
        on_sent: OnSent | None = None,
        *,
        ready: Ready | None = None,
    ) -> Answer:
        """Stop following ``leader_id``, signed afresh; as ``follow`` otherwise."""
        request = self.prepare_cancel(api_key, secret_key, leader_id)
        return await self.send(request, on_sent, ready=ready)

    async def send(
        self,
        request: PreparedRequest,
        on_sent: OnSent | None = None,
        *,
        ready: Ready | None = None,
    ) -> Answer:
        """Send a request prepared (signed) just now. Raises ``TransportError`` when no
        answer came; ``ready`` and ``on_sent`` as for ``follow``."""
        return await self._send(request, on_sent, ready)

    async def server_time_ms(self) -> int:
        """The exchange's clock (``GET /v4/public/time``)."""
        answer = await self._send(PreparedRequest("GET", self.base_url + TIME_PATH, "", {}))
        envelope = answer.envelope
        result = envelope.result if envelope is not None else None
        server_time = result.get("serverTime") if isinstance(result, dict) else None
        if not answer.ok or not isinstance(server_time, int):
            raise XtError(f"{TIME_PATH} answered HTTP {answer.http_status} without a server time")
        return server_time

    async def sync_clock(self) -> int:
        """Measure the offset to the exchange's clock and sign with it from now on."""
        before = self._clock()
        server = await self.server_time_ms()
        midpoint_ms = int((before + self._clock()) * 500)
        self.clock_offset_ms = server - midpoint_ms
        return self.clock_offset_ms

    async def _send(
        self,
        request: PreparedRequest,
        on_sent: OnSent | None = None,
        ready: Ready | None = None,
    ) -> Answer:
        body = request.body.encode()
        # Also an empty body, for a GET: its write is how ``on_sent`` learns the request left.
        hooked = on_sent is not None or ready is not None
        data = SentBody(body, on_sent, ready, self._used) if hooked else body or None
        try:
            async with self.session.request(
                request.method,
                request.url,
                data=data,
                headers=request.headers,
                timeout=self._timeout,
                # A redirect would carry the key and signature to wherever it points.
                allow_redirects=False,
            ) as response:
                raw = await read_capped(response)
                status = response.status
                wait = retry_after(response.headers.get("Retry-After"), self._clock)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(data, SentBody) and data.withheld is not None:
                raise data.withheld from None
            unwritten = isinstance(data, SentBody) and not data.written
            if unwritten or isinstance(
                exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
            ):
                raise NotSentError(f"not sent: {describe(exc)}") from None
            raise AmbiguousError(f"no answer after the request left: {describe(exc)}") from None
        try:
            envelope = parse_envelope(json.loads(raw))
        except (ValueError, RecursionError):
            envelope = None
        excerpt = None if envelope else raw[:_EXCERPT].decode("utf-8", "replace")
        return Answer(status, envelope, wait, excerpt)
