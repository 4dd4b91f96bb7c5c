"""The simulated exchange's accounts: who follows whom with which settings, and what XT's
account endpoints (its v1 pages: user-status, my-leaders, follow-leader-config,
cancel-follow) answer from that state, in the response shapes of XT's documentation.

Where the documentation is silent the simulator must still answer something. Every such
choice is marked ASSUMPTION here, in this one place; the engine depends on none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUCCESS = "SUCCESS"
#: XT's documented answer to a follow from an account that is a leader.
LEADER_CANNOT_FOLLOW = "COPY_TRADE_SPOT_001"
#: ASSUMPTION: following a leader already followed answers SUCCESS and replaces the
#: settings: XT's page calls the same endpoint "follow now / follow settings", and it has
#: no separate update endpoint. (It may instead answer COPY_TRADE_SPOT_002.)
FOLLOW_AGAIN = SUCCESS
#: ASSUMPTION: stopping a follow that is not in place answers rc 1 with the generic FAILURE.
CANCEL_NOT_FOLLOWED = "FAILURE"
#: ASSUMPTION: a leader not followed has no settings: follow-leader-config answers rc 0 with
#: a null result.
#: ASSUMPTION: my-leaders pages by each follow's ``id`` in the order the follows were made;
#: ``direction`` NEXT lists ids above the ``id`` given, PREV those below.
ROLES = ("LEADER", "FOLLOWER", "NONE")
MAX_PAGE = 100
DEFAULT_PAGE = 10


@dataclass(slots=True)
class Follow:
    #: The paging id my-leaders shows.
    id: int
    #: The follow request's body as accepted (numbers exact), leader id included.
    settings: dict[str, Any]


@dataclass
class SimAccounts:
    #: api_key -> leader account id -> the follow in place.
    follows: dict[str, dict[int, Follow]] = field(default_factory=dict)
    #: api_key -> a role set by a test ("LEADER"); otherwise FOLLOWER or NONE by follows.
    roles: dict[str, str] = field(default_factory=dict)
    _next_id: int = 6216559590087220000

    def role(self, api_key: str) -> str:
        return self.roles.get(api_key) or ("FOLLOWER" if self.follows.get(api_key) else "NONE")

    def follow(self, api_key: str, leader: int, settings: Mapping[str, Any]) -> str:
        """The ``mc`` of a valid, signed follow of ``leader``; the state changes on success."""
        if self.role(api_key) == "LEADER":
            return LEADER_CANNOT_FOLLOW
        mine = self.follows.setdefault(api_key, {})
        if leader in mine:
            mine[leader].settings = dict(settings)
            return FOLLOW_AGAIN
        self._next_id += 1
        mine[leader] = Follow(self._next_id, dict(settings))
        return SUCCESS

    def cancel(self, api_key: str, leader: int) -> str:
        mine = self.follows.get(api_key, {})
        if leader not in mine:
            return CANCEL_NOT_FOLLOWED
        del mine[leader]
        return SUCCESS

    def my_leaders(self, api_key: str, query: Mapping[str, str]) -> tuple[str, Any]:
        """``type`` 1 (current; 2, history, is always empty here), ``direction``, ``limit``,
        ``id``: the documented page shape."""
        try:
            kind = int(query["type"])
            limit = int(query.get("limit", DEFAULT_PAGE))
            start = int(query["id"]) if "id" in query else None
        except (KeyError, ValueError):
            return "FAILURE", None
        if kind not in (1, 2) or not 1 <= limit <= MAX_PAGE:
            return "FAILURE", None
        follows = sorted(self.follows.get(api_key, {}).items(), key=lambda item: item[1].id)
        if kind == 2:
            follows = []
        backwards = query.get("direction", "NEXT") == "PREV"
        if start is not None:
            follows = [f for f in follows if (f[1].id < start if backwards else f[1].id > start)]
        page = follows[-limit:] if backwards else follows[:limit]
        items = [
            {
                "accountId": leader,
                "avatar": "",
                "followMargin": 0,
                "followProfit": 0,
                "id": follow.id,
                "leaderName": f"leader {leader}",
            }
            for leader, follow in page
        ]
        more = len(follows) > len(page)
        return SUCCESS, {
            "hasNext": more and not backwards,
            "hasPrev": more and backwards,
            "items": items,
        }

    def config(self, api_key: str, query: Mapping[str, str]) -> tuple[str, Any]:
        try:
            leader = int(query["leaderAccountId"])
        except (KeyError, ValueError):
            return "FAILURE", None
        follow = self.follows.get(api_key, {}).get(leader)
        if follow is None:
            return SUCCESS, None
        s = follow.settings
        symbols = s.get("symbols", "").split(",")
        return SUCCESS, {
            "autoFollowSymbol": s.get("autoFollowSymbol"),
            "followLoss": s.get("followLoss"),
            "followLossOperate": s.get("followLossOperate"),
            "followSymbols": symbols,
            "followType": s.get("followType"),
            "followVal": s.get("followVal"),
            "leaderSymbols": symbols,
            "profitRate": 0,
            "triggerProfitRate": s.get("triggerProfitRate"),
            "triggerStopRate": s.get("triggerStopRate"),
        }
