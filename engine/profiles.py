"""API profiles: what differs between the versions of XT's follow endpoint.

XT moved the endpoint after the page this project was specified from (see
``docs/xt-api.md``, "Endpoint history"). Everything that moved lives here so the
rest of the engine never branches on a version string.
"""

from __future__ import annotations

from dataclasses import dataclass

#: XT's clock, the same under every profile (``GET``, unsigned).
TIME_PATH = "/v4/public/time"
#: XT's current copy-trading account endpoints (its v1 pages, ``docs/xt-api.md``), each
#: limited to 2 requests/s per IP: the role of an account, the leaders it follows (by
#: account id), its settings for one of them, and stopping a follow.
USER_STATUS_PATH = "/v1/copy-trade-account/copy-trade/user-status"
MY_LEADERS_PATH = "/v1/copy-trade-account/copy-trade/my-leaders"
LEADER_CONFIG_PATH = "/v1/copy-trade-account/copy-trade/follow-leader-config"
CANCEL_FOLLOW_PATH = "/v1/copy-trade-account/copy-trade/cancel-follow"
#: Requests per second per IP that those endpoints allow, together.
ACCOUNT_ENDPOINTS_RATE = 2


@dataclass(frozen=True, slots=True)
class ApiProfile:
    name: str
    path: str
    #: The body field naming whom to follow.
    leader_field: str
    #: Default requests per second.
    rate_limit: float
    #: True when the limit is per IP: one limiter shared by every API key.
    per_ip: bool
    #: Whether what an account follows can be read back and stopped: the account endpoints
    #: name leaders by account id, which only this profile's jobs do.
    readable: bool


V4 = ApiProfile(
    name="v4",
    path="/v4/account/copy-trade/follow",
    leader_field="leaderOrderId",
    rate_limit=10,
    per_ip=False,
    readable=False,
)
V1 = ApiProfile(
    name="v1",
    path="/v1/copy-trade-account/copy-trade/follow",
    leader_field="leaderAccountId",
    rate_limit=2,
    per_ip=True,
    readable=True,
)
PROFILES: dict[str, ApiProfile] = {p.name: p for p in (V4, V1)}
LEADER_FIELDS = frozenset(p.leader_field for p in PROFILES.values())
