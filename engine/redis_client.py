"""The XT client of one campaign at one worker: an attempt leaves only once Redis has marked
it on the wire (``FLIGHT``), which Redis does only while the job is still this worker's. So a
worker declared dead and come back can send nothing it no longer holds, and a worker that dies
leaves in Redis which of its jobs may have reached the exchange."""

from __future__ import annotations

from typing import Any

from engine.client import Answer, NotSentError, PreparedRequest, XtClient
from engine.redis_source import RedisSource
from engine.redis_store import key_hash
from engine.wire import OnSent, Ready


class FlightClient(XtClient):
    """An ``XtClient`` whose every follow and unfollow is marked on the wire in Redis before
    it is written, or not written."""

    def __init__(self, *args: Any, source: RedisSource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._source = source
        self._hashes: dict[str, str] = {}

    async def send(
        self,
        request: PreparedRequest,
        on_sent: OnSent | None = None,
        *,
        ready: Ready | None = None,
    ) -> Answer:
        """A follow or unfollow leaves marked on the wire (``ready`` first); a read as it is."""
        if request.leader_id is not None:
            ready = self._marked(request.api_key, request.leader_id, ready)
        return await super().send(request, on_sent, ready=ready)

    def _marked(self, api_key: str, leader: int, ready: Ready | None) -> Ready:
        """``ready``, then the FLIGHT mark: the last step before the request is written."""

        async def marked() -> None:
            if ready is not None:
                await ready()
            await self._on_the_wire(api_key, leader)

        return marked

    async def _on_the_wire(self, api_key: str, leader: int) -> None:
        """Mark the job's attempt on the wire in Redis (its intent), or raise: not sent."""
        key = self._hashes.get(api_key) or self._hashes.setdefault(api_key, key_hash(api_key))
        source = self._source
        job = source.job_id(key, leader)
        mine = job is not None and await source.store.persist(
            "FLIGHT", source.campaign, source.worker, job
        )
        if not mine:
            raise NotSentError("not sent: the job went to another worker")
