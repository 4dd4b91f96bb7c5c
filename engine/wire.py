"""A request on the wire through aiohttp: a body that waits for its caller's ``ready`` and
says when it is written, and an answer's body read no further than an envelope can be."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from engine.answers import NotSentError

#: Awaited right before a request is written; raises ``NotSentError`` (``Withheld``) to hold it
#: back for good.
Ready = Callable[[], Awaitable[None]]
#: Called as a request leaves, with whether it is the first on its connection.
OnSent = Callable[[bool], None]
#: The connections (aiohttp's protocols) that have carried a request: of one client.
Connections = weakref.WeakSet[object]
#: An envelope is a few hundred bytes; a body past this is not one, and is not read further.
MAX_BODY = 1 << 20


class SentBody(aiohttp.BytesPayload):
    """A request body that waits for its caller's ``ready`` and says when it is written to the
    connection: the moment the request leaves, after any wait for a connection or for the
    event loop. aiohttp holds the headers back to write them with the body, so nothing of
    the request has left before. (aiohttp's tracing would say when at several times the cost
    per request.) It also says whether the request is the first its connection carries
    (``used``: the client's connections that carried one): an exchange accepts a connection
    before it reads the request, and may read it later than one on a connection in use."""

    def __init__(
        self, body: bytes, on_sent: OnSent | None, ready: Ready | None, used: Connections
    ) -> None:
        super().__init__(body, content_type="application/json")
        self._on_sent, self._ready, self._used = on_sent, ready, used
        #: Set once the body starts to be written: an error after it may follow the request.
        self.written = False
        #: What ``ready`` raised, holding the request back.
        self.withheld: NotSentError | None = None

    async def _leave(self, writer: AbstractStreamWriter) -> None:
        if self._ready is not None:
            try:
                await self._ready()
            except NotSentError as exc:
                self.withheld = exc
                raise
        # aiohttp's StreamWriter names its connection; a writer that does not is taken as new.
        connection = getattr(writer, "protocol", None)
        first = connection is None or connection not in self._used
        if connection is not None:
            self._used.add(connection)
        if self._on_sent is not None:
            self._on_sent(first)
        # Only now: should ``on_sent`` fail, nothing is written, and the request is not sent
        # (aiohttp would report its error as the connection's, after which a request may
        # have left).
        self.written = True

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self._leave(writer)
        await super().write(writer)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self._leave(writer)
        await super().write_with_length(writer, content_length)


async def read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or its first ``MAX_BODY`` bytes and no more."""
    length = response.content_length
    if length is not None and length <= MAX_BODY:  # an envelope: read whole, no more is read
        return await response.read()
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY]


def describe(exc: BaseException) -> str:
    """The exception's class and message; aiohttp's carry URLs at most, never headers."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
