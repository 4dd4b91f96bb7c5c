"""XT's request signature (HMAC-SHA256), as ccxt and pyxt compute it.

The signed string is the sorted validate header pairs, then ``#METHOD#PATH`` and, for a
request with a body, ``#`` and the body exactly as sent; for one with a query, ``#`` and
the query's pairs sorted by key. The headers are spelt ``xt-validate-*`` (ccxt, pyxt) or
``validate-*`` (XT's current documentation and Java SDK): the names signed are the names
sent. Free of I/O; the simulator checks signatures with code of its own.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

ALGORITHM = "HmacSHA256"
#: ``settings.headers`` -> the prefix of every validate header.
HEADER_PREFIXES = {"xt-validate": "xt-validate-", "validate": "validate-"}


def signature_payload(headers: dict[str, str], method: str, path: str, tail: str | None) -> str:
    """The string to sign. ``headers`` are the validate headers, signature excluded; ``tail``
    is the body as sent, or the sorted query (``query_string``), or None."""
    x = "&".join(f"{name}={value}" for name, value in sorted(headers.items()))
    y = f"#{method}#{path}"
    if tail is not None:
        y += f"#{tail}"
    return x + y


def query_string(params: Mapping[str, object]) -> str:
    """``key=value`` pairs sorted by key, joined by ``&``: the query as signed and sent."""
    return "&".join(f"{name}={params[name]}" for name in sorted(params))


def sign(secret: str, payload: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``payload`` (XT compares without regard to case)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    api_key: str,
    secret: str,
    method: str,
    path: str,
    tail: str | None,
    timestamp_ms: int,
    recv_window_ms: int,
    prefix: str = HEADER_PREFIXES["xt-validate"],
) -> dict[str, str]:
    """Every header a signed request carries, signature included."""
    headers = {
        prefix + "algorithms": ALGORITHM,
        prefix + "appkey": api_key,
        prefix + "recvwindow": str(recv_window_ms),
        prefix + "timestamp": str(timestamp_ms),
    }
    headers[prefix + "signature"] = sign(secret, signature_payload(headers, method, path, tail))
    return headers
