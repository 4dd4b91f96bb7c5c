"""The check before any follow is sent: XT's clock, and each account's key and role.

One signed ``GET user-status`` per account (2/s per IP, through the run's limits) says
whether the key works (else ``AUTH_*``: a wrong secret, an IP not whitelisted, the header
spelling) and whether the account is a ``LEADER``, which XT refuses follows from
(``COPY_TRADE_SPOT_001``/``007``). An account XT so refuses has its jobs fail unsent with
the reason; the others go ahead, and so does one that got no answer at all. Without it,
a bad key spends its first burst of follows before the engine learns. XT's clock is read
first and signed with from then on, so a local clock that is off fails no account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.campaign import Account
from engine.client import TransportError, XtClient, XtError
from engine.profiles import USER_STATUS_PATH
from engine.reconcile import Reader, ReadError

#: A local clock this far from XT's is reported (the engine signs with XT's time).
CLOCK_REPORT_MS = 1000
ROLES = frozenset({"LEADER", "FOLLOWER", "NONE"})


@dataclass(frozen=True, slots=True)
class AccountCheck:
    account: str
    #: ``LEADER``, ``FOLLOWER`` or ``NONE``; None when it could not be read.
    role: str | None
    #: Why the account's jobs may not be sent; None when they may.
    problem: str | None = None
    #: Why the account could not be checked (no answer came): its jobs go ahead, and meet
    #: whatever kept the check from an answer themselves.
    unchecked: str | None = None


@dataclass
class Preflight:
    accounts: list[AccountCheck] = field(default_factory=list)
    #: XT's clock minus this machine's, in ms; None when it could not be read.
    clock_offset_ms: int | None = None
    clock_error: str | None = None

    @property
    def problems(self) -> dict[str, str]:
        """Account -> why its jobs fail unsent."""
        return {c.account: c.problem for c in self.accounts if c.problem is not None}

    def clock_note(self) -> str | None:
        """A line for a person when XT's clock could not be read or this one is off."""
        if self.clock_error is not None:
            return f"could not read XT's clock: {self.clock_error}"
        offset = self.clock_offset_ms
        if offset is not None and abs(offset) >= CLOCK_REPORT_MS:
            side = "behind" if offset > 0 else "ahead of"
            return f"this clock is {abs(offset) / 1000:.1f} s {side} XT's: signing with XT's time"
        return None


async def preflight(client: XtClient, reader: Reader, accounts: Iterable[Account]) -> Preflight:
    """Check XT's clock, then every one of ``accounts`` side by side."""
    report = Preflight()
    try:
        report.clock_offset_ms = await client.sync_clock()
    except (TransportError, XtError) as exc:
        report.clock_error = str(exc)
    report.accounts = list(await asyncio.gather(*(_check(reader, a) for a in accounts)))
    return report


async def _check(reader: Reader, account: Account) -> AccountCheck:
    name = account.name
    try:
        role = await reader.read(account, USER_STATUS_PATH)
    except ReadError as exc:
        if exc.code is None:  # no answer from XT: nothing it said stops the account
            return AccountCheck(name, None, unchecked=str(exc))
        what = "clock too far off: " if exc.code == "AUTH_105" else ""
        return AccountCheck(name, None, f"not sent: check of account {name} failed: {what}{exc}")
    if role == "LEADER":
        why = (
            f"not sent: account {name} is a copy-trading leader, and XT refuses follows from "
            "leaders (COPY_TRADE_SPOT_001)"
        )
        return AccountCheck(name, role, why)
    return AccountCheck(name, role if role in ROLES else str(role))
