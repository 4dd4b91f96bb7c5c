"""The XT client: signs one follow request, sends it, and says what came back.

It knows nothing of job files, limits or retries. Every outcome is one of three
kinds, because what may be done next depends on which: the request never left
(``NotSentError``), it left but no answer came (``AmbiguousError``), or the
exchange answered (an ``Answer``, whatever its status).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from engine.campaign import FollowValue
from engine.profiles import CANCEL_FOLLOW_PATH, TIME_PATH, ApiProfile
from engine.signing import HEADER_PREFIXES, query_string, signed_headers

_EXCERPT = 200
#: An envelope is a few hundred bytes; a body past this is not one, and is not read further.
MAX_BODY = 1 << 20


class XtError(Exception):
    """Base of everything the client raises. Messages never hold secrets."""


class TransportError(XtError):
    """No answer came back."""


class NotSentError(TransportError):
    """The request never reached the exchange (connection refused, connect timeout)."""


class AmbiguousError(TransportError):
    """The request left but no answer came: the exchange may have acted on it."""


@dataclass(frozen=True, slots=True)
class Envelope:
    rc: int
    mc: str
    ma: list[Any]
    result: Any


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP response. ``envelope`` is None when the body was not XT's JSON envelope."""

    http_status: int
    envelope: Envelope | None
    retry_after: float | None = None
    #: The start of a body that was not an envelope, for the record.
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_status == 200 and self.envelope is not None and self.envelope.rc == 0


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    method: str
    url: str
    body: str
    headers: dict[str, str]

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


def parse_envelope(data: Any) -> Envelope | None:
    if not isinstance(data, dict):
        return None
    rc, mc = data.get("rc"), data.get("mc")
    if isinstance(rc, bool) or not isinstance(rc, int) or not isinstance(mc, str):
        return None
    ma = data.get("ma")
    return Envelope(rc=rc, mc=mc, ma=ma if isinstance(ma, list) else [], result=data.get("result"))


def retry_after(value: str | None, clock: Callable[[], float]) -> float | None:
    """Seconds to wait from a ``Retry-After``: delay-seconds, or an HTTP-date (read against
    ``clock``, epoch seconds); None when absent or unreadable. Never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110: an HTTP-date is GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - clock())


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

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, local_addr=self._local_addr
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
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
        return self._signed(api_key, secret_key, "POST", self.profile.path, body=params)

    def prepare_cancel(self, api_key: str, secret_key: str, leader_id: int) -> PreparedRequest:
        """Stop following ``leader_id``: POST with the leader in the query, as XT's Java SDK
        sends it (``cancel-follow``, a v1 endpoint)."""
        query = {self.profile.leader_field: leader_id}
        return self._signed(api_key, secret_key, "POST", CANCEL_FOLLOW_PATH, query=query)

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
        return PreparedRequest(method, url, text, headers)

    async def follow(
        self,
        api_key: str,
        secret_key: str,
        params: Mapping[str, FollowValue],
        on_sent: Callable[[], None] | None = None,
    ) -> Answer:
        """Send one follow, signed afresh. Raises ``TransportError`` when no answer came.
        ``on_sent`` is called as the request is written to the connection."""
        return await self.send(self.prepare(api_key, secret_key, params), on_sent)

    async def unfollow(
        self,
        api_key: str,
        secret_key: str,
        leader_id: int,
        on_sent: Callable[[], None] | None = None,
    ) -> Answer:
        """Stop following ``leader_id``, signed afresh; as ``follow`` otherwise."""
        return await self.send(self.prepare_cancel(api_key, secret_key, leader_id), on_sent)

    async def send(
        self, request: PreparedRequest, on_sent: Callable[[], None] | None = None
    ) -> Answer:
        """Send a request prepared (signed) just now. Raises ``TransportError`` when no
        answer came. ``on_sent`` is called as the request is written to the connection."""
        return await self._send(request, on_sent)

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
        self, request: PreparedRequest, on_sent: Callable[[], None] | None = None
    ) -> Answer:
        body = request.body.encode()
        # Also an empty body, for a GET: its write is how ``on_sent`` learns the request left.
        data = _SentBody(body, on_sent) if on_sent is not None else body or None
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
                raw = await _read_capped(response)
                status = response.status
                wait = retry_after(response.headers.get("Retry-After"), self._clock)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NotSentError(f"not sent: {_describe(exc)}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AmbiguousError(f"no answer after the request left: {_describe(exc)}") from None
        try:
            envelope = parse_envelope(json.loads(raw))
        except (ValueError, RecursionError):
            envelope = None
        excerpt = None if envelope else raw[:_EXCERPT].decode("utf-8", "replace")
        return Answer(status, envelope, wait, excerpt)


class _SentBody(aiohttp.BytesPayload):
    """A request body that says when it is written to the connection: the moment the request
    leaves, after any wait for a connection or for the event loop. (aiohttp's tracing would
    say the same at several times the cost per request.)"""

    def __init__(self, body: bytes, on_sent: Callable[[], None]) -> None:
        super().__init__(body, content_type="application/json")
        self._on_sent = on_sent

    async def write(self, writer: AbstractStreamWriter) -> None:
        self._on_sent()
        await super().write(writer)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        self._on_sent()
        await super().write_with_length(writer, content_length)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or its first ``MAX_BODY`` bytes and no more."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY]


def _describe(exc: BaseException) -> str:
    """The exception's class and message; aiohttp's carry URLs at most, never headers."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
